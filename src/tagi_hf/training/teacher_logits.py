"""The logit teacher's output distributions, computed once per training example instead of at every step.

The teacher of `L_kl` (an instruction-in-context model) is frozen, so its distribution over the vocabulary at each
label position of an example never changes; running it at every step of every epoch is the largest extra cost of a
stage-2 step over multi-task fine-tuning. [`cache_teacher_logits`] runs it once over the training set and keeps, per
label token, the `top_k` most likely ids, their raw logits and the log-normaliser of the whole vocabulary at the
training temperature, as three columns added to the dataset (saved with `datasets` next to the data, atomically).
[`TagiDataCollator`] turns them into a batch's [`SparseTeacher`] and [`TagiTrainer`] uses
[`sparse_distillation_kl_loss`]: each kept token's KL term is exact, the tail beyond `top_k` is one lumped outcome.

    >>> data = cache_teacher_logits(teacher, train, TagiDataCollator(tok), "runs/x/teacher-logits")  # doctest: +SKIP
    >>> TagiTrainer(model=model, args=args, train_dataset=data, ...)  # no teacher_model needed  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset, List, Value
from torch import nn

from ..data import IGNORE_INDEX
from ..modeling.file_utils import atomic_directory

__all__ = ["SPARSE_TEACHER_COLUMNS", "cache_teacher_logits", "teacher_fingerprint", "teacher_or_cache"]

SPARSE_TEACHER_COLUMNS = ("teacher_topk_ids", "teacher_topk_logits", "teacher_log_normalizer", "teacher_temperature")
CACHE_RECORD = "teacher_logits.json"
FEATURES = {  # 4-byte ids and logits: half what Python ints and floats would take
    "teacher_topk_ids": List(List(Value("int32"))),
    "teacher_topk_logits": List(List(Value("float32"))),
    "teacher_log_normalizer": List(Value("float32")),
    "teacher_temperature": Value("float32"),
}


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 of the teacher's weights (names, shapes, dtypes and values): which teacher a cache came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _collator_record(collator) -> dict:
    """What decides the labels and the teacher's inputs: the collator's settings and its tokenizer's vocabulary."""
    fields = {k: v for k, v in sorted(vars(collator).items()) if k not in ("tokenizer", "teacher_inputs")}
    tokenizer = getattr(collator, "tokenizer", None)
    vocab = json.dumps(tokenizer.get_vocab(), sort_keys=True) if tokenizer is not None else ""
    return {"type": type(collator).__name__, **fields, "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest()}


@torch.no_grad()
def _sparse_rows(teacher: nn.Module, batch: dict, top_k: int, temperature: float) -> list[tuple]:
    """Per row: (ids, logits, log-normaliser) of its label positions, in order."""
    device = next(teacher.parameters()).device
    labels = batch["labels"].to(device)
    logits = teacher(
        input_ids=batch["teacher_input_ids"].to(device),
        attention_mask=batch["teacher_attention_mask"].to(device),
        labels=labels,
    ).logits.float()  # (batch, tgt_len, vocab)
    values, ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # (batch, tgt_len, k), most likely first
    normalizer = torch.logsumexp(logits / temperature, dim=-1)  # (batch, tgt_len)
    rows = []
    for i in range(labels.shape[0]):
        keep = labels[i] != IGNORE_INDEX
        rows.append((ids[i][keep].tolist(), values[i][keep].tolist(), normalizer[i][keep].tolist()))
    return rows


def cache_teacher_logits(
    teacher: nn.Module,
    dataset: Dataset,
    collator: Callable,
    path: str | os.PathLike,
    *,
    top_k: int = 64,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> Dataset:
    """Adds the teacher's top-k logits per label token to `dataset` (columns [`SPARSE_TEACHER_COLUMNS`]) and saves
    the result to `path`; a later call with the same teacher weights, rows, collator and settings loads it instead.

    Args:
        teacher (`nn.Module`): the frozen logit teacher (reads `teacher_input_ids`, the instruction in context).
        dataset (`datasets.Dataset`): the training rows, in the order the trainer will index them.
        collator: the training collator (with `teacher_inputs=True`): gives the teacher's inputs and the labels.
        path: folder of the cache (written atomically: a crash leaves no half-written cache).
        top_k (`int`): tokens kept per position; the rest of the vocabulary is one lumped outcome in the loss.
        temperature (`float`): the `kl_temperature` of training (the log-normaliser depends on it).

    Returns:
        `datasets.Dataset`: `dataset` with the four columns, loaded from `path` (memory-mapped).
    """
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if not getattr(teacher.config, "is_encoder_decoder", False):
        raise ValueError(
            "The top-k teacher-logit cache is written for T5 teachers; train a decoder-only TAGI with its teacher "
            "run live (`--teacher-logits-top-k 0`)."
        )
    path = Path(path)
    record = {
        "teacher_sha256": teacher_fingerprint(teacher),
        "rows": len(dataset),
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
        "collator": _collator_record(collator),
        "top_k": top_k,
        "temperature": temperature,
    }
    if (path / CACHE_RECORD).exists():
        saved = json.loads((path / CACHE_RECORD).read_text())
        differing = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        if differing:
            raise ValueError(
                f"The teacher-logit cache {path} was made for other inputs (differing: {', '.join(differing)}); "
                "remove it or pass another path."
            )
        return Dataset.load_from_disk(str(path))
    was_training = teacher.training
    teacher.eval()
    columns: dict[str, list] = {name: [] for name in SPARSE_TEACHER_COLUMNS}
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collator(rows)
            if "teacher_input_ids" not in batch:
                raise ValueError("The collator gives no `teacher_input_ids`; pass one with `teacher_inputs=True`.")
            for ids, logits, normalizer in _sparse_rows(teacher, batch, top_k, temperature):
                columns["teacher_topk_ids"].append(ids)
                columns["teacher_topk_logits"].append(logits)
                columns["teacher_log_normalizer"].append(normalizer)
                columns["teacher_temperature"].append(temperature)
    finally:
        teacher.train(was_training)
    cached = dataset.remove_columns([c for c in SPARSE_TEACHER_COLUMNS if c in dataset.column_names])
    for name, values in columns.items():
        cached = cached.add_column(name, values, feature=FEATURES[name])
    with atomic_directory(path) as tmp:
        cached.save_to_disk(str(tmp))
        (tmp / CACHE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Dataset.load_from_disk(str(path))


def teacher_or_cache(
    teacher: nn.Module | None,
    dataset: Dataset,
    collator: Callable,
    path: str | os.PathLike,
    *,
    top_k: int,
    temperature: float,
    batch_size: int = 64,
) -> tuple[Dataset, nn.Module | None]:
    """The training data and logit teacher of a stage 2: with `top_k` > 0 and a teacher, `dataset` with the teacher's
    cached top-k logits ([`cache_teacher_logits`] at `path`) and no teacher model to run; otherwise both as given.
    Under several processes, the main one writes the cache and the others then load it."""
    if teacher is None or top_k == 0:
        return dataset, teacher
    from accelerate import PartialState

    with PartialState().main_process_first():
        cached = cache_teacher_logits(
            teacher, dataset, collator, path, top_k=top_k, temperature=temperature, batch_size=batch_size
        )
    return cached, None
