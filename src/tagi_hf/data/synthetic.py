"""The synthetic instruction suite (contract: `spec/synthetic-suite.md`), written in the SNI layout.

Tasks are chains of one or two word-list operations. The suite for a seed (same seed, same bytes):

Train (323 tasks):
    - every parameter-free op alone (8), every `k`-op with k = 1, 2, 3 (12), `join` with each separator (3) and
      `filter_letter` with each of the 17 first letters of `V` (17);
    - `remove`, `append`, `prepend` with 10 sampled non-held-out words each, `replace` with 15 sampled pairs (45);
    - one task, parameters sampled (no held-out word), for each of the 238 allowed ordered op pairs that is not a
      held-out chain. Allowed: the ops differ, a terminal op stands last, `upper` respects its constraints.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

WORDS = tuple(
    "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat "
    "hill key kite lamp leaf lion map moon nest owl pen pig rain ring rose ship shoe star sun tree".split()
)
HELD_OUT_WORDS = ("owl", "kite", "drum", "rose", "gold")
HELD_OUT_CHAINS = tuple(
    tuple(chain.split(">"))
    for chain in "reverse>upper sort>first double>last rotate>count dedup>join swap_ends>lengths append>reverse "
    "remove>sort filter_letter>count drop_first>double".split()
)
TERMINAL_OPS = frozenset({"count", "lengths", "join"})
NOT_AFTER_UPPER = frozenset({"sort", "remove", "replace", "filter_letter", "append", "prepend", "dedup"})
WORD_PARAM_OPS = ("remove", "replace", "append", "prepend")
SEPARATORS = {"dash": "-", "plus": "+", "slash": "/"}
LETTERS = tuple(sorted({word[0] for word in WORDS}))
DEFINITION_PREFIX = "In this task you are given a list of words separated by spaces. "

# Suite sizes (see the module docstring for the resulting task counts).
TRAIN_WORDS_PER_OP = 10
TRAIN_REPLACE_PAIRS = 15
TEST_DRAWS_PER_CHAIN = 3
TEST_REPLACE_PAIRS = 10


@dataclass(frozen=True)
class _OpSpec:
    params: tuple[str, ...]  # parameter kinds: k (1-3), w / a / b (words of V), c (a letter), sep (a separator name)
    sentence: str
    apply: Callable[..., list[str]]


def _swap_ends(tokens: list[str]) -> list[str]:
    return tokens if len(tokens) < 2 else [tokens[-1], *tokens[1:-1], tokens[0]]


OPERATIONS: dict[str, _OpSpec] = {
    "reverse": _OpSpec((), "Reverse the order of the words.", lambda t: t[::-1]),
    "sort": _OpSpec((), "Sort the words in alphabetical order.", sorted),
    "first": _OpSpec(("k",), "Keep only the first {k} words.", lambda t, k: t[:k]),
    "last": _OpSpec(("k",), "Keep only the last {k} words.", lambda t, k: t[-k:]),
    "drop_first": _OpSpec(("k",), "Remove the first {k} words.", lambda t, k: t[k:]),
    "upper": _OpSpec((), "Write every word in capital letters.", lambda t: [x.upper() for x in t]),
    "double": _OpSpec((), "Repeat every word twice.", lambda t: [x for x in t for _ in (0, 1)]),
    "remove": _OpSpec(("w",), "Remove every occurrence of the word {w}.", lambda t, w: [x for x in t if x != w]),
    "replace": _OpSpec(("a", "b"), "Replace every {a} with {b}.", lambda t, a, b: [b if x == a else x for x in t]),
    "rotate": _OpSpec(("k",), "Move the first {k} words to the end.", lambda t, k: t[k:] + t[:k]),
    "swap_ends": _OpSpec((), "Swap the first and the last word.", _swap_ends),
    "append": _OpSpec(("w",), "Add the word {w} at the end.", lambda t, w: [*t, w]),
    "prepend": _OpSpec(("w",), "Add the word {w} at the beginning.", lambda t, w: [w, *t]),
    "dedup": _OpSpec(
        (), "Remove repeated words and keep the first occurrence of each.", lambda t: list(dict.fromkeys(t))
    ),
    "filter_letter": _OpSpec(
        ("c",), "Keep only the words that start with the letter {c}.", lambda t, c: [x for x in t if x[:1] == c]
    ),
    "count": _OpSpec((), "Count the words and answer with a number.", lambda t: [str(len(t))]),
    "lengths": _OpSpec((), "Replace each word with its number of letters.", lambda t: [str(len(x)) for x in t]),
    "join": _OpSpec(
        ("sep",), "Join the words with a {sep} instead of spaces.", lambda t, sep: [SEPARATORS[sep].join(t)]
    ),
}
"""The 18 operations of the spec, in its order: parameter kinds, instruction sentence and semantics."""

_DOMAINS: dict[str, tuple] = dict(k=(1, 2, 3), w=WORDS, a=WORDS, b=WORDS, c=LETTERS, sep=tuple(SEPARATORS))


@dataclass(frozen=True)
class SyntheticOp:
    """
    One operation with its parameters.

    Example:

    ```python
    >>> SyntheticOp("first", (2,)).sentence, SyntheticOp("replace", ("cat", "dog")).slug
    ('Keep only the first 2 words.', 'replace_cat_dog')
    ```
    """

    name: str
    params: tuple[int | str, ...] = ()

    @property
    def sentence(self) -> str:
        """The op's instruction sentence with its parameters filled in."""
        spec = OPERATIONS[self.name]
        return spec.sentence.format(**dict(zip(spec.params, self.params)))

    @property
    def slug(self) -> str:
        """The op and its parameters joined by `_`, as in task names (`first_2`, `replace_cat_dog`)."""
        return "_".join([self.name, *map(str, self.params)])


