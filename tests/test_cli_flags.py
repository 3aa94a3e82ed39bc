"""CLI flags a user relies on that the end-to-end CLI tests do not reach: `demo --overwrite`, `pretrain --text-file`
and `--streaming`, `evaluate --num-beams`. Tiny models built in code; each test a few seconds."""

import json

import pytest
import torch
from transformers import T5ForConditionalGeneration

from tagi_hf import TagiModel
from tagi_hf.cli.main import main
from test_demo import TINY
from test_predict import save_tiny_models
from tiny import tiny_text_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


# --------------------------------------------------------------------------------------------------------- demo
def _stale_demo_folder(out):
    """A demo folder whose backbone stage was built with other settings, and a file no stage writes."""
    (out / "backbone").mkdir(parents=True)
    (out / "backbone" / "config.json").write_text("{}")  # a finished stage (see STAGE_MARKERS)
    (out / "backbone" / "recipe_stage.json").write_text(json.dumps({"d_model": 99}))
    (out / "stale.txt").write_text("from an older run")


def _demo_argv(out, *extra):
    return ["demo", "--out", str(out), *(str(x) for kv in TINY.items() for x in kv), *extra]


def test_demo_without_overwrite_refuses_a_stage_built_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    _stale_demo_folder(out)
    assert main(_demo_argv(out)) == 2
    err = capsys.readouterr().err
    assert f"Stage output {out / 'backbone'} was built with other settings" in err
    assert "d_model: built with 99, now 16" in err and "pass overwrite to rebuild every stage" in err
    assert (out / "stale.txt").exists()  # nothing of the old run removed


def test_demo_overwrite_starts_over(tmp_path, monkeypatch, capsys):
    """`--overwrite` reaches the recipe, which removes the old run before building anything; the stages (minutes
    even at tiny settings) are replaced by the recipe's setup alone."""
    import tagi_hf.recipes.synthetic as synthetic

    out = tmp_path / "run"
    _stale_demo_folder(out)
    seen = []

    def setup_only(settings):
        seen.append(settings)
        recipe = synthetic.SyntheticRecipe(settings)  # data and tokenizer stages only
        return {"recipe": recipe}

    monkeypatch.setattr(synthetic, "run_demo", setup_only)
    monkeypatch.setattr(synthetic, "format_demo_table", lambda summary: "table")
    assert main(_demo_argv(out, "--overwrite")) == 0
    assert seen[0].overwrite is True and seen[0].d_model == 16
    assert sorted(p.name for p in out.iterdir()) == ["data", "tokenizer"]  # the stale stage and file are gone
    assert (out / "data" / "splits").is_dir()
    assert main(_demo_argv(out)) == 0 and seen[1].overwrite is False  # off unless asked for


# ------------------------------------------------------------------------------------------------------ pretrain
@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    T5ForConditionalGeneration(tiny_text_config()).save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    words = "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat".split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(0, 20, 2)]  # 20 words each, 10 documents
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    return root


def _pretrain(root, out, *source):
    small = ["--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--lora-rank", "2", "--no-bf16"]
    argv = ["pretrain", "--backbone", str(root / "t5"), "--out", str(out), *source, *small, "--save-steps", "100"]
    assert main(argv) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert max(entry.get("step", 0) for entry in log) == 2
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log if "loss" in entry)
    return TagiModel.from_pretrained(out)


def test_pretrain_reads_a_text_file_as_the_text_dataset_does(backbone, tmp_path, monkeypatch):
    import tagi_hf.cli.train as cli_train

    seen = []
    real = cli_train._pretraining_texts
    monkeypatch.setattr(cli_train, "_pretraining_texts", lambda *args: seen.append(real(*args)) or seen[-1])
    corpus = str(backbone / "corpus.txt")
    from_file = _pretrain(backbone, tmp_path / "file", "--text-file", corpus)
    texts = seen[0]
    assert texts["text"] == (backbone / "corpus.txt").read_text().splitlines()  # one document per line
    from_dataset = _pretrain(backbone, tmp_path / "dataset", "--dataset", "text", "--data-files", corpus)
    for (name, a), (_, b) in zip(from_file.named_parameters(), from_dataset.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # same rows, same order: the same run


def test_pretrain_streams_a_dataset(backbone, tmp_path, monkeypatch):
    from datasets import IterableDataset

    import tagi_hf.cli.train as cli_train

    seen = []
    real = cli_train._pretraining_texts
    monkeypatch.setattr(cli_train, "_pretraining_texts", lambda *args: seen.append(real(*args)) or seen[-1])
    source = ["--dataset", "text", "--data-files", str(backbone / "corpus.txt"), "--streaming"]
    model = _pretrain(backbone, tmp_path / "streamed", *source)
    assert isinstance(seen[0], IterableDataset)
    assert [row["text"] for row in seen[0]] == (backbone / "corpus.txt").read_text().splitlines()
    assert model.config.lora_rank == 2


# ------------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_num_beams_reaches_generation(tmp_path, monkeypatch):
    from transformers import GenerationMixin

    from tagi_hf.data import load_sni, write_synthetic_suite
    from tagi_hf.evaluation.runner import load_for_evaluation, predict

    dirs = save_tiny_models(tmp_path / "models")
    suite = write_synthetic_suite(tmp_path / "suite", seed=0, instances_per_task=2)
    beams = []
    real_generate = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        beams.append(kwargs.get("num_beams"))
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    output, predictions = tmp_path / "metrics.json", tmp_path / "preds.jsonl"
    argv = ["evaluate", "--model", str(dirs["tagi"]), "--data-dir", str(suite), "--split", "test", "--output"]
    extra = ["--predictions-file", str(predictions), "--max-instances-per-task", "1", "--max-new-tokens", "3"]
    assert main([*argv, str(output), *extra, "--num-beams", "3", "--no-progress"]) == 0
    assert beams and set(beams) == {3}
    assert json.loads(output.read_text())["num_beams"] == 3
    records = [json.loads(line) for line in predictions.read_text().splitlines()]

    beams.clear()
    rows = load_sni(suite, splits=("test",), max_test_instances_per_task=1)["test"]
    model, tokenizer, _ = load_for_evaluation(dirs["tagi"], device="cpu")
    direct = predict(model, tokenizer, rows, kind="tagi", max_new_tokens=3, num_beams=3, show_progress=False)
    assert [r["prediction"] for r in records] == [r["prediction"] for r in direct]
    assert set(beams) == {3}
