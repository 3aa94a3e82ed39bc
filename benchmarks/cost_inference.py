"""Inference cost of one task of 100 instances: FLOPs (`torch.utils.flop_counter`) and wall time, per method.

Every method decodes greedily for exactly `shape.output_tokens` new tokens (`min_new_tokens = max_new_tokens`, so an
early `</s>` cannot shorten a run), with HF's default KV cache. A method is two functions: the work done once per
task (`per_task`, e.g. encoding the instruction, generating the adapter, the fusion's keys/values, merging) and the
work done per batch of instances (`per_batch`). Methods:

- `in_context`: the bare T5 reading instruction + instance (Tk-Instruct style);
- `tagi_fusion`: TAGI with fusion, adapter generated once per task, LoRA applied on the fly;
- `tagi_fusion_merged`: the same adapter merged into a copy of the backbone's linears (`W0 + (alpha/r) B A`), the
  fusion path unchanged (its per-task keys/values are the on-the-fly model's: identical by construction);
- `tagi_no_fusion`: TAGI without fusion, LoRA on the fly;
- `tagi_no_fusion_merged`: the generated plain LoRA adapter merged with PEFT (`GeneratedAdapter.to_peft_model` ->
  `merge_and_unload`) into a fresh copy of the bare T5;
- `tagi_fusion_api` / `tagi_no_fusion_api`: the calls a user makes, `adapter = model.generate_adapter(...)` once
  (timed from token ids: `TagiModel._adapters_from_ids`, the body of `generate_adapter` after tokenization), then
  `model.generate(..., adapter=adapter)` per batch; the model's task-state cache does the per-task work on the first
  call and reuses it;
- `floor`: the bare T5 on the instance alone.

FLOPs of a task are counted as `per_task + first call + (instances - 1) x a later call`, each call on one instance,
so work a method does on its first call only (the API rows' cache miss) is counted once, as it happens.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from cost_setup import Inputs, Models, Shape, random_ids
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tagi_hf import GeneratedAdapter, TagiModel, TaskState

METHODS = {
    "in_context": "T5, instruction in context",
    "tagi_fusion": "TAGI (fusion, LoRA on the fly)",
    "tagi_fusion_merged": "TAGI (fusion, LoRA merged)",
    "tagi_no_fusion": "TAGI w/o fusion (LoRA on the fly)",
    "tagi_no_fusion_merged": "TAGI w/o fusion (LoRA merged, PEFT)",
    "tagi_fusion_api": "TAGI (fusion), public API: generate_adapter + generate(adapter=)",
    "tagi_no_fusion_api": "TAGI w/o fusion, public API",
    "floor": "floor: bare T5 on the input alone",
}


@dataclass
class Method:
    name: str
    per_task: Callable[[Inputs], Any]  # inputs -> state (the per-task work)
    per_batch: Callable[[Any, Inputs, slice], torch.Tensor]  # (state, inputs, rows) -> generated ids
    model: Any = None  # the model `per_batch` runs, where `per_task` does not return it


def _generate(model, input_ids: torch.Tensor, steps: int, **kwargs) -> torch.Tensor:
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        num_beams=1,
        **kwargs,
    )
    if out.shape[1] != steps + 1:  # decoder start + `steps` tokens
        raise RuntimeError(f"Expected {steps} decoding steps, got {out.shape[1] - 1}.")
    return out


class _Merger:
    """A copy of a TagiModel whose target linears receive `W0 + (alpha/r) B A` per task (W0 kept, so exact)."""

    def __init__(self, model: TagiModel):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.scaling = model.config.lora_scaling
        self.linears = dict(self.model._lora_modules)  # {PEFT module name: GeneratedLoraLinear}
        self.original = {name: linear.weight.detach().clone() for name, linear in self.linears.items()}

    @torch.no_grad()
    def merge(self, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (lora_a, lora_b) in lora.items():  # A (1, r, in), B (1, out, r): one adapter for the task
            merged = torch.addmm(self.original[name], lora_b[0], lora_a[0], alpha=self.scaling)  # (out, in)
            self.linears[name].weight.copy_(merged)


def adapter_from_state(model: TagiModel, state: TaskState) -> GeneratedAdapter:
    """The plain LoRA adapter of a one-task state (what `generate_adapter` returns, without the text)."""
    factors = {name: (a[0], b[0]) for name, (a, b) in state.lora.items()}
    return GeneratedAdapter(lora_factors=factors, lora_alpha=model.config.lora_alpha)


def build_methods(models: Models, shape: Shape) -> dict[str, Method]:
    steps = shape.output_tokens
    t5, tagi, tagi_nf = models.t5, models.tagi, models.tagi_no_fusion
    merger = _Merger(tagi)

    def fusion_merged_task(inputs: Inputs) -> TaskState:
        state = tagi.prepare_task_state(instruction_input_ids=inputs.instruction)
        merger.merge(state.lora)
        return TaskState(lora={}, encoder_fusion=state.encoder_fusion, decoder_fusion=state.decoder_fusion)

    def no_fusion_merged_task(inputs: Inputs):
        state = tagi_nf.prepare_task_state(instruction_input_ids=inputs.instruction)
        return adapter_from_state(tagi_nf, state).to_peft_model(copy.deepcopy(t5)).merge_and_unload()

    def tagi_task(model: TagiModel) -> Callable[[Inputs], TaskState]:
        return lambda inputs: model.prepare_task_state(instruction_input_ids=inputs.instruction)

    def with_state(model: TagiModel) -> Callable:
        return lambda state, inputs, rows: _generate(model, inputs.inputs[rows], steps, task_state=state)

    def api_task(model: TagiModel) -> Callable[[Inputs], GeneratedAdapter]:
        ids = lambda inputs: inputs.instruction  # noqa: E731
        return lambda inputs: model._adapters_from_ids([""], ids(inputs), torch.ones_like(ids(inputs)))[0]

    def with_adapter(model: TagiModel) -> Callable:
        return lambda adapter, inputs, rows: _generate(model, inputs.inputs[rows], steps, adapter=adapter)

    return {
        "in_context": Method("in_context", lambda i: None, lambda s, i, r: _generate(t5, i.in_context[r], steps)),
        "tagi_fusion": Method("tagi_fusion", tagi_task(tagi), with_state(tagi)),
        "tagi_fusion_merged": Method(
            "tagi_fusion_merged", fusion_merged_task, with_state(merger.model), model=merger.model
        ),
        "tagi_no_fusion": Method("tagi_no_fusion", tagi_task(tagi_nf), with_state(tagi_nf)),
        "tagi_no_fusion_merged": Method(
            "tagi_no_fusion_merged", no_fusion_merged_task, lambda m, i, r: _generate(m, i.inputs[r], steps)
        ),
        "tagi_fusion_api": Method("tagi_fusion_api", api_task(tagi), with_adapter(tagi)),
        "tagi_no_fusion_api": Method("tagi_no_fusion_api", api_task(tagi_nf), with_adapter(tagi_nf)),
        "floor": Method("floor", lambda i: None, lambda s, i, r: _generate(t5, i.inputs[r], steps)),
    }


# -------------------------------------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of `fn()` and FLOPs per module path (a module's count includes its children's)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()  # the math SDPA backend is made of matmuls the counter sees on every device
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def _task_breakdown(total: int, modules: dict[str, int]) -> dict[str, int]:
    encoder, generator = modules.get("T5Stack", 0), modules.get("AdapterGenerator", 0)
    return {"instruction_encoder": encoder, "generator": generator, "fusion_kv_and_merge": total - encoder - generator}


def _instance_breakdown(total: int, modules: dict[str, int]) -> dict[str, int]:
    fusion = modules.get("FusionLayer", 0)  # encoder fusion layers (run from the encoder blocks' hooks)
    decoder = modules.get("T5ForConditionalGeneration.decoder", 0)
    cross = sum(
        v
        for k, v in modules.items()
        if k.startswith("T5ForConditionalGeneration.decoder") and k.endswith("EncDecAttention")
    )
    head = modules.get("T5ForConditionalGeneration.lm_head", 0)
    encoder = modules.get("T5Stack", 0) - fusion
    return {
        "encoder": encoder,
        "encoder_fusion": fusion,
        "decoder_cross_attention": cross,
        "decoder_other": decoder - cross,
        "lm_head": head,
        "other": total - encoder - fusion - decoder - head,
    }


def method_flops(method: Method, inputs: Inputs, instances: int, *, check_linearity: bool = True) -> dict:
    """FLOPs of one task of `instances` instances, as a user runs it one instance per call: the per-task work once,
    the first call, and `instances - 1` later calls (equal to the first unless the method caches on first use).

    Per-instance FLOPs are counted on a batch of one and, with `check_linearity`, checked to be half those of a batch
    of two (all instances have the same length, so the count of a task is exact).
    """
    state_box = {}
    task_total, task_modules = count_flops(lambda: state_box.setdefault("state", method.per_task(inputs)))
    state = state_box["state"]
    first_total = count_flops(lambda: method.per_batch(state, inputs, slice(0, 1)))[0]
    one_total, one_modules = count_flops(lambda: method.per_batch(state, inputs, slice(0, 1)))
    two_total = count_flops(lambda: method.per_batch(state, inputs, slice(0, 2)))[0] if check_linearity else None
    per_task = task_total + first_total + (instances - 1) * one_total
    return {
        "per_task_work": task_total,
        "per_task_work_breakdown": _task_breakdown(task_total, task_modules),
        "first_call_extra": first_total - one_total,  # work done on the first call only (a cache filled)
        "per_instance_backbone": one_total,
        "per_instance_breakdown": _instance_breakdown(one_total, one_modules),
        "linear_in_batch": None if two_total is None else two_total == 2 * one_total,
        "per_instance": per_task / instances,
        "per_task": per_task,
    }


def instruction_encoder_flops(models: Models, inputs: Inputs) -> int:
    """One pass of the backbone's encoder over the instruction (the least any instruction-reading method pays)."""
    return count_flops(lambda: models.t5.encoder(input_ids=inputs.instruction))[0]


