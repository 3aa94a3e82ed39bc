"""Task-balanced batches: every batch holds many different tasks, each with a capped number of examples.

With plain random batches a task's share of the batches follows its share of the data (Super-NaturalInstructions'
tasks range from tens to thousands of instances), and the generator sees few instructions per step if a batch is
dominated by one task. Here tasks are drawn uniformly for every batch, and within a task the examples are taken in a
per-task shuffled order, so each instance is used before any repeats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class TaskBalancedSampler(Sampler[int]):
    """Yields dataset indices in consecutive groups of `batch_size`, each group holding
    `ceil(batch_size / examples_per_task)` distinct tasks (drawn uniformly) with `examples_per_task` examples each
    (the last task of a group fills the remainder). An epoch yields `len(tasks)` indices.

    Args:
        tasks (`Sequence[str]`): the task of every row of the dataset.
        batch_size (`int`): rows per batch (the per-device batch size).
        examples_per_task (`int`): cap on a task's rows in one batch.
        seed (`int`): the order is a function of `seed` and the epoch ([`set_epoch`]).

    Example:

    ```python
    >>> sampler = TaskBalancedSampler(["a", "a", "b", "b", "c", "c"], batch_size=4, examples_per_task=2)
    >>> batch = list(sampler)[:4]
    >>> len({["a", "a", "b", "b", "c", "c"][i] for i in batch})
    2
    ```
    """

    def __init__(self, tasks: Sequence[str], batch_size: int, examples_per_task: int, seed: int = 0):
        if not 1 <= examples_per_task <= batch_size:
            raise ValueError(f"`examples_per_task` must be between 1 and `batch_size` ({batch_size}), got "
                             f"{examples_per_task}.")  # fmt: skip
        if len(tasks) == 0:
            raise ValueError("TaskBalancedSampler needs a non-empty dataset.")
        groups: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            groups.setdefault(task, []).append(index)
        self.groups = list(groups.values())
        self.num_rows, self.batch_size, self.examples_per_task = len(tasks), batch_size, examples_per_task
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        orders = [torch.randperm(len(rows), generator=g).tolist() for rows in self.groups]
        cursor = [0] * len(self.groups)

        def take(task: int) -> int:
            if cursor[task] == len(orders[task]):  # the task's rows are used up: a new pass in a new order
                orders[task], cursor[task] = torch.randperm(len(orders[task]), generator=g).tolist(), 0
            cursor[task] += 1
            return self.groups[task][orders[task][cursor[task] - 1]]

        per_batch, k = -(-self.batch_size // self.examples_per_task), self.examples_per_task
        for start in range(0, self.num_rows, self.batch_size):
            chosen = torch.randperm(len(self.groups), generator=g)[:per_batch].tolist()
            for j in range(min(self.batch_size, self.num_rows - start)):
                # fewer tasks than a batch needs: the chosen ones give more rows each (the cap cannot hold)
                yield take(chosen[j // k] if j // k < len(chosen) else chosen[j % len(chosen)])
