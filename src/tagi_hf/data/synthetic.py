"""The synthetic instruction suite (contract: `docs/synthetic-suite.md`), written in the SNI layout.

Tasks are chains of one or two word-list operations (`synthetic_ops.py`). The suite for a seed (same seed, same
bytes) holds the spec's 323 train tasks, split into train and dev, and its test tasks (45 for seed 0):

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
Test (at most 51 tasks):
    - each of the 10 held-out chains with up to 3 distinct parameter draws from all of `V` (fewer when fewer
      qualify: `reverse>upper` and `rotate>count` have none, every draw computes a train task's function);
    - `remove`, `append`, `prepend` with each of the 5 held-out words (15), and 10 sampled `replace` pairs that
      include a held-out word (10).

Refinements (docs/synthetic-suite.md, "Refinements"):
    - no held-out task computes a train task's function: a dev or test candidate whose outputs on fixed random
      inputs ([`_signature_inputs`]) equal those of another spec train task on all but 1 % of them is never drawn,
      nor a (nearly) constant one, nor one whose steps no input shows at work ([`held_out_exclusions`] counts them);
    - held-out (dev and test) examples and instances are informative: the output differs from the input and no
      step of a sparse op (`remove`, `replace`, `dedup`, `filter_letter`) is trivial (leaves its list unchanged or
      empties it);
    - train instances of a task with a sparse step are trivial in a share `TRAIN_TRIVIAL_SHARE` (15 %) and
      informative otherwise, where uniform draws would be trivial most of the time (remove and replace 88 %).

Interpretation where the spec is silent: an empty output text is written `none`, so `join` of an empty list gives
`none` like an empty list does. Chains never repeat an op. Train positive examples are drawn to be informative when
a draw allows it, and no two inputs of a task (examples or instances) are equal.
`Categories` is `["Synthetic -> <chain>"]` with `<chain>` the op types joined by `>`, e.g. `reverse>upper`.
"""

import itertools
import json
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
    "SPARSE_OPS",
    "build_synthetic_tasks",
    "held_out_exclusions",
    "trivial_sparse_steps",
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

# Informative instances (docs/synthetic-suite.md, Refinements). A step of one of these ops is *trivial* on an input
# when it leaves its list unchanged or empties it: on uniform inputs that is the common case (remove 88 %, replace
# 88 %, dedup 76 % unchanged; filter_letter 75 % empty), so a model could learn to copy (or answer `none`).
SPARSE_OPS = ("remove", "replace", "dedup", "filter_letter")
TRAIN_TRIVIAL_SHARE = 0.15  # train instances of a task with a sparse step drawn trivial on purpose (see the spec)
DRAW_ATTEMPTS = 2000  # input draws tried per instance before giving up (held out: an error; train: any input)
SIGNATURE_INPUTS = 2000  # random inputs on which two tasks computing the same function are recognised


def _chain_tasks(rng: random.Random, pair: tuple[str, str], words: Sequence[str], count: int) -> list[SyntheticTask]:
    """`count` distinct parameter draws of an op pair (all of them when fewer exist)."""
    space = list(itertools.product(*(param_space(name, words) for name in pair)))
    draws = rng.sample(space, min(count, len(space)))
    return [SyntheticTask.from_ops([(name, *params) for name, params in zip(pair, draw)]) for draw in draws]


def _eligible_draws(rng: random.Random, candidates: list[SyntheticTask], count: int, eligible) -> list[SyntheticTask]:
    """The first `count` tasks of `candidates` in a seeded random order that pass `eligible` (fewer if fewer do)."""
    order, kept = rng.sample(candidates, len(candidates)), []
    for task in order:
        if len(kept) == count:
            break
        if eligible(task):
            kept.append(task)
    return kept


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