# --------------------------------------------------------------------------------------------------- wall time
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_task(method: Method, inputs: Inputs, instances: int, batch_size: int, device: str) -> dict:
    """Seconds for the per-task work and each batch of one task (`instances` instances)."""
    _sync(device)
    start = time.perf_counter()
    state = method.per_task(inputs)
    _sync(device)
    per_task = time.perf_counter() - start
    batches = []
    for first in range(0, instances, batch_size):
        start = time.perf_counter()
        method.per_batch(state, inputs, slice(first, min(first + batch_size, instances)))
        _sync(device)
        batches.append(time.perf_counter() - start)
    return {"per_task_s": per_task, "batch_s": batches, "task_s": per_task + sum(batches)}


def time_methods(
    methods: dict[str, Method],
    inputs: Inputs,
    shape: Shape,
    *,
    repeats: int,
    timed_instances: int,
    warmup_instances: int,
    device: str,
) -> dict[str, dict]:
    """Median task time per method over `repeats` round-robin repeats, after one warm-up per method.

    With `timed_instances` < the task's instances, the task time is extrapolated from the measured batches (flagged).
    """
    n_task, batch = shape.instances_per_task, shape.inference_batch_size
    for method in methods.values():  # warm-up: per-task work + one batch
        time_task(method, inputs, warmup_instances, warmup_instances, device)
    runs = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            runs[name].append(time_task(method, inputs, timed_instances, batch, device))
    result = {}
    for name, measured in runs.items():
        per_instance_batches = [t / batch for run in measured for t in run["batch_s"]]
        task = [run["per_task_s"] + statistics.median(per_instance_batches) * n_task for run in measured]
        if timed_instances >= n_task:
            task = [run["task_s"] for run in measured]
        result[name] = {
            "task_s": statistics.median(task),
            "per_task_work_s": statistics.median(run["per_task_s"] for run in measured),
            "extrapolated": timed_instances < n_task,
            "runs": measured,
        }
    return result


