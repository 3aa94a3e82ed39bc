"""The instruction each task is evaluated with: its own, or a control that replaces or withholds it.

Modes of [`task_instructions`] (`tagi-hf evaluate --instruction-mode`):

- `"own"`: the task's instruction, [`format_instruction`] of its definition and first K positive examples;
- `"generic"`: [`GENERIC_DEFINITION`], a definition naming no operation, for every task;
- `"shuffled"`: another task's own instruction, following a seeded derangement of the tasks;
- `"empty"`: no instruction at all, the empty text `""`. A plain T5 (instruction in context) then reads the instance
  input alone, in the student format ([`format_student_input`]: exactly what a TAGI student reads); a TAGI model
  decodes with the adapter generated from `""`, whose instruction tokens are the tokenizer's EOS alone.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..data import format_instruction, parse_setting

INSTRUCTION_MODES = ("own", "generic", "shuffled", "empty")
GENERIC_DEFINITION = "Complete the task."
"""Definition of the `"generic"` instruction mode: it names no operation (formatted like any definition)."""
EMPTY_INSTRUCTION = ""
"""Instruction of the `"empty"` mode; never produced otherwise, since [`format_instruction`] starts `Definition:`."""


def derangement(n: int, seed: int) -> list[int]:
    """A seeded random permutation of `range(n)` with no fixed point (Sattolo's algorithm: one n-cycle)."""
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 items, got {n}.")
    perm, rng = list(range(n)), random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: never leaves an item in place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def task_instructions(
    rows: Sequence[Mapping[str, Any]], *, setting: str = "def", instruction_mode: str = "own", seed: int = 0
) -> dict[str, str]:
    """
    The instruction each task is evaluated with, `{task: instruction}` in order of first appearance.

    `"own"`: [`format_instruction`] of the task's definition and first K positive examples (K from `setting`);
    `"generic"`: `format_instruction(GENERIC_DEFINITION)` for every task (no examples, as they would reveal the
    task); `"shuffled"`: the own instruction of another task, following `derangement(num_tasks, seed)`;
    `"empty"`: [`EMPTY_INSTRUCTION`] (`""`) for every task: no instruction at all. [`predict`] then feeds a plain T5
    the instance input alone in the student format ([`format_student_input`], no definition text), and generates a
    TAGI model's adapter from the empty text (`generate_adapter("", tokenizer, allow_empty=True)`: EOS alone).

    Example:

    ```python
    >>> rows = [{"task": "t1", "definition": "Sort the words."}, {"task": "t2", "definition": "Count them."}]
    >>> task_instructions(rows), task_instructions(rows, instruction_mode="empty")
    ({'t1': 'Definition: Sort the words.', 't2': 'Definition: Count them.'}, {'t1': '', 't2': ''})
    ```
    """
    if instruction_mode not in INSTRUCTION_MODES:
        raise ValueError(
            f"`instruction_mode` must be one of {', '.join(INSTRUCTION_MODES)}; got {instruction_mode!r}."
        )
    num_pos = parse_setting(setting)
    first: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        first.setdefault(row["task"], row)
    own = {t: format_instruction(r["definition"], r.get("positive_examples") or [], num_pos) for t, r in first.items()}
    tasks = list(own)
    if instruction_mode == "generic":
        return dict.fromkeys(tasks, format_instruction(GENERIC_DEFINITION))
    if instruction_mode == "empty":
        return dict.fromkeys(tasks, EMPTY_INSTRUCTION)
    if instruction_mode == "shuffled":
        if len(tasks) < 2:
            raise ValueError(f"`instruction_mode`='shuffled' needs at least 2 tasks, got {len(tasks)}.")
        return {task: own[tasks[j]] for task, j in zip(tasks, derangement(len(tasks), seed))}
    return own