def _test_tasks(rng: random.Random, eligible) -> list[SyntheticTask]:
    """Draws of the held-out chains and word-op tasks with a held-out word that pass `eligible` (see [`_build`])."""
    tasks = []
    for pair in HELD_OUT_CHAINS:
        space = itertools.product(*(param_space(name) for name in pair))
        candidates = [SyntheticTask.from_ops([(n, *p) for n, p in zip(pair, draw)]) for draw in space]
        tasks += _eligible_draws(rng, candidates, TEST_DRAWS_PER_CHAIN, eligible)
    for name in WORD_PARAM_OPS:
        space = [params for params in param_space(name) if set(params) & set(HELD_OUT_WORDS)]
        candidates = [SyntheticTask.from_ops([(name, *params)]) for params in space]
        tasks += _eligible_draws(rng, candidates, TEST_REPLACE_PAIRS if name == "replace" else len(space), eligible)
    return tasks


def _dev_names(tasks: list[SyntheticTask], seed: int, eligible) -> set[str]:
    """Names of the dev tasks carved out of the spec's train `tasks`: whole chain types and a few word-op tasks,
    drawn among the tasks that pass `eligible` (a function no other spec train task computes; see [`_build`])."""
    rng = random.Random(f"synthetic-suite-dev:{seed}")  # a stream of its own: train and test draws are unchanged
    pairs = sorted({task.chain_type for task in tasks if len(task.ops) == 2})
    candidates = sorted({task.chain_type for task in tasks if len(task.ops) == 2 and eligible(task)})
    while True:  # the spec wants every op in some train pair; a sample that takes all pairs of an op is redrawn
        dev_pairs = set(rng.sample(candidates, DEV_CHAIN_TYPES))
        if {op for pair in pairs if pair not in dev_pairs for op in pair.split(">")} == set(OPERATIONS):
            break
    names = {task.name for task in tasks if task.chain_type in dev_pairs}
    for op in WORD_PARAM_OPS:
        singles = sorted(task.name for task in tasks if task.chain_type == op and eligible(task))
        names |= set(rng.sample(singles, DEV_TASKS_PER_WORD_OP))
    return names


def _signature_inputs() -> list[list[str]]:
    """`SIGNATURE_INPUTS` fixed random inputs drawn as the spec draws inputs, with 4 to 7 words (every task's domain).
    Two tasks with the same outputs on all of them count as one function: on the suite's inputs they are one task."""
    rng = random.Random("synthetic-suite-signature")
    return [[rng.choice(WORDS) for _ in range(rng.randint(4, 7))] for _ in range(SIGNATURE_INPUTS)]


def _run(task: SyntheticTask, tokens: list[str]) -> list[list[str]]:
    """Every intermediate list of `task` on `tokens`: `[tokens, after op 1, (after op 2)]` (ops already validated)."""
    states = [tokens]
    for op in task.ops:
        states.append(OPERATIONS[op.name].apply(states[-1], *op.params))
    return states


def _output_text(states: list[list[str]]) -> str:
    return " ".join(states[-1]) or "none"


def trivial_sparse_steps(task: SyntheticTask, tokens: Sequence[str]) -> list[bool]:
    """
    For each step of `task` whose op is one of `SPARSE_OPS` (remove, replace, dedup, filter_letter), in order:
    whether it is trivial on `tokens`, i.e. leaves its list unchanged or empties it.

    Example:

    ```python
    >>> task = SyntheticTask.from_ops([("remove", "cat"), ("dedup",)])
    >>> trivial_sparse_steps(task, "dog sun dog".split()), trivial_sparse_steps(task, "cat sun dog".split())
    ([True, False], [False, True])
    ```
    """
    states = _run(task, list(tokens))
    return [
        after == before or not after
        for op, before, after in zip(task.ops, states, states[1:])
        if op.name in SPARSE_OPS
    ]


def _informative(task: SyntheticTask, tokens: list[str]) -> bool:
    """Output differs from the input and no sparse step is trivial: the instance shows what every step does."""
    states = _run(task, tokens)
    sparse = (after == before or not after for op, before, after in zip(task.ops, states, states[1:])
              if op.name in SPARSE_OPS)  # fmt: skip
    return _output_text(states) != " ".join(tokens) and not any(sparse)