# --------------------------------------------------------------------------------------------------- checks
@torch.no_grad()
def equivalence_checks(models: Models, methods: dict[str, Method], inputs: Inputs, shape: Shape) -> dict:
    """Merged and on-the-fly TAGI give the same logits (teacher-forced, 4 instances), with and without fusion."""
    x = inputs.inputs[:4]
    gen = torch.Generator().manual_seed(1)
    labels = random_ids(gen, shape.text_config["vocab_size"], x.shape[0], shape.output_tokens).to(x.device)

    def logits(model, **kwargs) -> torch.Tensor:
        return model(input_ids=x, attention_mask=torch.ones_like(x), labels=labels, **kwargs).logits.float()

    fly = logits(models.tagi, task_state=methods["tagi_fusion"].per_task(inputs))
    merged_state = methods["tagi_fusion_merged"].per_task(inputs)
    merged = logits(methods["tagi_fusion_merged"].model, task_state=merged_state)
    fly_nf = logits(models.tagi_no_fusion, task_state=methods["tagi_no_fusion"].per_task(inputs))
    merged_nf = logits(methods["tagi_no_fusion_merged"].per_task(inputs))
    bare = logits(models.t5)
    api = logits(models.tagi, adapter=methods["tagi_fusion_api"].per_task(inputs))
    return {
        "fusion_public_api_vs_task_state_max_abs_logit_diff": (api - fly).abs().max().item(),
        "fusion_merged_vs_on_the_fly_max_abs_logit_diff": (merged - fly).abs().max().item(),
        "no_fusion_peft_merged_vs_on_the_fly_max_abs_logit_diff": (merged_nf - fly_nf).abs().max().item(),
        "tagi_vs_bare_backbone_max_abs_logit_diff": (fly - bare).abs().max().item(),
        "logit_scale": fly.abs().mean().item(),
    }


