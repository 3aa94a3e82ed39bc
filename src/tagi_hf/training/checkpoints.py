"""Checkpoints that survive crashes: which one to resume from, and a final save that is atomic and rank-0 only.

`Trainer` writes a checkpoint in place: weights, optimizer, scheduler, RNG states, and `trainer_state.json` last.
A run killed while saving leaves a `checkpoint-N` folder without a readable `trainer_state.json`, and
`transformers.trainer_utils.get_last_checkpoint` would still pick it. Here a checkpoint counts only when its
`trainer_state.json` parses; [`resolve_resume_checkpoint`], the one function that decides where a run resumes, falls
back from an incomplete one to the newest complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..modeling.file_utils import replace_directory

logger = logging.get_logger(__name__)

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` holds a finished Trainer checkpoint: its `trainer_state.json` (written last) parses."""
    try:
        json.loads((Path(path) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _checkpoints(folder: str | os.PathLike) -> dict[int, Path]:
    """The `checkpoint-N` folders in `folder` by step N, complete or not."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()}


def _newest_checkpoint(folder: str | os.PathLike) -> str | None:
    steps = _checkpoints(folder)
    return str(steps[max(steps)]) if steps else None


def last_complete_checkpoint(folder: str | os.PathLike, *, before: int | None = None) -> str | None:
    """The newest complete `checkpoint-N` in `folder` (only steps `< before` when given), or `None`."""
    steps = _checkpoints(folder)
    for step in sorted(steps, reverse=True):
        if (before is None or step < before) and is_complete_checkpoint(steps[step]):
            return str(steps[step])
    return None


RESUME_IF_ANY = "if-any"
"""`resume_from_checkpoint` value meaning: the newest complete checkpoint in `output_dir` when there is one, else a
fresh start (what [`train_tagi`] passes, so that rerunning a crashed run continues it)."""


def resolve_resume_checkpoint(checkpoint: str | os.PathLike | bool | None, output_dir: str) -> str | None:
    """
    The checkpoint to resume from. The one place this is decided: [`TagiTrainer.train`] calls it on its
    `resume_from_checkpoint`, and [`train_tagi`] goes through that.

    - `None` or `False`: none (a fresh start);
    - a path: itself when complete, else the newest complete one before it, or none (a warning says which was
      skipped; a missing folder is passed on for Trainer's own error);
    - `True`: the newest checkpoint in `output_dir`, resolved like a path; an error when there is no complete one;
    - [`RESUME_IF_ANY`]: like `True`, but a fresh start (`None`) when there is no complete one.
    """
    if checkpoint is None or checkpoint is False:
        return None
    if checkpoint is True or checkpoint == RESUME_IF_ANY:
        newest = _newest_checkpoint(output_dir)
        found = None if newest is None else resolve_resume_checkpoint(newest, output_dir)
        if found is None and checkpoint is True:
            raise ValueError(f"`resume_from_checkpoint=True`, but `{output_dir}` holds no complete checkpoint.")
        return found
    path = Path(checkpoint)
    if is_complete_checkpoint(path) or not path.is_dir():  # a missing folder: Trainer's own error names it
        return str(path)
    match = _CHECKPOINT.match(path.name)
    fallback = last_complete_checkpoint(path.parent, before=int(match.group(1))) if match else None
    logger.warning(
        f"Checkpoint `{path}` is incomplete (no readable `{TRAINER_STATE}`: the run stopped while saving it); "
        + (f"resuming from `{fallback}` instead." if fallback else "no earlier complete checkpoint: starting over.")
    )
    return fallback


def save_final_model(trainer, output_dir: str | os.PathLike, *, tokenizer=None) -> Path:
    """
    Saves a trained model, its tokenizer and `training_log.json` to `output_dir` atomically, written by rank 0 only.

    Every process must call it: under FSDP or DeepSpeed ZeRO-3, `trainer.save_model` gathers the sharded weights
    (a collective). The files go to a hidden staging folder beside `output_dir`, which then replaces `output_dir` in
    one rename: a crash leaves the previous `output_dir` (or none), never a partial one.

    Example: `save_final_model(trainer, "runs/tagi", tokenizer=tokenizer)` after `trainer.train()`.
    """
    final = Path(output_dir)
    staging = final.with_name(f".{final.name}.staging")  # the same name on every process
    main = trainer.is_world_process_zero()
    if main and staging.exists():
        shutil.rmtree(staging)  # left by an earlier crash
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # writes on rank 0 only
    if main:
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        log = json.dumps(trainer.state.log_history, indent=1)
        (staging / "training_log.json").write_text(log + "\n", encoding="utf-8")
        replace_directory(staging, final)
    trainer.accelerator.wait_for_everyone()
    return final
