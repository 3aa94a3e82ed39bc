"""Plain T5 fine-tuning as the teachers and the baseline run it: a private copy of the backbone, `Seq2SeqTrainer`."""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, Seq2SeqTrainingArguments

from ..modeling import tagi_class_for

__all__ = ["Backbone", "group_indices", "load_backbone", "seq2seq_training_args", "train_seq2seq"]

Backbone = str | os.PathLike | PreTrainedModel  # a T5 or a decoder-only LM


def load_backbone(backbone: Backbone) -> tuple[PreTrainedModel, str | None]:
    """A private working copy of the backbone (the caller's model is never modified) and its name or path; a path
    loads as a T5 or as a decoder-only LM after its config."""
    if isinstance(backbone, PreTrainedModel):
        return copy.deepcopy(backbone), backbone.name_or_path or None
    return tagi_class_for(backbone).backbone_auto_class.from_pretrained(backbone), os.fspath(backbone)


def seq2seq_training_args(
    output_dir: str | Path, extra: Mapping[str, Any] | None, **kwargs
) -> Seq2SeqTrainingArguments:
    """`Seq2SeqTrainingArguments` with the teachers' defaults (no checkpoints, no reporting); `extra` wins."""
    defaults = dict(output_dir=os.fspath(output_dir), report_to=[], use_cpu=not torch.cuda.is_available())
    defaults.update(save_strategy="no", logging_steps=max(1, kwargs["max_steps"] // 10), data_seed=kwargs["seed"])
    defaults["remove_unused_columns"] = False  # the collator reads the raw text columns
    return Seq2SeqTrainingArguments(**{**defaults, **kwargs, **(extra or {})})


def train_seq2seq(
    model: nn.Module, args: Seq2SeqTrainingArguments, dataset: Dataset, collator, **train_kwargs
) -> tuple[Seq2SeqTrainer, float]:
    """Trains `model` with `Seq2SeqTrainer`; returns the trainer (to save with) and the mean training loss."""
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    # T5's forward takes **kwargs, so Trainer would assume it scales its loss for gradient accumulation; it does not.
    trainer.model_accepts_loss_kwargs = False
    return trainer, trainer.train(**train_kwargs).training_loss


def group_indices(dataset: Dataset, group_by: str) -> dict[str, list[int]]:
    """`{key: row indices}` of `dataset` grouped by its `group_by` column."""
    groups = defaultdict(list)
    for index, key in enumerate(dataset[group_by]):
        groups[key].append(index)
    return dict(groups)
