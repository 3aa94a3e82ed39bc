"""The operation language of the synthetic suite (contract: `docs/synthetic-suite.md`, Inputs / Operations / Tasks).

A task is a chain of one or two word-list operations with their parameters, applied left to right; this module holds
the vocabulary, the 18 operations, the chain rules, task names and definitions. Which tasks make up the suite and
its splits is [`build_synthetic_tasks`]'s business (`synthetic.py`).
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WORDS = tuple(
    "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat "
    "hill key kite lamp leaf lion map moon nest owl pen pig rain ring rose ship shoe star sun tree".split()
)
TERMINAL_OPS = frozenset({"count", "lengths", "join"})
NOT_AFTER_UPPER = frozenset({"sort", "remove", "replace", "filter_letter", "append", "prepend", "dedup"})
SEPARATORS = {"dash": "-", "plus": "+", "slash": "/"}
LETTERS = tuple(sorted({word[0] for word in WORDS}))
DEFINITION_PREFIX = "In this task you are given a list of words separated by spaces. "


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


def param_space(name: str, words: Sequence[str] = WORDS) -> list[tuple]:
    """Every parameter tuple of an op, word parameters drawn from `words`."""
    if name == "replace":
        return list(itertools.permutations(words, 2))
    domains = [words if kind == "w" else _DOMAINS[kind] for kind in OPERATIONS[name].params]
    return list(itertools.product(*domains))


def allowed_pairs() -> list[tuple[str, str]]:
    """Every ordered op pair the chain rules allow (held-out chains included)."""
    names = list(OPERATIONS)
    pairs = [(a, b) for a in names for b in names if a != b and a not in TERMINAL_OPS]
    return [(a, b) for a, b in pairs if not (a == "upper" and b in NOT_AFTER_UPPER)]
