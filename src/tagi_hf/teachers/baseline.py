"""The instruction-in-context multi-task baseline (Tk-Instruct's recipe): the paper's main baseline and the logit
teacher of `L_kl`. It shares the backbone loading and Trainer plumbing of the LoRA teachers (`seq2seq.py`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..data import Seq2SeqCollator, collator_for
from ..training.checkpoints import save_final_model
from .seq2seq import Backbone, load_backbone, seq2seq_training_args, train_seq2seq

logger = logging.get_logger(__name__)

__all__ = ["train_multitask_baseline"]


def train_multitask_baseline(
    backbone: Backbone,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    *,
    setting: str = "def",
    max_steps: int = 1000,
    learning_rate: float = 5e-5,
    per_device_train_batch_size: int = 8,
    seed: int = 42,
    max_source_length: int = 1024,
    max_target_length: int = 128,
    save_steps: int | None = None,
    resume: bool = True,
    training_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """
    Fine-tune the whole backbone on instruction + input -> first output ([`format_teacher_input`], Tk-Instruct).

    The paper's instruction-in-context baseline and the logit teacher of `L_kl`. Training runs in
    `output_dir/checkpoints`; then the final model and tokenizer replace `output_dir` atomically (the checkpoints go),
    so `T5ForConditionalGeneration.from_pretrained(output_dir)` loads it.

    Args:
        backbone, tokenizer, train_dataset: as in [`train_lora_teachers`] (the caller's model is not modified).
        output_dir (`str` or `os.PathLike`): where the trained model goes.
        setting (`str`, defaults to `"def"`): instruction setting, `"def"` or `"def+Kpos"` ([`parse_setting`]).
        max_steps, learning_rate, per_device_train_batch_size, seed: training (defaults: Tk-Instruct's lr 5e-5).
        max_source_length, max_target_length (`int`): tokens kept of a source (cut in the instruction) and a target.
        save_steps (`int`, *optional*): save a checkpoint every this many steps; none when `None`.
        resume (`bool`, defaults to `True`): return at once if `output_dir` already holds a trained model, and
            continue from the last checkpoint if there is one. `False` trains from scratch.
        training_kwargs (`Mapping`, *optional*): extra [`~transformers.Seq2SeqTrainingArguments`] fields.

    Example:

    ```python
    >>> path = train_multitask_baseline("t5-base", tokenizer, data["train"], "tk-instruct")  # doctest: +SKIP
    >>> teacher = T5ForConditionalGeneration.from_pretrained(path)  # doctest: +SKIP
    ```
    """
    output_dir, checkpoints = Path(output_dir), Path(output_dir) / "checkpoints"
    if resume and (output_dir / "config.json").exists():
        logger.info(f"`{output_dir}` already holds the trained baseline; not training again.")
        return output_dir
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    last = get_last_checkpoint(checkpoints) if checkpoints.is_dir() else None
    model, _ = load_backbone(backbone)
    lengths = dict(max_input_length=max_source_length, max_teacher_length=max_source_length)
    data_collator = collator_for(
        tokenizer, model.config, setting=setting, max_target_length=max_target_length, **lengths
    )
    args = dict(max_steps=max_steps, learning_rate=learning_rate, seed=seed, save_steps=save_steps or 500)
    args.update(per_device_train_batch_size=per_device_train_batch_size, save_strategy="steps" if save_steps else "no")
    args = seq2seq_training_args(checkpoints, extra=training_kwargs, **args)
    logger.info(f"Training the multi-task baseline ({setting}, {max_steps} steps, resuming from {last}).")
    trainer, loss = train_seq2seq(
        model, args, train_dataset, Seq2SeqCollator(data_collator, "teacher"), resume_from_checkpoint=last
    )
    save_final_model(trainer, output_dir, tokenizer=tokenizer)
    logger.info(f"Saved the multi-task baseline (train loss {loss:.4f}) to {output_dir}.")
    return output_dir
