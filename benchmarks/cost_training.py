"""Training step time and peak memory per method, each method in a fresh process (so peak RSS is its own).

Methods (same shapes, batch size and optimizer: `torch.optim.AdamW`, lr 1e-4, over the trainable parameters):
- `multitask_ft`: full fine-tuning of the T5 on instruction + instance (Tk-Instruct; the multi-task baseline);
- `tagi_stage2`: TAGI stage 2 with the paper's generator (frozen encoder, mean pooling), `L_pred + L_kl + L_ins`
  (lambda_kl = lambda_ins = 1) through `TagiTrainer.compute_loss`:
  student forward (instruction encoder, generator, fusion, backbone on the instance), the frozen teacher's forward on
  instruction + instance (included), the alignment with per-example teacher LoRAs (random rank-r factors held in
  memory: reading them from a `TeacherBank` on disk is not timed);
- `tagi_stage2_encoder`: the same stage-2 step with the generator that reads the instruction: a separate trainable
  instruction encoder (a copy of the backbone's) and attention pooling (what the trainable encoder adds to a step);
- `tagi_stage2_cached` / `tagi_stage2_encoder_cached`: the same two steps with the teacher's distributions cached
  once per training example (`training.teacher_logits`, top-64 logits per label token): no teacher forward in the
  step, the top-k KL instead (the cache is random here: its values do not change the cost);
- `teacher_logits_pass`: what the cache costs, paid once per training example instead of once per epoch: the
  teacher's no-grad forward on instruction + instance and the top-k (no backward, no optimizer);
- `tagi_lpred`: TAGI with `L_pred` only (no teacher).
Every example of a batch has its own instruction (a batch drawn across tasks). A step is forward + backward +
optimizer step + `zero_grad`; the first step is a warm-up (it also allocates the optimizer state and counts the
forward + backward FLOPs with `FlopCounterMode`) and is not timed.
Peak memory: on CPU the process's peak RSS (`VmHWM`, model construction included), on CUDA
`torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch
from cost_setup import Shape, random_ids
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5ForConditionalGeneration

from tagi_hf import TagiModel
from tagi_hf.training.losses import LoraFactors

TRAIN_METHODS = {
    "multitask_ft": "multi-task FT (instruction in context, full T5)",
    "tagi_stage2": "TAGI stage 2 (L_pred + L_kl + L_ins, teacher forward incl.)",
    "tagi_stage2_encoder": "TAGI stage 2, trainable instruction encoder + attention pooling",
    "tagi_stage2_cached": "TAGI stage 2, teacher logits cached (top-64)",
    "tagi_stage2_encoder_cached": "TAGI stage 2, trainable instruction encoder, teacher logits cached (top-64)",
    "teacher_logits_pass": "teacher-logit cache: one teacher forward per example, once (no backward)",
    "tagi_lpred": "TAGI, L_pred only",
}
CACHED_TOP_K = 64


class RandomTeacherBank:
    """Stands in for a `TeacherBank`: one random rank-r LoRA teacher per example, stacked once, kept in memory."""

    def __init__(self, model: TagiModel, batch_size: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        rank, scaling = model.config.lora_rank, model.config.lora_scaling
        self.factors = {}
        for name, linear in model._lora_modules.items():
            lora_a = torch.randn(batch_size, rank, linear.in_features, generator=gen) / linear.in_features**0.5
            lora_b = torch.randn(batch_size, linear.out_features, rank, generator=gen) * 0.01
            self.factors[name] = LoraFactors(lora_a, lora_b, scaling)

    def key_for(self, task: str, category: str) -> str:
        return task

    def check_compatible(self, target, keys=None) -> None:
        return None

    def lora_factors(self, keys, device=None, dtype=None, modules=None) -> dict[str, LoraFactors]:
        names = modules if modules is not None else list(self.factors)
        return {
            n: LoraFactors(
                self.factors[n].A.to(device, dtype), self.factors[n].B.to(device, dtype), self.factors[n].scaling
            )
            for n in names
        }


def _batch(shape: Shape, batch_size: int, seed: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(seed)
    vocab = shape.text_config["vocab_size"]
    tensors = {
        "input_ids": random_ids(gen, vocab, batch_size, shape.input_tokens),
        "instruction_input_ids": random_ids(gen, vocab, batch_size, shape.instruction_tokens),
        "teacher_input_ids": random_ids(gen, vocab, batch_size, shape.in_context_tokens),
        "labels": random_ids(gen, vocab, batch_size, shape.output_tokens),
    }
    for key in ("input_ids", "instruction_input_ids", "teacher_input_ids"):
        tensors[key.replace("input_ids", "attention_mask")] = torch.ones_like(tensors[key])
    batch = {k: v.to(device) for k, v in tensors.items()}
    batch["task_keys"] = [f"task{i}" for i in range(batch_size)]  # every example from another task
    batch["task_categories"] = [""] * batch_size
    return batch


def _setup(method: str, shape: Shape, batch_size: int, seed: int, device: str, workdir: str):
    """(model, loss closure) of one method."""
    torch.manual_seed(seed)
    batch = _batch(shape, batch_size, seed, device)
    if method == "multitask_ft":
        model = T5ForConditionalGeneration(shape.t5_config()).to(device).train()
        source = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
        return model, lambda: model(**source, labels=batch["labels"]).loss
    if method == "teacher_logits_pass":
        teacher = T5ForConditionalGeneration(shape.t5_config()).to(device).eval().requires_grad_(False)
        source = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}

        def teacher_pass() -> torch.Tensor:
            with torch.no_grad():
                logits = teacher(**source, labels=batch["labels"]).logits
                logits.topk(CACHED_TOP_K, dim=-1), torch.logsumexp(logits, dim=-1)
            return torch.zeros((), requires_grad=True)  # nothing to train

        return teacher, teacher_pass
    from tagi_hf.training.arguments import TagiTrainingArguments
    from tagi_hf.training.trainer import TagiTrainer

    cached = method.endswith("_cached")
    method = method.removesuffix("_cached")
    full = method in ("tagi_stage2", "tagi_stage2_encoder")
    encoder = method == "tagi_stage2_encoder"  # the others: the paper's generator (frozen encoder, mean pooling)
    generator = dict(instruction_encoder="separate" if encoder else "backbone",
                     instruction_pooling="attention" if encoder else "mean")  # fmt: skip
    config = shape.tagi_config("cross_attention", **generator)
    model = TagiModel(config).to(device).train()
    teacher = T5ForConditionalGeneration(shape.t5_config()).to(device).eval() if full and not cached else None
    args = TagiTrainingArguments(
        output_dir=workdir,
        lambda_kl=1.0 if full else 0.0,
        lambda_ins=1.0 if full else 0.0,
        per_device_train_batch_size=batch_size,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    bank = RandomTeacherBank(model, batch_size, seed) if full else None
    trainer = TagiTrainer(model=model, args=args, teacher_model=teacher, teacher_bank=bank)
    student_keys = [k for k in batch if not k.startswith("teacher") or (full and not cached)]
    inputs = {k: batch[k] for k in student_keys}
    if cached:
        inputs.update(_sparse_teacher(shape, batch_size, seed, device))
    return model, lambda: trainer.compute_loss(model, dict(inputs))


def _sparse_teacher(shape: Shape, batch_size: int, seed: int, device: str) -> dict:
    """A batch's cached teacher distributions as `TagiDataCollator` gives them (random values)."""
    gen = torch.Generator().manual_seed(seed + 1)
    size = (batch_size, shape.output_tokens, CACHED_TOP_K)
    return {
        "teacher_topk_ids": random_ids(gen, shape.text_config["vocab_size"], *size).to(device),
        "teacher_topk_logits": torch.randn(size, generator=gen).sort(-1, descending=True).values.to(device),
        "teacher_log_normalizer": torch.full(size[:2], 8.0, device=device),
        "teacher_temperature": torch.ones(batch_size, device=device),
    }


