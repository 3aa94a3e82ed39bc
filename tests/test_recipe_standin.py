"""The recipe started from a shipped stand-in (`DemoSettings.standin`, issue 25): the tokenizer and backbone stages
copy it, the suite keeps its shape so that the unseen rows are unseen by the stand-in too, and a stand-in that does not
fit the settings is refused with the reason."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from tagi_hf.data import load_sni
from tagi_hf.recipes.synthetic import DemoSettings, SyntheticRecipe, standin_provenance

pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")

TINY = DemoSettings(instances_per_task=6, eval_instances_per_task=2, vocab_size=300, d_model=16, num_layers=1,
                    backbone_steps=2, batch_size=4, standin_random_texts=20)  # fmt: skip


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A stand-in built by the recipe and laid out as `benchmarks/ship_checkpoints.py` ships one (bf16 weights)."""
    root = tmp_path_factory.mktemp("standin")
    settings = replace(TINY, out=str(root / "built"))
    stage = SyntheticRecipe(settings).backbone()
    folder = root / "shipped"
    T5ForConditionalGeneration.from_pretrained(stage, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(stage).save_pretrained(folder)
    (folder / "shipped.json").write_text(json.dumps({"commit": "abc", **standin_provenance(settings)}))
    return settings, folder


def test_the_recipe_starts_from_a_shipped_stand_in(shipped, tmp_path):
    built, folder = shipped
    # Fewer train rows and another d_model asked: the stand-in's architecture wins, the rows are a subset of its own.
    settings = replace(TINY, out=str(tmp_path / "run"), instances_per_task=3, d_model=32, standin=str(folder))
    recipe = SyntheticRecipe(settings)
    assert recipe.s.d_model == 16 and recipe.s.instances_per_task == 3
    assert recipe.timings.get("tokenizer") is not None  # copied, not trained
    assert recipe.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(folder).get_vocab()

    backbone = T5ForConditionalGeneration.from_pretrained(recipe.backbone())
    shipped_model = T5ForConditionalGeneration.from_pretrained(folder)
    assert backbone.dtype == torch.float32  # trained on in float32 whatever it ships in
    for (name, a), (_, b) in zip(backbone.state_dict().items(), shipped_model.state_dict().items()):
        assert torch.equal(a, b.float()), name  # bf16 -> fp32 is exact
    record = json.loads((tmp_path / "run" / "backbone" / "recipe_stage.json").read_text())
    assert record["standin"] == str(folder) and record["standin_commit"] == "abc" and record["d_model"] == 16

    # The suite has the stand-in's shape: the same instances, and no fit or selection row was a stand-in train row.
    standin_recipe = SyntheticRecipe(replace(built, overwrite=False))
    standin_train = {(r["task"], r["input"]) for r in standin_recipe.train}
    assert {(r["task"], r["input"]) for r in recipe.train} <= standin_train
    assert len(recipe.train) == 3 * len({r["task"] for r in recipe.train})
    for sample in ("fit", "selection"):
        rows = recipe.fit_rows(sample)
        assert rows and not {(r["task"], r["input"]) for r in rows} & standin_train
    dev, standin_dev = (load_sni(r.data_dir, splits=("dev",))["dev"] for r in (recipe, standin_recipe))
    assert dev[:] == standin_dev[:]


def test_a_stand_in_that_does_not_fit_is_refused(shipped, tmp_path):
    _, folder = shipped
    with pytest.raises(ValueError, match="is not a shipped stand-in: no shipped.json"):
        SyntheticRecipe(replace(TINY, out=str(tmp_path / "a"), standin=str(tmp_path)))
    with pytest.raises(ValueError, match="trained on the suite of seed 0, the settings ask for seed 1"):
        SyntheticRecipe(replace(TINY, out=str(tmp_path / "b"), seed=1, standin=str(folder)))
    with pytest.raises(ValueError, match="`instances_per_task` 7 is above the stand-in's 6"):
        SyntheticRecipe(replace(TINY, out=str(tmp_path / "c"), instances_per_task=7, standin=str(folder)))
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta = json.loads((old / "shipped.json").read_text()) | {"suite": "2026-01-01"}
    (old / "shipped.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained on suite revision '2026-01-01'"):
        SyntheticRecipe(replace(TINY, out=str(tmp_path / "d"), standin=str(old)))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before writing anything