OpLike = SyntheticOp | tuple | str  # an op, a tuple `(name, *params)` such as `("first", 2)`, or a bare op name


def _as_op(op: OpLike) -> SyntheticOp:
    """Accept `SyntheticOp`, `("first", 2)` or `"reverse"`; check the name and parameters against the spec."""
    if not isinstance(op, SyntheticOp):
        op = SyntheticOp(op, ()) if isinstance(op, str) else SyntheticOp(op[0], tuple(op[1:]))
    if op.name not in OPERATIONS:
        raise ValueError(f"`ops` contains the unknown operation {op.name!r}; known: {', '.join(OPERATIONS)}.")
    kinds = OPERATIONS[op.name].params
    params = tuple(int(p) if kind == "k" and str(p).isdigit() else p for kind, p in zip(kinds, op.params))
    if len(op.params) != len(kinds) or any(p not in _DOMAINS[kind] for kind, p in zip(kinds, params)):
        raise ValueError(f"`ops`: invalid parameters {op.params!r} for {op.name!r} (expects {kinds}).")
    if op.name == "replace" and params[0] == params[1]:
        raise ValueError(f"`ops`: `replace` needs two different words, got {params!r}.")
    return SyntheticOp(op.name, params)


def validate_chain(ops: Sequence[OpLike]) -> tuple[SyntheticOp, ...]:
    """
    Check a chain (e.g. `[("reverse",), ("first", 2)]`) against the spec's rules; return it as `SyntheticOp`s.

    Rules: one or two known ops with valid parameters; no repeated op; terminal ops (`count`, `lengths`, `join`)
    only last; `upper` never before `sort`, `remove`, `replace`, `filter_letter`, `append`, `prepend`, `dedup`.
    """
    chain = tuple(_as_op(op) for op in ops)
    names = [op.name for op in chain]
    if not 1 <= len(chain) <= 2:
        raise ValueError(f"`ops` must hold one or two operations, got {len(chain)}.")
    if len(chain) == 2 and names[0] == names[1]:
        raise ValueError(f"`ops` repeats the operation {names[0]!r}.")
    if any(name in TERMINAL_OPS for name in names[:-1]):
        raise ValueError(f"`ops`: terminal operations ({', '.join(sorted(TERMINAL_OPS))}) may only stand last.")
    if names[0] == "upper" and names[-1] in NOT_AFTER_UPPER:
        raise ValueError(f"`ops`: `upper` may not stand before {names[-1]!r}.")
    return chain


def apply_chain(ops: Sequence[OpLike], tokens: Sequence[str]) -> list[str]:
    """
    Apply a chain (checked by [`validate_chain`]) to a list of words, left to right, with the spec's semantics.
    The result may be empty; [`chain_output`] writes the output text.

    Example:

    ```python
    >>> apply_chain([("reverse",), ("first", 2)], ["cat", "dog", "sun"])
    ['sun', 'dog']
    ```
    """
    result = list(tokens)
    for op in validate_chain(ops):
        result = OPERATIONS[op.name].apply(result, *op.params)
    return result


def chain_output(ops: Sequence[OpLike], text: str) -> str:
    """The output text of a chain on an input text: tokens joined by spaces, `none` when empty."""
    return " ".join(apply_chain(ops, text.split())) or "none"


@dataclass(frozen=True)
class SyntheticTask:
    """
    A task of the suite: a validated chain of one or two operations.

    Example:

    ```python
    >>> task = SyntheticTask.from_ops([("reverse",), ("first", 2)])
    >>> task.name, task.chain_type
    ('synth_reverse_then_first_2', 'reverse>first')
    ```
    """

    ops: tuple[SyntheticOp, ...]

    @classmethod
    def from_ops(cls, ops: Sequence[OpLike]) -> "SyntheticTask":
        return cls(validate_chain(ops))

    @property
    def name(self) -> str:
        return "synth_" + "_then_".join(op.slug for op in self.ops)

    @property
    def chain_type(self) -> str:
        return ">".join(op.name for op in self.ops)

    @property
    def definition(self) -> str:
        sentences = [op.sentence for op in self.ops]
        then = [f" Then {s[0].lower()}{s[1:]}" for s in sentences[1:]]
        return DEFINITION_PREFIX + sentences[0] + "".join(then)

    @property
    def min_words(self) -> int:
        """Fewest input words: 3, or k + 1 for the largest `k` of `first`, `last`, `drop_first`, `rotate`."""
        return max([3] + [int(op.params[0]) + 1 for op in self.ops if OPERATIONS[op.name].params == ("k",)])

    def output(self, text: str) -> str:
        return chain_output(self.ops, text)


