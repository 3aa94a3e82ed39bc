import argparse
import json
import re
from pathlib import Path

import pytest
import torch

import tagi_hf.evaluation.runner as predict_module
from tagi_hf import GeneratedAdapter
from tagi_hf.cli.main import SUBCOMMANDS, build_parser, main
from tagi_hf.cli.train import TRAINING_SUBCOMMANDS
from tagi_hf.data import format_instruction, load_sni, write_synthetic_suite
from tagi_hf.evaluation.runner import load_for_evaluation, predict
from tagi_hf.hub import load_adapters
from test_predict import SNI_SAMPLE, save_tiny_models, write_rank_jsonl

METRIC_KEYS = {"rougeL", "exact_match", "exact_match_strict", "n"}
RESULT_KEYS = METRIC_KEYS | {"per_task", "per_category", "setting", "model", "kind", "split", "instruction_mode"}
QUICK = ["--max-new-tokens", "2", "--no-progress"]


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=4)


def _evaluate(tmp_path, model_dir, data_dir, *extra):
    output, predictions = tmp_path / "metrics.json", tmp_path / "preds.jsonl"
    argv = ["evaluate", "--model", str(model_dir), "--data-dir", str(data_dir), "--split", "test"]
    code = main([*argv, "--output", str(output), "--predictions-file", str(predictions), *QUICK, *extra])
    assert code == 0
    lines = predictions.read_text().splitlines()
    return json.loads(output.read_text()), [json.loads(line) for line in lines]


def _check_outputs(metrics, records, kind, instances):
    assert RESULT_KEYS | {"num_tasks"} <= set(metrics) and metrics["kind"] == kind
    assert metrics["n"] == len(records) == sum(instances.values()) and metrics["num_tasks"] == len(instances)
    assert all(set(v) == METRIC_KEYS for v in metrics["per_task"].values())
    assert {t: v["n"] for t, v in metrics["per_task"].items()} == instances
    assert all({"id", "task", "prediction", "references"} <= set(r) for r in records)
    assert len({r["id"] for r in records}) == len(records)


@pytest.mark.parametrize("kind", ["tagi", "t5"])
def test_evaluate_on_the_synthetic_suite(dirs, suite, tmp_path, kind):
    metrics, records = _evaluate(tmp_path, dirs[kind], suite, "--max-instances-per-task", "2")
    tasks = (suite / "splits" / "default" / "test_tasks.txt").read_text().split()
    _check_outputs(metrics, records, kind, dict.fromkeys(tasks, 2))
    assert metrics["setting"] == "def" and metrics["split"] == "test" and metrics["model"] == str(dirs[kind])


@pytest.mark.parametrize("kind", ["tagi", "t5"])
def test_evaluate_the_dev_split_without_instructions(dirs, suite, tmp_path, kind):
    extra = ["--split", "dev", "--instruction-mode", "empty", "--max-instances-per-task", "1"]
    metrics, records = _evaluate(tmp_path, dirs[kind], suite, *extra)
    tasks = (suite / "splits" / "default" / "dev_tasks.txt").read_text().split()
    _check_outputs(metrics, records, kind, dict.fromkeys(tasks, 1))
    assert metrics["split"] == "dev" and metrics["instruction_mode"] == "empty"
    rows = load_sni(suite, splits=("dev",), max_test_instances_per_task=1)["dev"]
    model, tokenizer, _ = load_for_evaluation(dirs[kind], device="cpu")
    quiet = dict(max_new_tokens=2, show_progress=False)  # as QUICK
    direct = predict(model, tokenizer, rows, kind=kind, instruction_mode="empty", **quiet)
    assert [r["prediction"] for r in records] == [r["prediction"] for r in direct]


@pytest.mark.parametrize("kind", ["tagi", "t5"])
def test_evaluate_on_the_sni_sample(dirs, tmp_path, kind):
    if not SNI_SAMPLE.is_dir():
        pytest.skip(f"the SNI sample is not at {SNI_SAMPLE} (shared data not checked out)")
    metrics, records = _evaluate(
        tmp_path, dirs[kind], SNI_SAMPLE, "--max-instances-per-task", "1", "--setting", "def+2pos"
    )
    tasks = (SNI_SAMPLE / "splits" / "default" / "test_tasks.txt").read_text().split()
    _check_outputs(metrics, records, kind, dict.fromkeys(tasks, 1))
    assert metrics["setting"] == "def+2pos"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_instances_per_task_must_be_positive(dirs, suite, tmp_path, capsys, value):
    argv = ["evaluate", "--model", str(dirs["tagi"]), "--data-dir", str(suite), "--output", str(tmp_path / "m.json")]
    assert main([*argv, "--max-instances-per-task", value]) == 2
    err = capsys.readouterr().err
    assert "--max-instances-per-task" in err and f"must be an integer >= 1, got {value}" in err
    assert not (tmp_path / "m.json").exists()


