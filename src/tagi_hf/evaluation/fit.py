"""How well models fit their training tasks: scores on instances of train tasks that training never saw.

A model that does not fit its training tasks says nothing about generalising to new ones, so every model of the
synthetic recipe is also scored on *unseen instances of train tasks*: instances generated for a train task but left
out of the training sample ([`unseen_train_rows`]). The per-task LoRA teachers are scored the same way, each on its
own task, through one batched pass with per-example LoRA factors ([`predict_with_teachers`]).

For the synthetic suite, [`scores_by_operation`] breaks exact match down by operation (a chain's instance counts
for both of its operations), and [`count_ran_to_limit`] counts predictions that ran to the generation limit (no
end-of-sequence learned).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import format_student_input, load_sni
from ..modeling.lora import install_lora_layers, linear_target
from ..modeling.task_state import TaskState, TaskStateSlots, use_task_state
from .metrics import compute_metrics

__all__ = [
    "count_ran_to_limit",
    "predict_with_teachers",
    "scores_by_operation",
    "summarise_predictions",
    "unseen_train_rows",
]

CATEGORY_PREFIX = "Synthetic -> "


def unseen_train_rows(
    data_dir: str | Path,
    *,
    max_train_instances_per_task: int,
    seed: int,
    per_task: int,
    num_tasks: int | None = None,
    sample_seed: int = 0,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """
    Instances of train tasks that a model trained on `load_sni(data_dir, max_train_instances_per_task=...,
    seed=seed)["train"]` never saw: `per_task` of each task's remaining instances in file order, after the first
    `offset` of them (two calls with `offset` 0 and `per_task` give disjoint rows).

    Args:
        data_dir: an SNI-layout folder (e.g. the synthetic suite written with spare instances per task).
        max_train_instances_per_task, seed: the training sample's arguments to [`load_sni`].
        per_task (`int`): unseen instances kept per task.
        num_tasks (`int`, *optional*): a seeded sample of this many train tasks (`sample_seed`); all when `None`.
        offset (`int`, *optional*, defaults to 0): unseen instances skipped per task before the `per_task` kept.

    Returns:
        `list[dict]`: rows with [`load_sni`]'s columns, tasks in split order.
    """
    if per_task < 1 or offset < 0:
        raise ValueError(f"`per_task` must be >= 1 and `offset` >= 0, got {per_task} and {offset}.")
    full = load_sni(data_dir, max_train_instances_per_task=None, seed=seed, splits=("train",))["train"]
    trained = load_sni(data_dir, max_train_instances_per_task=max_train_instances_per_task, seed=seed,
                       splits=("train",))["train"]  # fmt: skip
    seen, tasks = set(trained["id"]), list(dict.fromkeys(full["task"]))
    if num_tasks is not None and num_tasks < len(tasks):
        keep = set(random.Random(f"unseen-train-rows:{sample_seed}").sample(tasks, num_tasks))
        tasks = [t for t in tasks if t in keep]
    wanted, rows, count = set(tasks), [], dict.fromkeys(tasks, 0)
    for row in full:
        task = row["task"]
        if task in wanted and row["id"] not in seen:
            if offset <= count[task] < offset + per_task:
                rows.append(row)
            count[task] += 1
    missing = [t for t, n in count.items() if n <= offset]
    if missing:
        raise ValueError(
            f"{len(missing)} train tasks have no instance beyond the {max_train_instances_per_task} trained on "
            f"and the {offset} unseen ones skipped (e.g. {missing[0]}): write the suite with more instances per task."
        )
    return rows


@torch.no_grad()
def predict_with_teachers(
    backbone: nn.Module,
    bank,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 128,
    max_new_tokens: int = 32,
) -> list[dict[str, Any]]:
    """
    Greedy predictions of each row's own LoRA teacher (`bank`: a [`~tagi_hf.teachers.TeacherBank`]) on the row's
    input alone, as the teachers were trained. Rows of different tasks share a batch: each example runs through its
    own teacher's factors (the PEFT maths, `W x + (alpha/r) B A x`). `backbone` (a T5) gets per-example LoRA layers
    on the teachers' modules, installed in place and left there: with no teacher's factors installed they compute
    the plain linear, so the backbone's own outputs are unchanged afterwards.

    Returns:
        `list[dict]`: `task`, `category`, `prediction`, `references` per row, in order.
    """
    if not rows:
        raise ValueError("`rows` is empty: there is nothing to predict.")
    backbone.eval()
    records: list[dict[str, Any]] = []
    slots = None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        keys = [bank.key_for(r["task"], r["category"]) for r in chunk]
        factors = bank.lora_factors(keys, device=backbone.device)
        if slots is None:
            scaling = next(iter(factors.values())).scaling
            if isinstance(scaling, torch.Tensor):
                raise ValueError("The teachers' `lora_alpha / r` differ; score them in groups of one scaling.")
            install_lora_layers(backbone, [linear_target(backbone, n) for n in factors], scaling)
            slots = TaskStateSlots(lora={n: backbone.get_submodule(n) for n in factors})
        enc = tokenizer([format_student_input(r["input"]) for r in chunk], padding=True, return_tensors="pt")
        with use_task_state(slots, TaskState(lora={n: (f.A, f.B) for n, f in factors.items()})):
            out = backbone.generate(**enc.to(backbone.device), max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        records += [_record(r, t) for r, t in zip(chunk, texts)]
    return records


def copy_input_records(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Prediction records of the trivial baseline that copies each row's input as its prediction: the row every
    table needs beside its methods (an instance its task leaves unchanged is scored right by copying)."""
    return [_record(r, r["input"]) for r in rows]