class _Functions:
    """Tasks' outputs on the signature inputs, as a matrix of output codes (one row per task), for comparing
    functions: two tasks are *the same function* when their outputs differ on fewer than `NEAR_SHARE` of the inputs
    (on the suite's inputs they are one task), and a task is *constant* when one output covers all but that share."""

    NEAR_SHARE = 0.01

    def __init__(self, tasks: Sequence[SyntheticTask]):
        self.inputs = _signature_inputs()
        self.codes: dict[str, int] = {}  # output text -> code
        self.names = [task.name for task in tasks]
        self.matrix = np.stack([self.row(task) for task in tasks])
        self.limit = self.NEAR_SHARE * len(self.inputs)

    def row(self, task: SyntheticTask) -> np.ndarray:
        texts = (_output_text(_run(task, list(x))) for x in self.inputs)
        return np.array([self.codes.setdefault(text, len(self.codes)) for text in texts], dtype=np.int64)

    def same_as(self, row: np.ndarray) -> list[str]:
        """Names of the tasks computing the function of `row` (itself included when it is one of them)."""
        near = (self.matrix != row).sum(axis=1) < self.limit
        return [name for name, hit in zip(self.names, near) if hit]

    def constant(self, row: np.ndarray) -> bool:
        """One output text on all inputs but fewer than `NEAR_SHARE` of them."""
        return len(row) - np.bincount(row).max() < self.limit


def _build(seed: int) -> tuple[dict[str, tuple[SyntheticTask, ...]], dict[str, int]]:
    """
    The splits for `seed` and how many held-out candidates were excluded. A held-out (dev or test) candidate is
    excluded when, on the fixed signature inputs, it computes the function of a spec train task other than itself (a
    train task's, or a dev task's for test; see [`_Functions`]), when it is constant, or when no input shows each
    of its steps at work.
    """
    rng = random.Random(f"synthetic-suite:{seed}")
    spec_train = _train_tasks(rng)
    functions = _Functions(spec_train)
    rows = dict(zip(functions.names, functions.matrix))
    excluded = {"test": 0, "dev": 0}

    def shows_its_steps(task: SyntheticTask, row: np.ndarray) -> bool:
        return not functions.constant(row) and any(_informative(task, list(x)) for x in functions.inputs)

    def eligible_test(task: SyntheticTask) -> bool:
        row = functions.row(task)
        ok = not functions.same_as(row) and shows_its_steps(task, row)
        excluded["test"] += not ok
        return ok

    eligible_dev_names = {  # no other spec train task computes its function
        task.name
        for task in spec_train
        if functions.same_as(rows[task.name]) == [task.name] and shows_its_steps(task, rows[task.name])
    }
    test = _test_tasks(rng, eligible_test)
    dev = _dev_names(spec_train, seed, lambda task: task.name in eligible_dev_names)
    excluded["dev"] = len(spec_train) - len(eligible_dev_names)  # spec train tasks that no dev draw may take
    splits = {
        "train": [task for task in spec_train if task.name not in dev],
        "dev": [task for task in spec_train if task.name in dev],
        "test": test,
    }
    return {split: tuple(sorted(tasks, key=lambda t: t.name)) for split, tasks in splits.items()}, excluded


_BUILT: dict[int, tuple[dict[str, tuple[SyntheticTask, ...]], dict[str, int]]] = {}


def _built(seed: int) -> tuple[dict[str, tuple[SyntheticTask, ...]], dict[str, int]]:
    """[`_build`] once per seed and process (it runs every task on the signature inputs: about a second)."""
    if seed not in _BUILT:
        _BUILT[seed] = _build(seed)
    return _BUILT[seed]


def build_synthetic_tasks(seed: int = 0) -> dict[str, list[SyntheticTask]]:
    """
    The suite's tasks for `seed`, sorted by name: `{"train": [...], "dev": [...], "test": [...]}` (291, 32 and at
    most 51 tasks: 45 for seed 0). Train and dev together are the spec's 323 train tasks; the module docstring says
    how dev and test are drawn, and which held-out candidates are excluded.
    """
    return {split: list(tasks) for split, tasks in _built(seed)[0].items()}


def held_out_exclusions(seed: int = 0) -> dict[str, int]:
    """How many held-out candidates [`build_synthetic_tasks`] excluded for `seed`: `test`, parameter draws of the test
    kinds skipped (a train task's function, or no input shows every step at work); `dev`, spec train tasks that no
    dev draw may take (another spec train task computes the same function, or no input shows every step)."""
    return dict(_built(seed)[1])


