"""Many LoRA teachers trained in one run: a fast path for suites with hundreds of small tasks.

[`train_lora_teachers`] trains one PEFT adapter per task with its own Trainer, which is right for SNI-sized tasks
(thousands of steps each) but spends most of its time in set-up when a suite has hundreds of tasks of a few dozen
instances (the synthetic suite: 323). Here every teacher is a row of one parameter bank, and each example of a
mixed batch goes through its own task's LoRA (the per-example LoRA layers TagiModel uses): teacher `k` receives
gradient only from task `k`'s examples, so the teachers stay independent, exactly as if trained apart, up to the
batch composition the optimiser sees. The output is the same: one ordinary PEFT LoRA directory per key and
`teachers.json`, readable by [`TeacherBank`] and `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..data import collator_for
from ..modeling import tagi_class_for
from ..modeling.adapter import ADAPTER_WEIGHTS, GeneratedAdapter
from ..modeling.file_utils import atomic_directory
from ..modeling.lora import install_lora_layers, linear_target
from ..modeling.task_state import TaskState, TaskStateSlots, use_task_state
from .bank import (
    GROUP_BY,
    TEACHER_INFO,
    TeacherBank,
    open_teacher_index,
    teacher_dir_name,
    teacher_target_modules,
    write_teacher_index,
)
from .seq2seq import group_indices, load_backbone

logger = logging.get_logger(__name__)


class _LoraBank(nn.Module):
    """A (keys, r, in) A and a (keys, out, r) B per module, initialised like PEFT (Kaiming-uniform A, zero B)."""

    def __init__(self, modules: dict[str, nn.Linear], num_keys: int, rank: int):
        super().__init__()
        self.names = list(modules)
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        for module in modules.values():
            bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform_(a=sqrt(5)) on (r, in), as PEFT
            self.a.append(nn.Parameter(torch.empty(num_keys, rank, module.in_features).uniform_(-bound, bound)))
            self.b.append(nn.Parameter(torch.zeros(num_keys, module.out_features, rank)))

    def factors(self, index: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            n: (a[index], b[index]) for n, a, b in zip(self.names, self.a, self.b)
        }  # (batch, r, in), (batch, out, r)


def train_lora_teachers_jointly(
    backbone,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    *,
    group_by: str = "task",
    rank: int = 8,
    lora_alpha: float | None = None,
    max_steps: int = 1000,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    tasks_per_batch: int = 16,
    seed: int = 42,
    max_input_length: int = 512,
    max_target_length: int = 128,
) -> TeacherBank:
    """Trains one LoRA teacher per task (or category) of `train_dataset` in a single run; see the module docstring.

    `max_steps` counts steps over the mixed batches: each batch holds `tasks_per_batch` teachers (at random; at
    most the number of teachers and `batch_size`) with `batch_size / tasks_per_batch` of their examples each, and
    only those teachers take an optimiser step (see `_RowAdam`), so each teacher sees about
    `max_steps * batch_size / num_keys` examples in about `max_steps * tasks_per_batch / num_keys` steps of its own.
    Writes the same layout as [`train_lora_teachers`].
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"`group_by` must be one of {GROUP_BY}, got {group_by!r}.")
    groups = group_indices(train_dataset, group_by)  # key -> row indices
    keys = sorted(groups)
    if tasks_per_batch < 1:
        raise ValueError(f"`tasks_per_batch` must be >= 1, got {tasks_per_batch}.")
    tasks_per_batch = min(tasks_per_batch, len(keys), batch_size)
    torch.manual_seed(seed)
    model, name = load_backbone(backbone)
    model.requires_grad_(False).train()
    alpha = 2 * rank if lora_alpha is None else lora_alpha
    names = teacher_target_modules(model.config)
    install_lora_layers(model, [linear_target(model, n) for n in names], alpha / rank)
    modules = {n: model.get_submodule(n) for n in names}
    bank = _LoraBank(modules, len(keys), rank)
    losses = _fit(model, modules, bank, tokenizer, train_dataset, groups, keys, group_by, max_steps, learning_rate,
                  batch_size, tasks_per_batch, seed, max_input_length, max_target_length)  # fmt: skip
    _save(bank, groups, keys, group_by, Path(output_dir), name, alpha, losses, tagi_class_for(model).peft_task_type)
    return TeacherBank.from_directory(output_dir)


