"""Same seed, same data: two separate builds and trainings give bitwise-identical adapters and greedy predictions."""

import importlib.util
from pathlib import Path

import pytest
import torch

from tagi_hf import TagiModel
from test_resilience import build_workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_tiny.py"
INSTRUCTIONS = ["Reverse the order of the words.", "Keep only the first two words.", "Sort the words."]
INPUTS = ["Input: apple bird boat cake", "Input: dog cat fish", "Input: gold hat egg frog door"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_tiny", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_and_use(example, out: Path, seed: int):
    """Builds a model from scratch, trains it 3 steps, reloads it from disk, and returns its adapters (saved to
    disk too), their bytes, and greedy predictions."""
    example.main(["--out", str(out), "--max-steps", "3", "--save-steps", "3", "--seed", str(seed)])
    model = TagiModel.from_pretrained(out / "final").eval()
    tokenizer = example.build_tokenizer(example.build_rows(seed=seed))
    adapters = model.generate_adapter(INSTRUCTIONS, tokenizer)
    for i, adapter in enumerate(adapters):
        adapter.save_pretrained(out / "adapters" / str(i))
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "adapters").rglob("*.safetensors"))}
    enc = tokenizer(INPUTS, padding=True, return_tensors="pt")
    predictions = model.generate(**enc, adapter=adapters, max_new_tokens=8, do_sample=False, num_beams=1)
    return adapters, files, predictions


def _same_adapters(first, second) -> bool:
    return all(
        a.lora_factors.keys() == b.lora_factors.keys()
        and all(torch.equal(a.lora_factors[n][i], b.lora_factors[n][i]) for n in a.lora_factors for i in (0, 1))
        and torch.equal(a.instruction_states, b.instruction_states)
        for a, b in zip(first, second, strict=True)
    )


@pytest.mark.usefixtures("single_thread")  # one order of every sum; both runs load their files the same way
def test_same_seed_gives_bitwise_identical_adapters_and_predictions(example, tmp_path):
    adapters_1, files_1, predictions_1 = _train_and_use(example, tmp_path / "first", seed=0)
    adapters_2, files_2, predictions_2 = _train_and_use(example, tmp_path / "second", seed=0)
    assert _same_adapters(adapters_1, adapters_2)
    assert files_1 == files_2 and len(files_1) == 2 * len(INSTRUCTIONS)  # weights and instruction states
    assert torch.equal(predictions_1, predictions_2)
    # The check can fail: another seed gives other weights, hence other adapters.
    adapters_3, files_3, _ = _train_and_use(example, tmp_path / "third", seed=1)
    assert not _same_adapters(adapters_1, adapters_3) and files_3 != files_1


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("cli"))


@pytest.mark.usefixtures("single_thread")
def test_cli_train_from_a_backbone_is_reproducible(workspace, tmp_path):
    from safetensors.torch import load_file

    from tagi_hf.cli.main import main

    weights = []
    for run in ("a", "b"):
        argv = ["train", "--backbone", str(workspace / "t5"), "--data-dir", str(workspace / "sni"), "--out",
                str(tmp_path / run), "--lambda-kl", "0", "--lambda-ins", "0", "--lora-rank", "2", "--max-steps", "2",
                "--batch-size", "4", "--max-train-instances-per-task", "4", "--seed", "0"]  # fmt: skip
        assert main(argv) == 0
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
