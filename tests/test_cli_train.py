"""The real-checkpoint recipe (examples/sni-t5-lm-adapt) run end to end on a tiny T5 and a tiny SNI folder."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from tagi_hf import TagiModel
from tagi_hf.cli.main import main
from tagi_hf.cli.train import TRAINING_SUBCOMMANDS
from tagi_hf.data import train_tokenizer, write_synthetic_suite
from tagi_hf.recipes.standin import standin_config
from tagi_hf.training.arguments import TagiTrainingArguments

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "sni-t5-lm-adapt"
TRAIN_TASKS = ["synth_reverse", "synth_sort", "synth_first_2"]
TEST_TASKS = ["synth_sort_then_first_2", "synth_append_owl"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    suite = write_synthetic_suite(root / "sni", seed=0, instances_per_task=6)
    (suite / "splits" / "default" / "train_tasks.txt").write_text("\n".join(TRAIN_TASKS) + "\n")
    (suite / "splits" / "default" / "test_tasks.txt").write_text("\n".join(TEST_TASKS) + "\n")
    texts = [json.loads((suite / "tasks" / f"{t}.json").read_text())["Definition"] for t in TRAIN_TASKS + TEST_TASKS]
    texts += ["apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat"] * 4
    tokenizer = train_tokenizer(texts * 3, vocab_size=200)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(standin_config(len(tokenizer), d_model=32, num_layers=2))
    t5.save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    (root / "corpus.txt").write_text("\n".join(texts * 4) + "\n")
    return root


def _run(command, config, *overrides):
    code = main([command, "--config", str(RECIPE / config), *map(str, overrides)])
    assert code == 0, f"tagi-hf {command} failed"


def test_recipe_runs_end_to_end_on_a_tiny_model(workspace):
    w, sni = workspace, workspace / "sni"
    small = ["--max-steps", 2, "--batch-size", 4, "--max-train-instances-per-task", 4]
    _run("train-baseline", "baseline.yaml", "--backbone", w / "t5", "--data-dir", sni, "--out", w / "tk", *small)
    baseline, initial = (T5ForConditionalGeneration.from_pretrained(w / name) for name in ("tk", "t5"))
    architecture = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads")
    assert all(getattr(baseline.config, key) == getattr(initial.config, key) for key in architecture)
    trained, start = baseline.state_dict(), initial.state_dict()
    assert trained.keys() == start.keys()
    assert not all(torch.equal(trained[k], start[k]) for k in trained)  # fine-tuned: weights moved
    _run(
        "train-teachers",
        "teachers.yaml",
        "--backbone",
        w / "t5",
        "--data-dir",
        sni,
        "--out",
        w / "teachers",
        "--rank",
        2,
        *small,
    )
    index = json.loads((w / "teachers" / "teachers.json").read_text())
    assert sorted(index["teachers"]) == sorted(TRAIN_TASKS)
    _run(
        "pretrain",
        "pretrain.yaml",
        "--backbone",
        w / "t5",
        "--out",
        w / "s1",
        "--dataset",
        "text",
        "--dataset-config",
        "",
        "--data-files",
        w / "corpus.txt",
        "--no-streaming",
        "--max-length",
        64,
        "--lora-rank",
        2,
        "--max-steps",
        2,
        "--batch-size",
        4,
        "--save-steps",
        1,
        "--no-bf16",
    )
    stage1 = TagiModel.from_pretrained(w / "s1")
    assert stage1.config.lora_rank == 2 and stage1.config.fusion == "cross_attention"
    # bf16 stays on from train.yaml: the mixed-precision path runs on CPU too.
    _run(
        "train",
        "train.yaml",
        "--model",
        w / "s1",
        "--data-dir",
        sni,
        "--teacher",
        w / "tk",
        "--teachers",
        w / "teachers",
        "--out",
        w / "tagi",
        "--gradient-accumulation-steps",
        2,
        "--logging-steps",
        1,
        "--save-steps",
        1,
        # the stage-1 model (frozen encoder, mean pooling) upgraded to the generator that reads the instruction
        "--instruction-encoder",
        "separate",
        "--instruction-pooling",
        "attention",
        "--instruction-encoder-learning-rate",
        1e-4,
        "--examples-per-task",
        2,
        *small,
    )
    trained = TagiModel.from_pretrained(w / "tagi")
    assert (trained.config.instruction_encoder, trained.config.instruction_pooling) == ("separate", "attention")
    assert not all(  # the instruction encoder trained (it started as the backbone's encoder)
        torch.equal(a, b)
        for a, b in zip(trained.instruction_encoder.parameters(), trained.backbone.encoder.parameters())
    )
    log = json.loads((w / "tagi" / "training_log.json").read_text())
    assert any({"loss_pred", "loss_kl", "loss_ins"} <= set(entry) for entry in log)
    tokenizer = AutoTokenizer.from_pretrained(w / "tagi")  # saved beside the model: the backbone's
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(w / "t5").get_vocab()
    # The trained generator makes an adapter of the configured rank for every LoRA module stage 1 had, and stage 2
    # changed what it makes for the same instruction.
    instruction = json.loads((sni / "tasks" / f"{TEST_TASKS[0]}.json").read_text())["Definition"]
    adapter, before = (m.generate_adapter(instruction, tokenizer=tokenizer) for m in (trained, stage1))
    assert adapter.rank == 2 and adapter.instruction == instruction
    assert sorted(adapter.lora_factors) == sorted(before.lora_factors)
    assert any(not torch.equal(adapter.lora_factors[n][1], before.lora_factors[n][1]) for n in adapter.lora_factors)
    # The teacher run once per example before training (its top-k logits cached), not at every step.
    cached = [
        "--data-dir",
        sni,
        "--teacher",
        w / "tk",
        "--lambda-ins",
        0,
        "--teacher-logits-top-k",
        8,
        "--logging-steps",
        1,
    ]
    _run("train", "train.yaml", "--model", w / "s1", "--out", w / "tagi-cached", "--no-bf16", *cached, *small)
    record = json.loads((w / "tagi-cached-teacher-logits" / "teacher_logits.json").read_text())
    assert record["top_k"] == 8 and record["rows"] == 4 * len(TRAIN_TASKS)
    log = json.loads((w / "tagi-cached" / "training_log.json").read_text())
    assert any("loss_kl" in entry for entry in log)
    _run(
        "evaluate",
        "evaluate.yaml",
        "--model",
        w / "tagi",
        "--data-dir",
        sni,
        "--output",
        w / "metrics.json",
        "--predictions-file",
        w / "preds.jsonl",
        "--max-instances-per-task",
        2,
        "--max-new-tokens",
        4,
    )
    metrics = json.loads((w / "metrics.json").read_text())
    assert sorted(metrics["per_task"]) == sorted(TEST_TASKS) and metrics["setting"] == "def+2pos"
    assert len((w / "preds.jsonl").read_text().splitlines()) == 4


def test_train_refuses_missing_teachers(workspace, capsys):
    code = main(
        [
            "train",
            "--backbone",
            str(workspace / "t5"),
            "--data-dir",
            str(workspace / "sni"),
            "--out",
            str(workspace / "x"),
            "--lambda-ins",
            "0",
        ]
    )
    assert code == 2
    assert "`--lambda-kl` > 0 needs `--teacher`" in capsys.readouterr().err


def test_the_recipe_accepts_a_decoder_only_backbone(workspace):
    """train-baseline, train-teachers, train and evaluate on a tiny random Llama: the teachers are PEFT CAUSAL_LM
    adapters, the baseline an in-context LM, the result a TagiForCausalLM (issue 15)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tagi_hf import TagiForCausalLM

    w, sni = workspace, workspace / "sni"
    tokenizer = AutoTokenizer.from_pretrained(w / "t5")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(w / "llama")
    tokenizer.save_pretrained(w / "llama")
    small = ["--max-steps", 2, "--batch-size", 4, "--max-train-instances-per-task", 4]
    _run("train-baseline", "baseline.yaml", "--backbone", w / "llama", "--data-dir", sni, "--out", w / "lm-tk", *small)
    _run(
        "train-teachers", "teachers.yaml", "--backbone", w / "llama", "--data-dir", sni, "--out", w / "lm-teachers",
        "--rank", 2, *small,
    )  # fmt: skip
    index = json.loads((w / "lm-teachers" / "teachers.json").read_text())
    first = w / "lm-teachers" / index["teachers"][TRAIN_TASKS[0]]
    assert json.loads((first / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    argv = [
        "train",
        "--backbone",
        w / "llama",
        "--data-dir",
        sni,
        "--teacher",
        w / "lm-tk",
        "--teachers",
        w / "lm-teachers",
        "--out",
        w / "lm-tagi",
        "--lora-rank",
        2,
        "--logging-steps",
        1,
        *small,
    ]  # fmt: skip  (train.yaml names a stage-1 --model: T5 only)
    assert main(list(map(str, argv))) == 0
    trained = TagiForCausalLM.from_pretrained(w / "lm-tagi")
    assert trained.config.text_config.model_type == "llama" and trained.config.lora_rank == 2
    adapter = trained.generate_adapter("Sort the words.", tokenizer=tokenizer)
    assert adapter.task_type == "CAUSAL_LM" and adapter.rank == 2
    assert {name.rsplit(".", 1)[1] for name in adapter.lora_factors} == {"q_proj", "v_proj"}
    log = json.loads((w / "lm-tagi" / "training_log.json").read_text())
    assert any({"loss_pred", "loss_kl", "loss_ins"} <= set(entry) for entry in log)
    for model, name in ((w / "lm-tagi", "lm-metrics.json"), (w / "lm-tk", "lm-tk-metrics.json")):
        _run(
            "evaluate", "evaluate.yaml", "--model", model, "--data-dir", sni, "--output", w / name,
            "--max-instances-per-task", 2, "--max-new-tokens", 4,
        )  # fmt: skip
        metrics = json.loads((w / name).read_text())
        assert sorted(metrics["per_task"]) == sorted(TEST_TASKS)


# ------------------------------------------------------------------------------------- flags from the dataclasses
@pytest.fixture
def captured(monkeypatch):
    """The arguments `train_tagi` would get, instead of training."""
    import tagi_hf.training.run as run

    calls = []
    monkeypatch.setattr(run, "train_tagi", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def test_train_flags_reach_the_training_arguments_with_its_defaults_aliases_and_config(workspace, captured, tmp_path):
    w = workspace
    base = ["train", "--backbone", w / "t5", "--data-dir", w / "sni", "--out", tmp_path / "tagi", "--lambda-kl", 0]
    assert main([*map(str, base), "--lambda-ins", "0", "--lora-rank", "2"]) == 0
    (_, _, _, out, training), kwargs = captured[-1]
    assert out == str(tmp_path / "tagi") and kwargs["teacher_model"] is None and kwargs["teacher_bank"] is None
    assert isinstance(training, TagiTrainingArguments) and training.output_dir == f"{tmp_path / 'tagi'}.work"
    # The defaults of `tagi-hf train` (the paper's warm-up share), those of TagiTrainingArguments elsewhere.
    assert (training.max_steps, training.learning_rate, training.per_device_train_batch_size) == (20000, 1e-4, 8)
    assert (training.warmup_steps, training.save_steps, training.logging_steps) == (0.02, 500, 50)
    assert (training.save_total_limit, training.lambda_kl, training.lambda_ins, training.seed) == (2, 0, 0, 42)
    assert training.weight_decay == 0.0 and training.lr_scheduler_type == "linear" and training.report_to == []

    # Any TagiTrainingArguments field is a flag, under either spelling; the short names still work; --no-x negates.
    config = tmp_path / "train.yaml"
    config.write_text("weight_decay: 0.2\nbatch-size: 3\nlr_scheduler_type: cosine\nbf16: true\nmax-steps: 9\n")
    flags = ["--config", config, "--lambda-ins", 0, "--weight-decay", 0.1, "--work-dir", tmp_path / "w"]
    flags += ["--warmup-ratio", 0.1, "--ins_normalize", "false", "--no-bf16", "--kl-temperature", 2]
    assert main([*map(str, base), *map(str, flags)]) == 0
    training = captured[-1][0][4]
    assert (training.weight_decay, training.per_device_train_batch_size, training.lr_scheduler_type) == (
        0.1,
        3,
        "cosine",
    )
    assert (training.max_steps, training.output_dir, training.warmup_steps) == (9, str(tmp_path / "w"), 0.1)
    assert training.bf16 is False and training.ins_normalize is False and training.kl_temperature == 2.0


def test_pretrain_flags_and_its_refusals(workspace, captured, tmp_path, capsys):
    w = workspace
    base = ["pretrain", "--backbone", w / "t5", "--out", tmp_path / "s1", "--lora-rank", 2]
    assert main([*map(str, base), "--synthetic-corpus", "8", "--max-length", "32"]) == 0
    (model, _, texts, out, training), kwargs = captured[-1]
    assert len(texts) == 8 and out == str(tmp_path / "s1") and model.config.lora_rank == 2
    assert (training.max_steps, training.learning_rate, training.lambda_kl, training.lambda_ins) == (50000, 1e-3, 0, 0)
    assert kwargs["data_collator"].max_length == 32
    refusals = {
        ("--synthetic-corpus", "8", "--lambda-kl", "1"): "trains without distillation",
        ("--synthetic-corpus", "8", "--text-file", "x.txt"): "exactly one of `--text-file`, `--dataset`",
        (): "exactly one of `--text-file`, `--dataset`, `--synthetic-corpus`.",
        ("--synthetic-corpus", "0"): "`--synthetic-corpus` must be an integer >= 1, got 0",
        ("--synthetic-corpus", "8", "--max-steps", "0"): "`--max-steps` must be an integer >= 1, got 0",
    }
    for extra, message in refusals.items():
        assert main([*map(str, base), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert len(captured) == 1


def test_train_needs_exactly_one_of_model_and_backbone(workspace, captured, capsys):
    w = workspace
    base = ["train", "--data-dir", str(w / "sni"), "--out", "x", "--lambda-kl", "0", "--lambda-ins", "0"]
    for start in ([], ["--model", str(w / "s1"), "--backbone", str(w / "t5")]):
        assert main([*base, *start]) == 2
        assert "needs exactly one of `--model` (a TagiModel) and `--backbone`" in capsys.readouterr().err
    assert main([*base, "--backbone", str(w / "t5"), "--teacher-logits-top-k", "-1"]) == 2
    assert "`--teacher-logits-top-k` must be >= 0, got -1" in capsys.readouterr().err
    assert main([*base, "--backbone", str(w / "t5"), "--fusion", "concat"]) == 2  # argparse: not a choice
    assert "invalid choice: 'concat'" in capsys.readouterr().err
    assert captured == []


@pytest.mark.parametrize("name", [command.name for command in TRAINING_SUBCOMMANDS])
def test_help_of_every_training_subcommand(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tagi-hf {name}") and "--config" in out and "--out OUT" in out
    assert "--no-x" in out and "(default: " in out


def test_help_shows_each_subcommands_own_defaults(capsys):
    defaults = {}
    for name in ("train", "pretrain", "train-baseline", "train-teachers"):
        assert main([name, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        defaults[name] = re.search(r"--max-steps MAX_STEPS .*?\(default: (\w+)\)", text).group(1)
    assert defaults == {"train": "20000", "pretrain": "50000", "train-baseline": "1000", "train-teachers": "100"}


def test_a_dataclass_field_is_a_flag_with_its_negation_alias_and_default():
    """What a new argument takes: a field. `finish_dataclass_flags` adds what HfArgumentParser leaves out."""
    from dataclasses import dataclass, field

    from transformers import HfArgumentParser

    from tagi_hf.cli.arguments import Subcommand, dataclass_from, finish_dataclass_flags

    @dataclass
    class Knobs:
        per_device_size: int = field(default=1, metadata={"help": "Size."})
        shiny: bool = False
        kind: str = "a"

    command = Subcommand(
        "x", "X.", None, print, arguments=(Knobs,), defaults={"kind": "b"}, aliases={"--size": "per_device_size"}
    )
    parser = HfArgumentParser(Knobs)
    finish_dataclass_flags(parser, command)
    assert dataclass_from(parser.parse_args([]), Knobs) == Knobs(per_device_size=1, shiny=False, kind="b")
    parsed = parser.parse_args(["--size", "4", "--shiny", "--kind", "c"])
    assert dataclass_from(parsed, Knobs) == Knobs(per_device_size=4, shiny=True, kind="c")
    assert parser.parse_args(["--shiny", "--no-shiny"]).shiny is False
    assert "`Knobs.kind`. (default: b)" in " ".join(parser.format_help().split())
    with pytest.raises(ValueError, match=r"defaults name no flag: \['kinds'\]"):
        finish_dataclass_flags(HfArgumentParser(Knobs), Subcommand("y", "Y.", None, print, (Knobs,), {"kinds": 1}))