class _RowAdam:
    """Adam (no weight decay) over parameter banks whose first dimension is the teacher: a step updates the moments
    and the step count of the teachers in the batch only, so each teacher's optimiser sees exactly its own steps, as
    if trained apart. (`torch.optim.AdamW` over the whole bank keeps moving absent teachers on stale moments, and a
    teacher visited once every few dozen steps takes steps about three times too large: with 291 teachers that
    broke them at a learning rate that trains 16 teachers well; probes t1-t3 in benchmarks/results/probes.)"""

    def __init__(self, params, num_rows: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.betas, self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(num_rows)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, lr: float) -> None:
        """One Adam step at `lr` for the teachers `rows` (distinct indices); gradients are consumed and cleared."""
        beta1, beta2 = self.betas
        self.steps[rows] += 1
        t = self.steps[rows]
        correction1, correction2 = 1 - beta1**t, 1 - beta2**t
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.dim() - 1)
            grad = p.grad[rows]
            m_rows = beta1 * m[rows] + (1 - beta1) * grad
            v_rows = beta2 * v[rows] + (1 - beta2) * grad * grad
            m[rows], v[rows] = m_rows, v_rows
            denom = (v_rows / correction2.view(shape)).sqrt() + self.eps
            p[rows] -= lr * (m_rows / correction1.view(shape)) / denom
            p.grad = None


def _batch_rows(groups: list[list[int]], batch_size: int, tasks_per_batch: int, generator) -> list[int]:
    """`tasks_per_batch` distinct teachers at random, and `batch_size` rows split evenly among them (with
    replacement within a teacher's rows)."""
    chosen = torch.randperm(len(groups), generator=generator)[:tasks_per_batch].tolist()
    rows = []
    for j, key in enumerate(chosen):
        count = batch_size // len(chosen) + (j < batch_size % len(chosen))
        picks = torch.randint(len(groups[key]), (count,), generator=generator).tolist()
        rows += [groups[key][i] for i in picks]
    return rows


def _fit(model, modules, bank, tokenizer, dataset, groups, keys, group_by, max_steps, lr, batch_size, tasks_per_batch,
         seed, max_in, max_out):  # fmt: skip
    lengths = dict(max_input_length=max_in, max_target_length=max_out)
    collator = collator_for(tokenizer, model.config, teacher_inputs=False, **lengths)
    key_index = {k: i for i, k in enumerate(keys)}
    rows_by_key = [groups[k] for k in keys]
    optimizer = _RowAdam(bank.parameters(), len(keys))
    generator = torch.Generator().manual_seed(seed)
    losses: dict[str, list[float]] = {k: [] for k in keys}
    slots = TaskStateSlots(lora=modules)
    for step in range(max_steps):
        rows = dataset.select(_batch_rows(rows_by_key, batch_size, tasks_per_batch, generator)).to_list()
        batch = collator(rows)
        index = torch.tensor([key_index[row[group_by]] for row in rows])
        with use_task_state(slots, TaskState(lora=bank.factors(index))):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step(index.unique(), lr * (1 - step / max_steps))  # linear decay to 0
        if step % max(1, max_steps // 10) == 0:
            logger.info(f"joint teachers: step {step}/{max_steps}, loss {out.loss.item():.4f}")
        for key in {row[group_by] for row in rows}:
            losses[key].append(out.loss.item())  # the mixed batch's loss, recorded for each key it held
    return losses


def _save(bank, groups, keys, group_by, output_dir: Path, name, alpha, losses, task_type: str) -> None:
    index = open_teacher_index(output_dir, group_by, name)
    for i, key in enumerate(keys):
        adapter = GeneratedAdapter(
            lora_factors={n: (a[i].detach(), b[i].detach()) for n, a, b in zip(bank.names, bank.a, bank.b)},
            lora_alpha=alpha, base_model_name_or_path=name, task_type=task_type,
        )  # fmt: skip
        info = {"key": key, "group_by": group_by, "num_instances": len(groups[key]), "trained": "jointly"}
        if losses[key]:
            info["train_loss"] = sum(losses[key]) / len(losses[key])
        with atomic_directory(output_dir / teacher_dir_name(key)) as tmp:
            adapter.peft_config().save_pretrained(tmp)
            save_file(adapter.peft_state_dict(), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        index["teachers"][key] = teacher_dir_name(key)
    write_teacher_index(output_dir, index)
