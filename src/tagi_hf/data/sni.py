"""Loader for data in the Super-NaturalInstructions layout (`tasks/*.json`, `splits/<name>/{split}_tasks.txt`).

It reads the official repository (allenai/natural-instructions), older releases of it, truncated samples, and the
synthetic suite written by [`write_synthetic_suite`], all without network access.
"""

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, List, Value
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["SNI_FEATURES", "load_sni"]

SNI_FEATURES = Features(
    {
        "id": Value("string"),
        "task": Value("string"),
        "category": Value("string"),
        "definition": Value("string"),
        "positive_examples": List(
            {"input": Value("string"), "output": Value("string"), "explanation": Value("string")}
        ),
        "input": Value("string"),
        "outputs": List(Value("string")),
    }
)
"""Columns of every split returned by [`load_sni`]."""

_REQUIRED_KEYS = ("Definition", "Instances")


def _as_text(value: Any, joiner: str = "\n") -> str:
    """A string from a field that is a string, a list of strings (joined) or missing (None)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return joiner.join(str(v) for v in value)
    return str(value)


def _read_task(path: Path) -> dict[str, Any]:
    """Parse one task file, checking the keys the loader needs."""
    try:
        # Universal newlines and utf-8-sig: files with CRLF line endings or a BOM parse like the others.
        with path.open(encoding="utf-8-sig") as handle:
            task = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Task file {path} is not valid JSON: {error}") from error
    if not isinstance(task, dict):
        raise ValueError(f"Task file {path} must hold a JSON object, got {type(task).__name__}.")
    for key in _REQUIRED_KEYS:
        if key not in task:
            raise ValueError(f"Task file {path} is missing the key '{key}'.")
    if not isinstance(task["Instances"], list):
        raise ValueError(f"Task file {path}: 'Instances' must be a list.")
    return task


def _positive_examples(task: dict[str, Any]) -> list[dict[str, str]]:
    """The task's positive examples as `{input, output, explanation}` strings (list outputs keep the first)."""
    examples = []
    for example in task.get("Positive Examples") or []:
        output = example.get("output", "")
        output = output[0] if isinstance(output, list) and output else output
        examples.append(
            {
                "input": _as_text(example.get("input")),
                "output": _as_text(output),
                "explanation": _as_text(example.get("explanation")),
            }
        )
    return examples


def _select(instances: list[Any], *, shuffle: bool, limit: int | None, rng_seed: str) -> list[tuple[int, Any]]:
    """Pick instances, keeping their original index: shuffled then capped (train) or the first `limit` (test)."""
    indexed = list(enumerate(instances))
    if shuffle:
        random.Random(rng_seed).shuffle(indexed)
    return indexed if limit is None else indexed[:limit]


def _task_rows(task_name: str, path: Path, *, shuffle: bool, limit: int | None, seed: int) -> list[dict[str, Any]]:
    """All rows of one task file."""
    task = _read_task(path)
    categories = task.get("Categories") or [""]
    header = {
        "task": task_name,
        "category": _as_text(categories[0]),
        "definition": _as_text(task["Definition"]),
        "positive_examples": _positive_examples(task),
    }
    rows = []
    # Seeding per task keeps a task's sample independent of which other tasks are loaded.
    for index, instance in _select(task["Instances"], shuffle=shuffle, limit=limit, rng_seed=f"{seed}:{task_name}"):
        for key in ("input", "output"):
            if key not in instance:
                raise ValueError(f"Task file {path}: instance {index} is missing the key '{key}'.")
        outputs = instance["output"] if isinstance(instance["output"], list) else [instance["output"]]
        outputs = [_as_text(output) for output in outputs]
        row_id = instance.get("id") or f"{task_name}-{index}"
        rows.append({"id": str(row_id), **header, "input": _as_text(instance["input"]), "outputs": outputs})
    return rows


def _read_split_file(path: Path) -> list[str]:
    """Task names listed in a split file (one a line; blank lines and `#` comments skipped)."""
    names = (line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines())
    return [name.removesuffix(".json") for name in names if name and not name.startswith("#")]


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"`{name}` must be a positive integer or None, got {value}.")


def _split_rows(data_dir: Path, split_file: Path, *, shuffle: bool, limit: int | None, seed: int) -> Iterable[dict]:
    """Rows of every task named in `split_file`, in the file's order."""
    for task_name in _read_split_file(split_file):
        path = data_dir / "tasks" / f"{task_name}.json"
        if not path.is_file():
            raise ValueError(f"Task '{task_name}' is listed in the split file {split_file} but {path} does not exist.")
        yield from _task_rows(task_name, path, shuffle=shuffle, limit=limit, seed=seed)


def load_sni(
    data_dir: str | Path,
    *,
    split_dir: str = "splits/default",
    max_train_instances_per_task: int | None = 100,
    max_test_instances_per_task: int | None = 100,
    seed: int = 42,
    splits: Iterable[str] = ("train", "test"),
) -> DatasetDict:
    """
    Load Super-NaturalInstructions (or anything in its layout, such as the synthetic suite) as a `DatasetDict`.

    Each row is one instance, with the columns of [`SNI_FEATURES`]: `id` (the instance's id, or `<task>-<index>`
    with its index in the task file when the file has none), `task`, `category` (first of `Categories`, or ""),
    `definition` (a list of strings is joined with newlines), `positive_examples` (list of
    `{input, output, explanation}`), `input` and `outputs` (all references).

    Args:
        data_dir (`str` or `Path`):
            Folder holding `tasks/<name>.json` and the split folder.
        split_dir (`str`, *optional*, defaults to `"splits/default"`):
            Folder, relative to `data_dir`, holding `<split>_tasks.txt` files.
        max_train_instances_per_task (`int`, *optional*, defaults to 100):
            Train instances kept per task, after shuffling each task's instances with `seed`. `None` keeps all.
        max_test_instances_per_task (`int`, *optional*, defaults to 100):
            Instances kept per task in every other split: the first ones in file order, as in the SNI protocol.
            `None` keeps all.
        seed (`int`, *optional*, defaults to 42):
            Seed of the per-task shuffles of the train split.
        splits (`Iterable[str]`, *optional*, defaults to `("train", "test")`):
            Splits to load; each needs a `<split>_tasks.txt` file.

    Returns:
        `datasets.DatasetDict`: one `Dataset` per split.

    Example:

    ```python
    >>> from tagi_hf.data import load_sni, write_synthetic_suite
    >>> suite = write_synthetic_suite("synthetic-suite", instances_per_task=10)
    >>> data = load_sni(suite)
    >>> data["test"][0]["task"].startswith("synth_")
    True
    ```
    """
    _check_limit("max_train_instances_per_task", max_train_instances_per_task)
    _check_limit("max_test_instances_per_task", max_test_instances_per_task)
    data_dir = Path(data_dir)
    result = DatasetDict()
    for split in splits:
        split_file = data_dir / split_dir / f"{split}_tasks.txt"
        if not split_file.is_file():
            raise ValueError(f"`split_dir` has no file for the split '{split}': {split_file} does not exist.")
        train = split == "train"
        limit = max_train_instances_per_task if train else max_test_instances_per_task
        rows = list(_split_rows(data_dir, split_file, shuffle=train, limit=limit, seed=seed))
        columns = {name: [row[name] for row in rows] for name in SNI_FEATURES}  # from_list fails on no rows
        result[split] = Dataset.from_dict(columns, features=SNI_FEATURES)
        logger.info(f"Loaded {len(rows)} {split} instances from {split_file}.")
    return result
