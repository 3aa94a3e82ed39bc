"""Stage 0 of TAGI, the teachers: [`train_lora_teachers`] trains one PEFT LoRA per task (or category), the weight
updates `L_ins` aligns the generator with, read back by [`TeacherBank`] (`bank.py`). The instruction-in-context
baseline (`L_kl`'s teacher) is in `baseline.py`.

A LoRA teacher reads the instance input *without* the instruction ([`format_student_input`]), like the student: an
adapter trained on one task already knows its task, so its update encodes what the student's generated adapter must
encode, not how to read an instruction the student never sees.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedTokenizerBase, set_seed
from transformers.utils import logging

from ..data import Seq2SeqCollator, collator_for
from ..modeling import tagi_class_for
from ..modeling.adapter import ADAPTER_CONFIG
from ..modeling.file_utils import atomic_directory
from .bank import (
    GROUP_BY,
    TEACHER_INFO,
    TeacherBank,
    open_teacher_index,
    teacher_dir_name,
    teacher_target_modules,
    write_teacher_index,
)
from .seq2seq import Backbone, group_indices, load_backbone, seq2seq_training_args, train_seq2seq

logger = logging.get_logger(__name__)

__all__ = ["train_lora_teachers"]


def _train_teacher(model, lora_config: LoraConfig, dataset: Dataset, collator, path: Path, info: dict, **args):
    """Trains one teacher on `model`, saves it to `path` atomically, and returns `model` without its LoRA layers."""
    set_seed(args["seed"])  # the LoRA init depends on the seed only, not on the teachers trained before
    peft_model = get_peft_model(model, copy.deepcopy(lora_config))
    with tempfile.TemporaryDirectory() as scratch:
        _, info["train_loss"] = train_seq2seq(peft_model, seq2seq_training_args(scratch, **args), dataset, collator)
    with atomic_directory(path) as tmp:
        peft_model.save_pretrained(tmp)
        (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info(f"Saved teacher `{info['key']}` (train loss {info['train_loss']:.4f}) to {path}.")
    return peft_model.unload()  # the bare backbone again: the next teacher starts from it, untouched


def train_lora_teachers(
    backbone: Backbone,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    *,
    group_by: str = "task",
    rank: int = 8,
    lora_alpha: float | None = None,
    target_modules: list[str] | None = None,
    max_steps: int = 100,
    learning_rate: float = 1e-4,
    per_device_train_batch_size: int = 8,
    seed: int = 42,
    max_input_length: int = 512,
    max_target_length: int = 128,
    keys: list[str] | None = None,
    base_model_name_or_path: str | None = None,
    training_kwargs: Mapping[str, Any] | None = None,
) -> TeacherBank:
    """
    Train one LoRA teacher per task (or category) of `train_dataset` and save each as a PEFT adapter directory.

    Each teacher is `get_peft_model` on a private working copy of the backbone, trained with `Seq2SeqTrainer` on its
    group's instances (input without the instruction, see the module docstring), saved atomically to
    `output_dir/<key>/` and taken off again with `unload()`: teachers never see each other's weights and the caller's
    backbone is never touched. `output_dir/teachers.json` indexes them. Keys already saved are skipped, so a rerun
    continues where a previous run stopped (with the settings those teachers were trained with).

    Args:
        backbone (`str`, `os.PathLike` or [`~transformers.T5ForConditionalGeneration`]): the frozen backbone.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): its tokenizer.
        train_dataset (`datasets.Dataset`): rows of [`load_sni`] (`task`, `category`, `input`, `outputs`, ...).
        output_dir (`str` or `os.PathLike`): where the adapters and `teachers.json` go.
        group_by (`str`, defaults to `"task"`): `"task"` (one teacher per task) or `"category"`.
        rank (`int`, defaults to 8): LoRA rank `r` (paper: 32, like the generated adapters).
        lora_alpha (`float`, *optional*): LoRA alpha; defaults to `2 * rank` as in the paper.
        target_modules (`list[str]`, *optional*): exact PEFT names; defaults to [`teacher_target_modules`].
        max_steps, learning_rate, per_device_train_batch_size, seed: per teacher (paper: 10k, 1e-4, 8x2).
        max_input_length, max_target_length (`int`): tokens kept of an input and of a target.
        keys (`list[str]`, *optional*): train only these tasks (or categories).
        base_model_name_or_path (`str`, *optional*): written into the adapters; defaults to the backbone's path.
        training_kwargs (`Mapping`, *optional*): extra [`~transformers.Seq2SeqTrainingArguments`] (`bf16`, ...).

    Returns:
        [`TeacherBank`]: the bank at `output_dir`.

    Example:

    ```python
    >>> bank = train_lora_teachers("t5-base", tokenizer, data["train"], "teachers", rank=32)  # doctest: +SKIP
    ```
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"`group_by` must be one of {GROUP_BY}, got {group_by!r}.")
    groups = group_indices(train_dataset, group_by)
    unknown = [key for key in keys or () if key not in groups]
    if unknown:
        raise ValueError(f"No training instances for {group_by} `{unknown[0]}` (unknown keys: {unknown}).")
    model, name = load_backbone(backbone)
    name = base_model_name_or_path or name
    model.name_or_path = name or ""  # our copy: get_peft_model writes this name into every adapter config
    output_dir = Path(output_dir)
    index = open_teacher_index(output_dir, group_by, name)
    targets = target_modules or teacher_target_modules(model.config)
    alpha = 2 * rank if lora_alpha is None else lora_alpha
    task_type = tagi_class_for(model).peft_task_type
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, task_type=task_type)
    lengths = dict(max_input_length=max_input_length, max_target_length=max_target_length)
    collator = Seq2SeqCollator(collator_for(tokenizer, model.config, teacher_inputs=False, **lengths))
    args = dict(extra=training_kwargs, max_steps=max_steps, learning_rate=learning_rate, seed=seed)
    args["per_device_train_batch_size"] = per_device_train_batch_size
    todo = keys if keys is not None else sorted(groups)
    for number, key in enumerate(todo, 1):
        path = output_dir / teacher_dir_name(key)
        if (path / ADAPTER_CONFIG).exists():
            logger.info(f"Teacher {number}/{len(todo)} `{key}` exists, skipping.")
        else:
            logger.info(f"Training teacher {number}/{len(todo)} `{key}` on {len(groups[key])} instances.")
            info = {"key": key, "group_by": group_by, "num_instances": len(groups[key])}
            model = _train_teacher(model, lora_config, train_dataset.select(groups[key]), collator, path, info, **args)
        index["teachers"][key] = path.name
        write_teacher_index(output_dir, index)
    return TeacherBank.from_directory(output_dir)
