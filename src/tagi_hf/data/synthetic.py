"""The synthetic instruction suite (contract: `docs/synthetic-suite.md`), written in the SNI layout.

Tasks are chains of one or two word-list operations (`synthetic_ops.py`). The suite for a seed (same seed, same
bytes) holds the spec's 323 train tasks, split into train and dev, and its 51 test tasks:

Spec train (323 tasks = train + dev):
    - every parameter-free op alone (8), every `k`-op with k = 1, 2, 3 (12), `join` with each separator (3) and
      `filter_letter` with each of the 17 first letters of `V` (17);
    - `remove`, `append`, `prepend` with 10 sampled non-held-out words each, `replace` with 15 sampled pairs (45);
    - one task, parameters sampled (no held-out word), for each of the 238 allowed ordered op pairs that is not a
      held-out chain. Allowed: the ops differ, a terminal op stands last, `upper` respects its constraints.
Dev (32 tasks, held out of meta-training; every setting is chosen on it, the test split is only reported):
    - every task of 28 whole chain types sampled from the 238 train pairs, so that dev, like test, asks for unseen
      combinations of operations (the sample keeps every op in some train pair);
    - one sampled single-op task of each of `remove`, `replace`, `append`, `prepend` (4), the dev counterpart of the
      test's word-parameter tasks. Drawn with a random stream of its own: the test split does not depend on it.
Train (291 tasks): the spec's train tasks minus dev. Every op still appears in train alone and in some pair.
Test (51 tasks):
    - each of the 10 held-out chains with 3 distinct parameter draws from all of `V` (fewer when fewer exist:
      `reverse>upper` and `swap_ends>lengths` have one) (26);
    - `remove`, `append`, `prepend` with each of the 5 held-out words (15), and 10 sampled `replace` pairs that
      include a held-out word (10).

Interpretation where the spec is silent: an empty output text is written `none`, so `join` of an empty list gives
`none` like an empty list does. Chains never repeat an op. Positive examples are drawn to be informative (output
differs from input) when a draw allows it, and no two inputs of a task (examples or instances) are equal.
`Categories` is `["Synthetic -> <chain>"]` with `<chain>` the op types joined by `>`, e.g. `reverse>upper`.
"""

import itertools
import json
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transformers.utils import logging

from ..modeling.file_utils import replace_directory
from .synthetic_ops import (
    OPERATIONS,
    WORDS,
    SyntheticOp,
    SyntheticTask,
    allowed_pairs,
    apply_chain,
    chain_output,
    param_space,
    validate_chain,
)

logger = logging.get_logger(__name__)

# The op language is re-exported: `tagi_hf.data.synthetic` held it before `synthetic_ops.py` existed.
__all__ = [
    "HELD_OUT_CHAINS",
    "HELD_OUT_WORDS",
    "build_synthetic_tasks",
    "synthetic_corpus",
    "write_synthetic_suite",
    "OPERATIONS",
    "WORDS",
    "SyntheticOp",
    "SyntheticTask",
    "apply_chain",
    "chain_output",
    "validate_chain",
]

HELD_OUT_WORDS = ("owl", "kite", "drum", "rose", "gold")
HELD_OUT_CHAINS = tuple(
    tuple(chain.split(">"))
    for chain in "reverse>upper sort>first double>last rotate>count dedup>join swap_ends>lengths append>reverse "
    "remove>sort filter_letter>count drop_first>double".split()
)
WORD_PARAM_OPS = ("remove", "replace", "append", "prepend")

# Suite sizes (see the module docstring for the resulting task counts).
TRAIN_WORDS_PER_OP = 10
TRAIN_REPLACE_PAIRS = 15
TEST_DRAWS_PER_CHAIN = 3
TEST_REPLACE_PAIRS = 10
DEV_CHAIN_TYPES = 28  # with the 4 word-op tasks, 32 dev tasks: about 10% of the spec's 323 train tasks
DEV_TASKS_PER_WORD_OP = 1