def _memory_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak) of this process, from /proc/self/status (Linux).

    Not `resource.getrusage(...).ru_maxrss`: on Linux a spawned child inherits its parent's peak RSS through
    fork + exec, while `VmHWM` belongs to the child's own address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_training_step(
    method: str, shape_dict: dict, batch_size: int, steps: int, threads: int, seed: int, device: str
) -> dict:
    """Runs in a child process: warm-up step, then `steps` timed steps."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as workdir:
        model, loss_fn = _setup(method, Shape(**shape_dict), batch_size, seed, device, workdir)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None  # the teacher pass trains nothing
        setup_rss = _memory_mb("VmRSS")
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times, flops = [], None
        for step in range(steps + 1):
            counter = FlopCounterMode(display=False) if step == 0 else contextlib.nullcontext()
            _sync(device)
            start = time.perf_counter()
            with counter:  # the untimed warm-up step counts the forward + backward FLOPs
                loss = loss_fn()
                loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - start)
            flops = counter.get_total_flops() if step == 0 else flops
    result = {
        "step_s": statistics.median(times[1:]),
        "warmup_step_s": times[0],
        "timed_steps_s": times[1:],
        "forward_backward_flops": int(flops),
        "trainable_parameters": sum(p.numel() for p in params),
        "batch_size": batch_size,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": _memory_mb("VmHWM"),
        "loss": float(loss.detach()),
    }
    if device.startswith("cuda"):
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _child(queue, *args) -> None:
    try:
        queue.put(("ok", measure_training_step(*args)))
    except BaseException as error:  # report, don't hang the parent
        queue.put(("error", repr(error)))


def training_costs(shape: Shape, *, batch_size: int, steps: int, threads: int, seed: int, device: str) -> dict:
    """`{method: measurement}` for every training method, each measured in its own spawned process."""
    context = multiprocessing.get_context("spawn")
    results = {}
    for method in TRAIN_METHODS:
        queue = context.Queue()
        args = (method, shape.to_dict(), batch_size, steps, threads, seed, device)
        process = context.Process(target=_child, args=(queue, *args))
        process.start()
        status, value = queue.get()
        process.join()
        if status != "ok":
            raise RuntimeError(f"Training benchmark `{method}` failed in its process: {value}")
        results[method] = value
    return results