# --------------------------------------------------------------------------------------------------- throughput
@torch.no_grad()
def adapter_throughput(
    model: TagiModel, shape: Shape, seed: int, *, single: int, batched: int, repeats: int, device: str
) -> dict:
    """Adapters per second generated one instruction at a time vs `batched` instructions in one call.

    Times `TagiModel._adapters_from_ids` (the body of `generate_adapter` after tokenization: instruction encoder,
    generator, and the `GeneratedAdapter` objects with their CPU copies of factors and instruction states).
    """
    gen = torch.Generator().manual_seed(seed + 2)
    ids = random_ids(gen, shape.text_config["vocab_size"], batched, shape.instruction_tokens).to(device)
    mask = torch.ones_like(ids)
    texts = [""] * batched

    def run(batch_size: int, count: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for first in range(0, count, batch_size):
            rows = slice(first, min(first + batch_size, count))
            model._adapters_from_ids(texts[rows], ids[rows], mask[rows])
        _sync(device)
        return time.perf_counter() - start

    run(1, 2), run(min(batched, 8), min(batched, 8))  # warm-up
    t_single = statistics.median(run(1, single) for _ in range(repeats))
    t_batched = statistics.median(run(batched, batched) for _ in range(repeats))
    rate_single, rate_batched = single / t_single, batched / t_batched
    return {
        "batch_1_adapters_per_s": rate_single,
        f"batch_{batched}_adapters_per_s": rate_batched,
        "batched_size": batched,
        "speedup_per_adapter": rate_batched / rate_single,
        "single_instructions_timed": single,
        "repeats": repeats,
    }
