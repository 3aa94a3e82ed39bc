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

from .adapter import ADAPTER_WEIGHTS, GeneratedAdapter
from .data import TagiDataCollator
from .lora import install_lora_layers, linear_target
from .teachers import (
    GROUP_BY,
    TEACHER_INDEX,
    TEACHER_INFO,
    TeacherBank,
    _dir_name,
    _group_indices,
    _load_backbone,
    _read_index,
    teacher_target_modules,
)
from .utils import atomic_directory, atomic_write_text

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
    seed: int = 42,
    max_input_length: int = 512,
    max_target_length: int = 128,
) -> TeacherBank:
    """Trains one LoRA teacher per task (or category) of `train_dataset` in a single run; see the module docstring.

    `max_steps` counts optimiser steps over the mixed batches (each teacher sees about
    `max_steps * batch_size / num_keys` examples). Writes the same layout as [`train_lora_teachers`].
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"`group_by` must be one of {GROUP_BY}, got {group_by!r}.")
    torch.manual_seed(seed)
    model, name = _load_backbone(backbone)
    model.requires_grad_(False).train()
    keys = sorted(_group_indices(train_dataset, group_by))
    alpha = 2 * rank if lora_alpha is None else lora_alpha
    names = teacher_target_modules(model.config)
    install_lora_layers(model, [linear_target(model, n) for n in names], alpha / rank)
    modules = {n: model.get_submodule(n) for n in names}
    bank = _LoraBank(modules, len(keys), rank)
    losses = _fit(model, modules, bank, tokenizer, train_dataset, keys, group_by, max_steps, learning_rate,
                  batch_size, seed, max_input_length, max_target_length)  # fmt: skip
    _save(bank, keys, group_by, train_dataset, Path(output_dir), name, alpha, losses)
    return TeacherBank.from_directory(output_dir)


def _fit(model, modules, bank, tokenizer, dataset, keys, group_by, max_steps, lr, batch_size, seed, max_in, max_out):
    collator = TagiDataCollator(tokenizer, teacher_inputs=False, max_input_length=max_in, max_target_length=max_out)
    key_index = {k: i for i, k in enumerate(keys)}
    optimizer = torch.optim.AdamW(bank.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max_steps)
    generator = torch.Generator().manual_seed(seed)
    losses: dict[str, list[float]] = {k: [] for k in keys}
    for step in range(max_steps):
        rows = dataset.select(torch.randint(len(dataset), (batch_size,), generator=generator).tolist()).to_list()
        batch = collator(rows)
        index = torch.tensor([key_index[row[group_by]] for row in rows])
        for n, factors in bank.factors(index).items():
            modules[n].lora_factors = factors
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step(), schedule.step(), optimizer.zero_grad()
        if step % max(1, max_steps // 10) == 0:
            logger.info(f"joint teachers: step {step}/{max_steps}, loss {out.loss.item():.4f}")
        for key in {row[group_by] for row in rows}:
            losses[key].append(out.loss.item())  # the mixed batch's loss, recorded for each key it held
    for module in modules.values():
        module.lora_factors = None
    return losses


def _save(bank, keys, group_by, dataset, output_dir: Path, name, alpha, losses) -> None:
    from .model_card import teacher_model_card

    groups = _group_indices(dataset, group_by)
    index = _read_index(output_dir, group_by, name)
    for i, key in enumerate(keys):
        adapter = GeneratedAdapter(
            lora_factors={n: (a[i].detach(), b[i].detach()) for n, a, b in zip(bank.names, bank.a, bank.b)},
            lora_alpha=alpha, base_model_name_or_path=name,
        )  # fmt: skip
        info = {"key": key, "group_by": group_by, "num_instances": len(groups[key]), "trained": "jointly"}
        if losses[key]:
            info["train_loss"] = sum(losses[key]) / len(losses[key])
        with atomic_directory(output_dir / _dir_name(key)) as tmp:
            adapter.peft_config().save_pretrained(tmp)
            save_file(adapter.peft_state_dict(), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            config = json.loads((tmp / "adapter_config.json").read_text())
            teacher_model_card(key, config, group_by=group_by, info=info).save(tmp / "README.md")
        index["teachers"][key] = _dir_name(key)
    atomic_write_text(output_dir / TEACHER_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
