"""Scale-out: 2 processes (DDP over gloo on CPU, via `accelerate launch`) match 1 process; only rank 0 writes.

The 2-process run is slow (two interpreters importing torch, ~25 s); the fast tests check the pieces it relies on:
the loss normalisation that makes per-process losses add up to the global batch's, the accelerate configs, and the
example script with the recipe's bf16 and activation checkpointing options.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from datasets import Dataset
from safetensors.torch import load_file

from tagi_hf import TagiModel
from tagi_hf.data import TagiDataCollator
from tagi_hf.training.arguments import TagiTrainingArguments
from tagi_hf.training.trainer import TagiTrainer
from tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_tiny.py"
CONFIGS = ROOT / "examples" / "accelerate"
TRACER = ROOT / "tests" / "trace_writes.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_tiny", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------------- fast
@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED")],
)
def test_accelerate_configs_load_and_use_bf16(name, kind):
    config = ClusterConfig.from_yaml_file(str(CONFIGS / f"{name}.yaml"))  # accelerate's own reader and checks
    assert config.distributed_type.value == kind
    assert config.mixed_precision == "bf16"
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    if name == "fsdp":
        assert raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "T5Block"
        assert raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] in TagiModel._no_split_modules
        assert raw["fsdp_config"]["fsdp_version"] == 2  # per-parameter sharding: frozen and trainable share units
    if kind == "DEEPSPEED":
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-1])
    assert f"{name}.yaml" in (CONFIGS / "README.md").read_text()


def test_per_process_losses_add_up_to_the_global_batch(tmp_path, monkeypatch):
    """What DDP relies on: each process weights its token-mean loss by its share of the global batch's tokens times
    the world size, so the mean over processes of losses and gradients (what DDP all-reduces) is the global one."""
    model = tiny_model("cross_attention").double().train()
    tokenizer = tiny_tokenizer()
    rows = [
        {"task": t, "definition": d, "positive_examples": [], "input": i, "outputs": [o]}
        for t, d, i, o in [
            ("rev", "reverse the order of words", "apple bird boat", "boat bird apple"),
            ("rev", "reverse the order of words", "cat dog", "dog cat"),
            ("sort", "sort in alphabetical order", "frog egg cake fish drum", "cake drum egg fish frog"),
            ("first", "keep only first 2 words", "gold hat cup", "gold hat"),
        ]
    ]
    collator = TagiDataCollator(tokenizer, teacher_inputs=False)
    args = TagiTrainingArguments(output_dir=str(tmp_path), lambda_kl=0.0, lambda_ins=0.0, use_cpu=True, report_to=[])
    trainer = TagiTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    tokens = lambda batch: (batch["labels"] != -100).sum()  # noqa: E731

    def loss_and_grads(batch, total):
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=total)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    whole = collator(rows)
    expected_loss, expected_grads = loss_and_grads(whole, tokens(whole))
    halves = [collator(rows[:2]), collator(rows[2:])]
    assert tokens(halves[0]) != tokens(halves[1])  # unequal shares: a plain mean of means would be wrong
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    results = [loss_and_grads(half, tokens(whole)) for half in halves]
    # float64; the halves are padded to other lengths and summed in another order: equal to ~1e-13.
    torch.testing.assert_close((results[0][0] + results[1][0]) / 2, expected_loss, rtol=1e-10, atol=0)
    for grad_0, grad_1, expected in zip(results[0][1], results[1][1], expected_grads):
        torch.testing.assert_close((grad_0 + grad_1) / 2, expected, rtol=1e-8, atol=1e-11)


def test_example_trains_with_bf16_and_activation_checkpointing(tmp_path):
    example = _example()
    fp32 = example.main(["--out", str(tmp_path / "fp32"), "--max-steps", "2", "--save-steps", "2"])
    options = ["--bf16", "--gradient-checkpointing"]
    bf16 = example.main(["--out", str(tmp_path / "bf16"), "--max-steps", "2", "--save-steps", "2", *options])
    losses = lambda history: [e["loss"] for e in history if "loss" in e]  # noqa: E731
    assert len(losses(bf16)) == 2 and all(torch.isfinite(torch.tensor(losses(bf16))))
    # bf16 autocast rounds the matmuls (~3 significant digits): close to fp32, and not bit-equal (it was on).
    assert losses(bf16)[0] != losses(fp32)[0]
    assert abs(losses(bf16)[0] - losses(fp32)[0]) < 0.05 * losses(fp32)[0]
    logged = json.loads((tmp_path / "bf16" / "losses.json").read_text())
    assert logged["world_size"] == 1 and logged["log_history"] == bf16
    reloaded = TagiModel.from_pretrained(tmp_path / "bf16" / "final")
    assert reloaded.dtype == torch.float32  # mixed precision: the weights stay fp32
    assert sorted(p.name for p in (tmp_path / "bf16").iterdir()) == ["checkpoint-2", "final", "losses.json"]


# ------------------------------------------------------------------------------------------------------- slow
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=300, cwd=ROOT)
    assert done.returncode == 0, log.read_text()[-3000:]


def _steps(run: Path) -> list[dict]:
    history = json.loads((run / "losses.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def _trainable(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run / "final" / "model.safetensors")
    return {k: v for k, v in weights.items() if not k.startswith("backbone.")}


@pytest.mark.slow
def test_two_processes_match_one_process_and_only_rank_zero_writes(tmp_path):
    """Global batch 8: 1 process x 8, 1 process x 4 x 2 accumulation steps, 2 processes x 4 (accelerate, gloo).

    The three runs compute the same function on the same examples per step and differ only in summation order
    (per-process partial sums, gloo's all-reduce); Adam amplifies that, since its step `lr * m / (sqrt(v) + eps)`
    responds up to `lr / eps` = 1e5 times to a change of a gradient near 0. In float32 the step-6 loss differed by
    1.5e-5 relative on an Intel Xeon and 1.5e-4 on an AMD EPYC. So the runs are in float64, where the differences
    come only from what stays float32 (T5's layer norm computes its variance in float32; the Trainer sums the logged
    loss in float32): step 1 (the same weights, no Adam step yet) agrees to that rounding (1e-7); by step 6 the
    gradient norm was 4e-7 relative off (Intel Xeon). Later steps are compared at 1e-4 relative, 250x that, and
    still 100x below what a normalisation error (a per-process mean instead of the global token mean, a missing
    world-size factor) moves the logged loss or the gradient norm (>1e-2, x2 for the world-size factor); weights at
    1e-6 absolute, 1000x below one step's move (lr 1e-3).
    """
    train = [str(EXAMPLE), "--max-steps", "6", "--save-steps", "3", "--float64"]
    _run([sys.executable, *train, "--out", str(tmp_path / "one")], tmp_path / "1")
    _run([sys.executable, *train, "--out", str(tmp_path / "ga"), "--gradient-accumulation-steps", "2"], tmp_path / "g")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml")]
    launch += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port())]
    _run([*launch, str(TRACER), str(tmp_path / "two"), *train, "--out", str(tmp_path / "two")], tmp_path / "2")

    one, ga, two = _steps(tmp_path / "one"), _steps(tmp_path / "ga"), _steps(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "losses.json").read_text())["world_size"] == 2
    assert [e["step"] for e in two] == [e["step"] for e in one] == list(range(1, 7))
    assert one[-1]["loss"] < one[0]["loss"] - 0.5  # it learns: the comparison is not between two flat lines
    for key in ("loss", "grad_norm"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-7), key
        assert [e[key] for e in two] == pytest.approx([e[key] for e in one], rel=1e-4), key
        assert [e[key] for e in ga] == pytest.approx([e[key] for e in one], rel=1e-4), key
    # The per-term logs are averaged over processes like accumulation averages micro-batches: same micro-batches.
    assert [e["loss_pred"] for e in two] == pytest.approx([e["loss_pred"] for e in ga], rel=1e-4)
    final_one, final_two = _trainable(tmp_path / "one"), _trainable(tmp_path / "two")
    assert final_one.keys() == final_two.keys()
    assert {w.dtype for w in final_one.values() if w.is_floating_point()} == {torch.float64}
    for name, weight in final_one.items():
        torch.testing.assert_close(final_two[name], weight, rtol=1e-4, atol=1e-6, msg=name)

    run = tmp_path / "two"
    rank0 = {Path(p) for p in json.loads((tmp_path / "two.rank0.json").read_text())}
    rank1 = {Path(p) for p in json.loads((tmp_path / "two.rank1.json").read_text())}
    assert {run / "losses.json", run / "final", run / "checkpoint-3" / "model.safetensors"} <= rank0
    assert {run / "checkpoint-6" / "trainer_state.json", run / "checkpoint-6" / "optimizer.pt"} <= rank0
    # Rank 1 writes nothing under the run but its own random state in each checkpoint (needed for an exact resume).
    mine = {run / f"checkpoint-{s}" / name for s in (3, 6) for name in ("", "rng_state_1.pth")}
    assert {p for p in rank1 if run in p.parents or p == run} <= mine
    assert {run / "checkpoint-3" / "rng_state_1.pth", run / "checkpoint-6" / "rng_state_1.pth"} <= rank1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-6", "final", "losses.json"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in run.iterdir())
