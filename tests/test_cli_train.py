"""The real-checkpoint recipe (examples/sni-t5-lm-adapt) run end to end on a tiny T5 and a tiny SNI folder."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from tagi_hf import TagiModel
from tagi_hf.cli.main import main
from tagi_hf.data import train_tokenizer, write_synthetic_suite
from tagi_hf.recipes.standin import standin_config

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
    assert T5ForConditionalGeneration.from_pretrained(w / "tk") is not None
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
    assert AutoTokenizer.from_pretrained(w / "tagi") is not None
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
    assert trained.config.text_config.model_type == "llama"
    log = json.loads((w / "lm-tagi" / "training_log.json").read_text())
    assert any({"loss_pred", "loss_kl", "loss_ins"} <= set(entry) for entry in log)
    for model, name in ((w / "lm-tagi", "lm-metrics.json"), (w / "lm-tk", "lm-tk-metrics.json")):
        _run(
            "evaluate", "evaluate.yaml", "--model", model, "--data-dir", sni, "--output", w / name,
            "--max-instances-per-task", 2, "--max-new-tokens", 4,
        )  # fmt: skip
        metrics = json.loads((w / name).read_text())
        assert sorted(metrics["per_task"]) == sorted(TEST_TASKS)