def _record(row: Mapping[str, Any], text: str) -> dict[str, Any]:
    return {"task": row["task"], "category": row["category"], "prediction": text.strip(),
            "references": list(row["outputs"])}  # fmt: skip


def scores_by_operation(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """
    Instance-weighted means of per-category scores by synthetic operation: category `"Synthetic -> reverse>first"`
    counts for `reverse` and for `first`. Categories outside the synthetic suite are ignored.

    Example:

    ```python
    >>> per_category = {"Synthetic -> reverse>first": {"exact_match": 50.0, "n": 2},
    ...                 "Synthetic -> reverse": {"exact_match": 100.0, "n": 2}}
    >>> scores_by_operation(per_category)["reverse"]
    {'exact_match': 75.0, 'n': 4}
    ```
    """
    sums: dict[str, list[float]] = {}
    for category, scores in per_category.items():
        if not category.startswith(CATEGORY_PREFIX):
            continue
        for op in set(category.removeprefix(CATEGORY_PREFIX).split(">")):
            total = sums.setdefault(op, [0.0, 0])
            total[0] += scores["exact_match"] * scores["n"]
            total[1] += scores["n"]
    return {op: {"exact_match": s / n, "n": n} for op, (s, n) in sorted(sums.items()) if n}


def count_ran_to_limit(predictions: Sequence[str], tokenizer, max_new_tokens: int) -> int:
    """How many predictions reach `max_new_tokens` tokens when re-tokenized (they never emitted end-of-sequence)."""
    lengths = [len(ids) for ids in tokenizer(list(predictions), add_special_tokens=False)["input_ids"]]
    return sum(n >= max_new_tokens for n in lengths)


def summarise_predictions(records: Sequence[Mapping[str, Any]], tokenizer, max_new_tokens: int) -> dict[str, Any]:
    """
    The headline scores of prediction records (`prediction`, `references`, `task`, `category` each): ROUGE-L, EM,
    strict EM and `n` overall, `ran_to_limit` ([`count_ran_to_limit`]) and `by_operation` ([`scores_by_operation`]).
    """
    predictions = [r["prediction"] for r in records]
    metrics = compute_metrics(
        predictions, [r["references"] for r in records], categories=[r["category"] for r in records]
    )
    head = {k: metrics[k] for k in ("rougeL", "exact_match", "exact_match_strict", "n")}
    head["ran_to_limit"] = count_ran_to_limit(predictions, tokenizer, max_new_tokens)
    head["by_operation"] = scores_by_operation(metrics["per_category"])
    return head
