"""One training run of a TAGI model, as `tagi-hf train`, `tagi-hf pretrain` and the recipes run it: resume from the
newest complete checkpoint, train, save the result atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import TagiDataCollator
from .arguments import TagiTrainingArguments
from .checkpoints import RESUME_IF_ANY, save_final_model
from .trainer import TagiTrainer


def train_tagi(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | Path,
    args: TagiTrainingArguments,
    *,
    data_collator: Callable | None = None,
    teacher_model: PreTrainedModel | None = None,
    teacher_bank=None,
    resume: bool = True,
) -> Path:
    """
    Trains `model` with [`TagiTrainer`] and saves the final model, tokenizer and `training_log.json` atomically to
    `output_dir` ([`save_final_model`]); returns `output_dir`.

    Checkpoints go to `args.output_dir`. With `resume` (default), a run finds the newest complete checkpoint there
    and continues from it, so calling it again after a crash picks up where it stopped; with none there it starts
    fresh ([`resolve_resume_checkpoint`] decides, skipping a checkpoint cut short while being written).

    `data_collator` defaults to a [`TagiDataCollator`] of `tokenizer`; stage 1 passes a [`PretrainingCollator`] and
    zero distillation weights. `teacher_model` (L_kl) and `teacher_bank` (L_ins): see [`TagiTrainer`].
    """
    model.train()
    trainer = TagiTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        teacher_model=teacher_model,
        teacher_bank=teacher_bank,
        data_collator=data_collator or TagiDataCollator(tokenizer),
    )
    trainer.train(resume_from_checkpoint=RESUME_IF_ANY if resume else None)
    return save_final_model(trainer, output_dir, tokenizer=tokenizer)