def _param_space(name: str, words: Sequence[str] = WORDS) -> list[tuple]:
    """Every parameter tuple of an op, word parameters drawn from `words`."""
    if name == "replace":
        return list(itertools.permutations(words, 2))
    domains = [words if kind == "w" else _DOMAINS[kind] for kind in OPERATIONS[name].params]
    return list(itertools.product(*domains))


def _allowed_pairs() -> list[tuple[str, str]]:
    """Every ordered op pair the chain rules allow (held-out chains included)."""
    names = list(OPERATIONS)
    pairs = [(a, b) for a in names for b in names if a != b and a not in TERMINAL_OPS]
    return [(a, b) for a, b in pairs if not (a == "upper" and b in NOT_AFTER_UPPER)]


def _chain_tasks(rng: random.Random, pair: tuple[str, str], words: Sequence[str], count: int) -> list[SyntheticTask]:
    """`count` distinct parameter draws of an op pair (all of them when fewer exist)."""
    space = list(itertools.product(*(_param_space(name, words) for name in pair)))
    draws = rng.sample(space, min(count, len(space)))
    return [SyntheticTask.from_ops([(name, *params) for name, params in zip(pair, draw)]) for draw in draws]


def _train_tasks(rng: random.Random) -> list[SyntheticTask]:
    words = [w for w in WORDS if w not in HELD_OUT_WORDS]
    tasks = []
    for name in OPERATIONS:
        space = _param_space(name, words)
        if name in WORD_PARAM_OPS:
            space = rng.sample(space, TRAIN_REPLACE_PAIRS if name == "replace" else TRAIN_WORDS_PER_OP)
        tasks += [SyntheticTask.from_ops([(name, *params)]) for params in space]
    for pair in _allowed_pairs():
        if pair not in HELD_OUT_CHAINS:
            tasks += _chain_tasks(rng, pair, words, 1)
    return tasks


def _test_tasks(rng: random.Random) -> list[SyntheticTask]:
    tasks = []
    for pair in HELD_OUT_CHAINS:
        tasks += _chain_tasks(rng, pair, WORDS, TEST_DRAWS_PER_CHAIN)
    for name in WORD_PARAM_OPS:
        space = [params for params in _param_space(name) if set(params) & set(HELD_OUT_WORDS)]
        space = rng.sample(space, TEST_REPLACE_PAIRS) if name == "replace" else space
        tasks += [SyntheticTask.from_ops([(name, *params)]) for params in space]
    return tasks


def build_synthetic_tasks(seed: int = 0) -> dict[str, list[SyntheticTask]]:
    """The suite's tasks for `seed`, sorted by name: `{"train": [...], "test": [...]}` (323 and 51 tasks)."""
    rng = random.Random(f"synthetic-suite:{seed}")
    train, test = _train_tasks(rng), _test_tasks(rng)
    return {"train": sorted(train, key=lambda t: t.name), "test": sorted(test, key=lambda t: t.name)}


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
            if (out_dir / top).exists():
                (out_dir / top).rename(staging / f"previous-{top}")
            (staging / top).rename(out_dir / top)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_synthetic_suite(out_dir: str | Path, *, seed: int = 0, instances_per_task: int = 100) -> Path:
    """
    Write the suite for `seed` to `out_dir` as `tasks/<name>.json` and `splits/default/{train,test}_tasks.txt`.

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
    files = {}
    for split, tasks in build_synthetic_tasks(seed).items():
        files[f"splits/default/{split}_tasks.txt"] = "".join(f"{task.name}\n" for task in tasks)
        for task in tasks:
            content = json.dumps(_task_json(task, seed, instances_per_task), indent=1, ensure_ascii=False)
            files[f"tasks/{task.name}.json"] = content + "\n"
    out_dir = Path(out_dir)
    _replace_dirs_atomically(out_dir, files)
    logger.info(f"Wrote the synthetic suite (seed {seed}, {len(files) - 2} tasks) to {out_dir}.")
    return out_dir


def synthetic_corpus(
    seed: int, n: int, *, instance_fraction: float = 0.5, with_instructions: bool = True
) -> list[str]:
    """
    `n` texts for pretraining the stand-in backbone, drawn only from what the spec lets it see.

    Each text is a random sequence of 6 to 24 words of `V` or, with probability `instance_fraction`, an instance of
    a random **train** task of the suite for `seed`, written `"{definition} {input} {output}"` (without the
    definition when `with_instructions=False`). No test task, held-out chain or held-out parameter word occurs.

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