def _chain_tasks(rng: random.Random, pair: tuple[str, str], words: Sequence[str], count: int) -> list[SyntheticTask]:
    """`count` distinct parameter draws of an op pair (all of them when fewer exist)."""
    space = list(itertools.product(*(param_space(name, words) for name in pair)))
    draws = rng.sample(space, min(count, len(space)))
    return [SyntheticTask.from_ops([(name, *params) for name, params in zip(pair, draw)]) for draw in draws]


def _train_tasks(rng: random.Random) -> list[SyntheticTask]:
    """The spec's train tasks (train and dev together)."""
    words = [w for w in WORDS if w not in HELD_OUT_WORDS]
    tasks = []
    for name in OPERATIONS:
        space = param_space(name, words)
        if name in WORD_PARAM_OPS:
            space = rng.sample(space, TRAIN_REPLACE_PAIRS if name == "replace" else TRAIN_WORDS_PER_OP)
        tasks += [SyntheticTask.from_ops([(name, *params)]) for params in space]
    for pair in allowed_pairs():
        if pair not in HELD_OUT_CHAINS:
            tasks += _chain_tasks(rng, pair, words, 1)
    return tasks


def _test_tasks(rng: random.Random) -> list[SyntheticTask]:
    tasks = []
    for pair in HELD_OUT_CHAINS:
        tasks += _chain_tasks(rng, pair, WORDS, TEST_DRAWS_PER_CHAIN)
    for name in WORD_PARAM_OPS:
        space = [params for params in param_space(name) if set(params) & set(HELD_OUT_WORDS)]
        space = rng.sample(space, TEST_REPLACE_PAIRS) if name == "replace" else space
        tasks += [SyntheticTask.from_ops([(name, *params)]) for params in space]
    return tasks


def _dev_names(tasks: list[SyntheticTask], seed: int) -> set[str]:
    """Names of the dev tasks carved out of the spec's train `tasks`: whole chain types and a few word-op tasks."""
    rng = random.Random(f"synthetic-suite-dev:{seed}")  # a stream of its own: train and test draws are unchanged
    pairs = sorted({task.chain_type for task in tasks if len(task.ops) == 2})
    while True:  # the spec wants every op in some train pair; a sample that takes all pairs of an op is redrawn
        dev_pairs = set(rng.sample(pairs, DEV_CHAIN_TYPES))
        if {op for pair in pairs if pair not in dev_pairs for op in pair.split(">")} == set(OPERATIONS):
            break
    names = {task.name for task in tasks if task.chain_type in dev_pairs}
    for op in WORD_PARAM_OPS:
        names |= set(rng.sample(sorted(task.name for task in tasks if task.chain_type == op), DEV_TASKS_PER_WORD_OP))
    return names


def build_synthetic_tasks(seed: int = 0) -> dict[str, list[SyntheticTask]]:
    """
    The suite's tasks for `seed`, sorted by name: `{"train": [...], "dev": [...], "test": [...]}` (291, 32 and 51
    tasks). Train and dev together are the spec's 323 train tasks; the module docstring says how dev is drawn.
    """
    rng = random.Random(f"synthetic-suite:{seed}")
    spec_train, test = _train_tasks(rng), _test_tasks(rng)
    dev = _dev_names(spec_train, seed)
    splits = {
        "train": [task for task in spec_train if task.name not in dev],
        "dev": [task for task in spec_train if task.name in dev],
        "test": test,
    }
    return {split: sorted(tasks, key=lambda t: t.name) for split, tasks in splits.items()}


