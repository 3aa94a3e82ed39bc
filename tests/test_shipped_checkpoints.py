"""The checkpoints that ship in `model_cards/<name>/` (built by `benchmarks/ship_checkpoints.py`, issue 25): each loads
with the Auto classes in the dtype its card states, a TAGI model wraps it and generates an adapter, and it scores on
its stored fixed sample what its `shipped.json` says.

Tolerance of the rescoring: 2 of the sample's rows in exact match and 3 ROUGE-L points. Greedy decoding on another
CPU (other kernels, other rounding) can flip a near-tie between two tokens on a row, which changes that row's
prediction; a model that lost its training moves these scores by tens of points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from tagi_hf import TagiModel
from tagi_hf.evaluation.fit import summarise_predictions
from tagi_hf.evaluation.runner import predict

CARDS = Path(__file__).resolve().parents[1] / "model_cards"
STANDIN_ROWS = {"definition in context": "own", "no instruction": "empty"}  # as benchmarks/ship_checkpoints.py
TAGI_ROWS = {"own instruction": "own", "another task's instruction": "shuffled"}
SHIPPED = sorted(p.parent for p in CARDS.glob("*/shipped.json"))
EM_ROWS_TOLERANCE, ROUGE_TOLERANCE = 2, 3.0


def test_the_stand_in_ships():
    assert CARDS / "tagi-synthetic-standin" in SHIPPED


def test_shipped_checkpoints_fit_in_the_repository_budget():
    size = sum(f.stat().st_size for folder in SHIPPED for f in folder.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB shipped"


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_checkpoint_loads_generates_an_adapter_and_scores_as_its_card_says(folder):
    check_shipped(folder)


def test_the_benchmark_s_tagi_model_ships():
    assert CARDS / "tagi-synthetic-def" in SHIPPED


def _ship_module():
    import sys

    sys.path.insert(0, str(CARDS.parent / "benchmarks"))
    import ship_checkpoints

    return ship_checkpoints


def test_the_ship_command_writes_a_folder_that_passes_these_checks(tmp_path):
    """`benchmarks/ship_checkpoints.py`'s export, on a tiny stand-in built by the recipe (the real one trains for an
    hour): the folder it writes is the one the checks above read, and its stored scores are reproduced."""
    from dataclasses import replace

    from test_recipe_standin import TINY

    folder = _ship_module().ship_standin(replace(TINY, out=str(tmp_path / "run")), tmp_path / "shipped")
    meta = json.loads((folder / "shipped.json").read_text())
    assert meta["cost"]["seconds"] >= 0 and meta["settings"]["d_model"] == TINY.d_model and meta["suite"]
    assert meta["dtype"] in ("float32", "bfloat16") and len(meta["sample"]["rows"]) == 64
    check_shipped(folder)


def test_the_ship_command_writes_a_tagi_folder_that_passes_these_checks(tmp_path):
    """The same for the TAGI model, on a tiny recipe run through every stage (FT, teachers, stage 1, stage 2): the
    card sums the cost of the stages it names, and without a headline file it quotes no test score."""
    from dataclasses import replace

    from test_recipe_standin import TINY

    ship = _ship_module()
    tiny = replace(TINY, out=str(tmp_path / "run"), baseline_steps=2, teacher_steps=2, stage1_steps=2, stage2_steps=2)
    folder = ship.ship_tagi(tiny, tmp_path / "shipped", results=None)
    meta = json.loads((folder / "shipped.json").read_text())
    assert meta["kind"] == "tagi" and meta["test"] is None and meta["recipe"]["stage2_steps"] == 2
    assert list(meta["cost"]["stages"]) == list(ship.TAGI_STAGES)
    assert meta["cost"]["seconds"] == sum(c["seconds"] for c in meta["cost"]["stages"].values())
    check_shipped(folder)


def check_shipped(folder):
    meta = json.loads((folder / "shipped.json").read_text())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and meta["command"] in card
    assert not list(folder.glob("*.bin")) and (folder / "model.safetensors").is_file()
    kind = meta.get("kind", "t5")  # the stand-in was shipped before the field existed
    tagi_kind = kind == "tagi"
    rows = TAGI_ROWS if tagi_kind else STANDIN_ROWS
    first = next(iter(rows))
    fit = meta["scores"][meta["dtype"]]["train_tasks_unseen_instances"][first]
    assert f"| {first} | {fit['exact_match']:.1f} | {fit['rougeL']:.1f} | {fit['n']} |" in card

    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.dtype == getattr(torch, meta["dtype"])
    assert isinstance(model, TagiModel) == tagi_kind

    tagi = model if tagi_kind else TagiModel.from_backbone(str(folder), lora_rank=4, fusion="none").eval()
    adapter = tagi.generate_adapter("Reverse the order of the words.", tokenizer)
    rank = tagi.config.lora_rank
    assert adapter.lora_factors and all(a.shape[0] == rank for a, _ in adapter.lora_factors.values())
    batch = tokenizer(["Input: cat dog.\nOutput: "], return_tensors="pt")
    with torch.no_grad():
        assert tagi.generate(**batch, adapter=adapter, max_new_tokens=4).shape[0] == 1

    sample = meta["sample"]
    expected = meta["scores"][meta["dtype"]]["fixed_sample"]
    n = len(sample["rows"])
    for key, mode in rows.items():
        limit = sample["max_new_tokens"]
        records = predict(model, tokenizer, sample["rows"], kind=kind, setting=sample["setting"],
                          batch_size=64, max_new_tokens=limit, instruction_mode=mode, show_progress=False)  # fmt: skip
        got = summarise_predictions(records, tokenizer, limit)
        assert got["n"] == expected[key]["n"] == n
        assert abs(got["exact_match"] - expected[key]["exact_match"]) <= 100 * EM_ROWS_TOLERANCE / n + 1e-9, key
        assert abs(got["rougeL"] - expected[key]["rougeL"]) <= ROUGE_TOLERANCE, key