def test_bad_input_prints_an_error_without_traceback(suite, tmp_path, capsys):
    argv = ["evaluate", "--model", str(tmp_path), "--data-dir", str(suite), "--output", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "Traceback" not in err


def test_evaluate_rank_classification(dirs, tmp_path):
    (jsonl, expected), output = write_rank_jsonl(tmp_path / "rc.jsonl", dirs["tagi"]), tmp_path / "rc.json"
    argv = ["evaluate", "--model", str(dirs["tagi"]), "--rank-classification", str(jsonl), "--output", str(output)]
    assert main([*argv, "--batch-size", "3"]) == 0
    result = json.loads(output.read_text())
    assert {key: result[key] for key in expected} == expected and result["kind"] == "tagi"


def test_synth_is_deterministic(tmp_path, capsys):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["synth", "--out", str(out), "--seed", "3", "--instances-per-task", "2"]) == 0
    assert f"to {outs[1]}: 291 train, 32 dev, 46 test tasks." in capsys.readouterr().out
    assert (outs[0] / "splits" / "default" / "dev_tasks.txt").read_text().count("\n") == 32
    files = [{p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.json*"))} for out in outs]
    assert files[0] == files[1] and len(files[0]) > 300
    task = json.loads(next((outs[0] / "tasks").iterdir()).read_text())
    assert len(task["Instances"]) == 2


def test_config_sets_defaults_and_flags_win(tmp_path, monkeypatch):
    calls = []
    result = dict.fromkeys(["rougeL", "exact_match", "exact_match_strict", "n", "num_tasks"], 0)
    monkeypatch.setattr(predict_module, "evaluate_model", lambda *a, **k: calls.append((a, k)) or result)
    config = tmp_path / "eval.yaml"
    config.write_text("model: m\ndata-dir: d\noutput: o.json\nbatch_size: 3\nmax-new-tokens: 5\nno_progress: true\n")
    assert main(["evaluate", "--config", str(config), "--batch-size", "7"]) == 0
    args, kwargs = calls[0]
    assert args == ("m", "d") and kwargs["output"] == "o.json"
    assert kwargs["batch_size"] == 7 and kwargs["max_new_tokens"] == 5 and kwargs["show_progress"] is False
    assert kwargs["num_beams"] == 1  # untouched defaults stay


def test_config_unknown_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("model: m\nbatch_sise: 3\n")
    assert main(["evaluate", "--config", str(config), "--data-dir", "d", "--output", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "batch_sise" in err


# The flags a user reaches for first, per subcommand: each help text must show them.
KEY_FLAGS = {
    "synth": ("--out", "--seed", "--instances-per-task"),
    "evaluate": ("--model", "--data-dir", "--rank-classification", "--output", "--setting", "--num-beams"),
    "generate-adapter": ("--model", "--instruction", "--instruction-file", "--out", "--push-to-hub"),
    "demo": ("--out", "--seed", "--overwrite"),
    "train-baseline": ("--backbone", "--data-dir", "--out", "--max-steps"),
    "train-teachers": ("--backbone", "--data-dir", "--out", "--rank", "--group-by"),
    "pretrain": ("--backbone", "--text-file", "--dataset", "--out", "--lora-rank", "--max-steps"),
    "train": (
        "--model",
        "--backbone",
        "--data-dir",
        "--teacher",
        "--teachers",
        "--out",
        "--lambda-kl",
        "--lambda-ins",
    ),
}
PARSERS = build_parser()[1]


def test_every_subcommand_is_listed_with_its_key_flags(capsys):
    assert set(KEY_FLAGS) == set(PARSERS), "a subcommand was added or removed: name its key flags in KEY_FLAGS"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in [*SUBCOMMANDS, *TRAINING_SUBCOMMANDS]:
        assert command.name in out and " ".join(command.help.split()[:4]) in " ".join(out.split()), command.name


@pytest.mark.parametrize("name", list(PARSERS))
def test_help_of_every_subcommand(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tagi-hf {name}") and "(default:" in out
    shown = set(re.findall(r"--[a-z][a-z0-9_-]*", out))
    assert {"--config", *KEY_FLAGS[name]} <= shown, sorted({"--config", *KEY_FLAGS[name]} - shown)
    for action in PARSERS[name]._actions:  # every flag is shown, with a help text of its own
        if action.help != argparse.SUPPRESS:
            assert {o for o in action.option_strings if o.startswith("--")} <= shown and action.help, action.dest


def test_generate_adapter_single_instruction(dirs, tmp_path):
    out = tmp_path / "adapter"
    assert (
        main(["generate-adapter", "--model", str(dirs["tagi"]), "--instruction", "Sort the words.", "--out", str(out)])
        == 0
    )
    saved = GeneratedAdapter.from_pretrained(out)
    model, tokenizer, _ = load_for_evaluation(dirs["tagi"], device="cpu")
    expected = model.generate_adapter(format_instruction("Sort the words."), tokenizer)
    assert saved.instruction == "Definition: Sort the words."
    for name, (a, b) in expected.lora_factors.items():
        torch.testing.assert_close(saved.lora_factors[name], (a, b))


def test_generate_adapter_instruction_file(dirs, tmp_path):
    instructions = tmp_path / "instructions.txt"
    instructions.write_text("Sort the words.\n\nReverse the order of the words.\n")
    out = tmp_path / "adapters"
    argv = ["generate-adapter", "--model", str(dirs["tagi"]), "--instruction-file", str(instructions)]
    assert main([*argv, "--out", str(out), "--setting", "raw"]) == 0
    index = json.loads((out / "index.json").read_text())["adapters"]  # the layout of `save_adapters`
    assert {name: entry["subfolder"] for name, entry in index.items()} == {
        n: n for n in ["adapter-000", "adapter-001"]
    }
    loaded = load_adapters(out)
    assert list(loaded) == ["adapter-000", "adapter-001"]
    assert [a.instruction for a in loaded.values()] == ["Sort the words.", "Reverse the order of the words."]
    assert (out / "README.md").is_file()


def test_generate_adapter_refuses_a_t5_and_missing_examples(dirs, tmp_path, capsys):
    argv = ["generate-adapter", "--instruction", "Sort.", "--out", str(tmp_path / "a")]
    assert main([*argv, "--model", str(dirs["t5"])]) == 2
    assert main([*argv, "--model", str(dirs["tagi"]), "--setting", "def+2pos"]) == 2
    err = capsys.readouterr().err
    assert "plain T5" in err and "--setting" in err
    assert not Path(tmp_path / "a").exists()