def _draw_input(rng: random.Random, min_words: int) -> str:
    """`min_words` to 7 words drawn uniformly from `V` with replacement."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, 7)))


def _draw_one(task: SyntheticTask, rng: random.Random, seen: set[str], accept, attempts: int) -> str | None:
    """A new input that `accept(tokens)` takes, within `attempts` draws; `None` when none did."""
    for _ in range(attempts):
        text = _draw_input(rng, task.min_words)
        if text not in seen and accept(text.split()):
            return text
    return None


def _draw_examples(
    task: SyntheticTask, rng: random.Random, count: int, seen: set[str], *, held_out: bool, examples: bool = False
) -> list[tuple[str, str]]:
    """
    `count` new (input, output) pairs of `task`, no input repeated (`seen`).

    - held out (dev, test): every input is informative (output differs from input, no sparse step trivial); an
      input none of `DRAW_ATTEMPTS` draws gives is a `ValueError` naming the task.
    - train examples (`examples=True`): informative when one of 100 draws is.
    - train instances of a task with a sparse step: each is drawn trivial (some sparse step leaves its list unchanged
      or empties it) with probability `TRAIN_TRIVIAL_SHARE`, informative in its sparse steps otherwise; a kind no
      draw gives within `DRAW_ATTEMPTS` (e.g. a `remove` after a `filter_letter` of another letter) is given up for
      the task and its instances are drawn uniformly. Other train instances: uniform draws.
    """
    sparse = any(op.name in SPARSE_OPS for op in task.ops) and not held_out and not examples
    given_up: set[bool] = set()  # train kinds (trivial or not) that no draw gave for this task
    pairs = []
    while len(pairs) < count:
        want = sparse and rng.random() < TRAIN_TRIVIAL_SHARE
        if held_out or examples:
            text = _draw_one(task, rng, seen, lambda t: _informative(task, t), DRAW_ATTEMPTS if held_out else 100)
        elif sparse and want not in given_up:
            kind = lambda t, want=want: any(trivial_sparse_steps(task, t)) == want  # noqa: E731
            text = _draw_one(task, rng, seen, kind, DRAW_ATTEMPTS)
            if text is None:
                given_up.add(want)
                continue
        else:
            text = _draw_one(task, rng, seen, lambda t: True, DRAW_ATTEMPTS)
        if text is None and held_out:
            raise ValueError(
                f"Task {task.name}: none of {DRAW_ATTEMPTS} random inputs is new and changed by the task at every "
                f"step ({len(pairs)} of {count} found); held-out instances must be informative. Ask for fewer "
                "instances, or leave this task out of the held-out splits."
            )
        if text is None and examples:  # train: no informative input within 100 draws, any new input does
            text = _draw_one(task, rng, seen, lambda t: True, DRAW_ATTEMPTS)
        if text is None:
            raise ValueError(f"Task {task.name}: no new input within {DRAW_ATTEMPTS} draws ({len(pairs)} found).")
        seen.add(text)
        pairs.append((text, task.output(text)))
    return pairs


def _task_json(task: SyntheticTask, seed: int, instances_per_task: int, held_out: bool = False) -> dict:
    """The SNI-style JSON object of a task (2 positive examples, `instances_per_task` instances); `held_out` (a dev or
    test task): every example and instance informative (see [`_draw_examples`])."""
    rng, seen = random.Random(f"{seed}:{task.name}"), set()
    examples = _draw_examples(task, rng, 2, seen, held_out=held_out, examples=True)
    instances = _draw_examples(task, rng, instances_per_task, seen, held_out=held_out)
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
            data = _task_json(task, seed, instances_per_task, held_out=split != "train")
            content = json.dumps(data, indent=1, ensure_ascii=False)
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
            (text, _), *_ = _draw_examples(task, rng, 1, set(), held_out=False)  # as the suite draws train instances
            prefix = task.definition + " " if with_instructions else ""
            texts.append(f"{prefix}{text} {task.output(text)}")
        else:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))))
    return texts