def _draw_input(rng: random.Random, min_words: int) -> str:
    """`min_words` to 7 words drawn uniformly from `V` with replacement."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, 7)))


def _draw_examples(
    task: SyntheticTask, rng: random.Random, count: int, informative: bool, seen: set[str]
) -> list[tuple[str, str]]:
    """`count` new (input, output) pairs; `informative` prefers outputs that differ from their input."""
    pairs = []
    while len(pairs) < count:
        for _ in range(100 if informative else 1):
            text = _draw_input(rng, task.min_words)
            if text not in seen and not (informative and task.output(text) == text):
                break
        if text not in seen:
            seen.add(text)
            pairs.append((text, task.output(text)))
    return pairs


def _task_json(task: SyntheticTask, seed: int, instances_per_task: int) -> dict:
    """The SNI-style JSON object of a task (2 positive examples, `instances_per_task` instances)."""
    rng, seen = random.Random(f"{seed}:{task.name}"), set()
    examples = _draw_examples(task, rng, 2, True, seen)
    instances = _draw_examples(task, rng, instances_per_task, False, seen)
    return {
        "Contributors": ["tagi_hf synthetic suite"],
        "Source": ["synthetic"],
        "Categories": [f"Synthetic -> {task.chain_type}"],
        "Definition": task.definition,
        "Positive Examples": [{"input": i, "output": o, "explanation": ""} for i, o in examples],
        "Negative Examples": [],
        "Instances": [{"id": f"{task.name}-{n}", "input": i, "output": [o]} for n, (i, o) in enumerate(instances)],
    }


def _replace_dirs_atomically(out_dir: Path, files: dict[str, str]) -> None:
    """Write `files` in a staging folder inside `out_dir`, then rename its top-level folders into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-staging-", dir=out_dir))
    try:
        for relative, text in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text, encoding="utf-8", newline="")
        for top in sorted({relative.split("/")[0] for relative in files}):
            replace_directory(staging / top, out_dir / top)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_synthetic_suite(out_dir: str | Path, *, seed: int = 0, instances_per_task: int = 100) -> Path:
    """
    Write the suite for `seed` to `out_dir` as `tasks/<name>.json` and `splits/default/{train,dev,test}_tasks.txt`.

    Same arguments, same bytes. Existing `tasks/` and `splits/` folders under `out_dir` are replaced, each by one
    rename once everything is written; nothing else in `out_dir` is touched. `instances_per_task` defaults to the
    100 instances per test task of the SNI protocol. Returns `out_dir`, ready for [`load_sni`].

    Example:

    ```python
    >>> from tagi_hf.data import load_sni
    >>> data = load_sni(write_synthetic_suite("synthetic-suite", seed=0, instances_per_task=10))
    >>> data["test"][0]["definition"].startswith("In this task you are given a list of words")
    True
    ```
    """
    if instances_per_task < 1:
        raise ValueError(f"`instances_per_task` must be >= 1, got {instances_per_task}.")
    files, splits = {}, build_synthetic_tasks(seed)
    for split, tasks in splits.items():
        files[f"splits/default/{split}_tasks.txt"] = "".join(f"{task.name}\n" for task in tasks)
        for task in tasks:
            content = json.dumps(_task_json(task, seed, instances_per_task), indent=1, ensure_ascii=False)
            files[f"tasks/{task.name}.json"] = content + "\n"
    out_dir = Path(out_dir)
    _replace_dirs_atomically(out_dir, files)
    counts = ", ".join(f"{len(tasks)} {split}" for split, tasks in splits.items())
    logger.info(f"Wrote the synthetic suite (seed {seed}; {counts} tasks) to {out_dir}.")
    return out_dir


def synthetic_corpus(
    seed: int, n: int, *, instance_fraction: float = 0.5, with_instructions: bool = True
) -> list[str]:
    """
    `n` texts for pretraining the stand-in backbone, drawn only from what the spec lets it see.

    Each text is a random sequence of 6 to 24 words of `V` or, with probability `instance_fraction`, an instance of
    a random **train** task of the suite for `seed`, written `"{definition} {input} {output}"` (without the
    definition when `with_instructions=False`). No dev or test task, held-out chain or held-out parameter word occurs.

    Example:

    ```python
    >>> len(synthetic_corpus(seed=0, n=4))
    4
    ```
    """
    if not 0.0 <= instance_fraction <= 1.0:
        raise ValueError(f"`instance_fraction` must be in [0, 1], got {instance_fraction}.")
    train, rng, texts = build_synthetic_tasks(seed)["train"], random.Random(f"corpus:{seed}"), []
    for _ in range(n):
        if rng.random() < instance_fraction:
            task = rng.choice(train)
            text = _draw_input(rng, task.min_words)
            prefix = task.definition + " " if with_instructions else ""
            texts.append(f"{prefix}{text} {task.output(text)}")
        else:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))))
    return texts
