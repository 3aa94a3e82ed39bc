"""Many adapters on disk: [`save_adapters`] / [`load_adapters`], and [`generate_adapters_to_disk`], which streams
them to disk batch by batch with bounded memory.

The layout: one PEFT LoRA directory per subfolder with its card, `index.json` and a top card (also what
[`tagi_hf.hub.push_adapters_to_hub`] pushes and [`tagi_hf.hub.push_generated`] reads; `tagi_hf.hub` exports the
two functions). `TagiModel.generate_adapter(instructions)` returns every adapter at once, so memory grows with the
number of instructions; [`generate_adapters_to_disk`] keeps one batch of adapters alive at a time, and per
instruction only its index entry (name, instruction text).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import snapshot_download

from ..modeling.adapter import ADAPTER_CONFIG, GeneratedAdapter
from ..modeling.file_utils import atomic_directory
from ..modeling.instructions import check_instruction
from .cards import adapter_model_card, adapters_model_card

if TYPE_CHECKING:
    from ..modeling.modeling_tagi_base import TagiPreTrainedModel

__all__ = ["generate_adapters_to_disk", "load_adapters", "save_adapters"]

ADAPTERS_INDEX = "index.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_RESERVED_NAMES = {ADAPTERS_INDEX, "README.md", ".gitattributes"}


@dataclass(frozen=True)
class _CardRow:
    """What the top card reads of an adapter, kept instead of the adapter itself (no tensors)."""

    instruction: str
    base_model_name_or_path: str | None
    generator_name_or_path: str | None
    generator_revision: str | None
    has_fusion: bool
    task_type: str


def generate_adapters_to_disk(
    model: TagiPreTrainedModel,
    tokenizer: Any,
    instructions: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    names: Iterable[str] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
) -> Path:
    """
    Generates one adapter per instruction and writes them to `out_dir`, `batch_size` at a time.

    Instructions (and names) are read lazily, so a generator over a large file works; peak memory is that of one
    batch of adapters. `out_dir` appears only once everything is written (atomic rename): a crash leaves the
    previous content, never a partial set.

    Args:
        model ([`TagiPreTrainedModel`]): the generator, of either family (its device is used).
        tokenizer: the model's tokenizer.
        instructions (`Iterable[str]`): formatted instructions (e.g. [`format_instruction`]); none may be empty.
        out_dir (`str` or `os.PathLike`): the folder to write.
        batch_size (`int`, defaults to 64): instructions per generator pass, and adapters held in memory.
        names (`Iterable[str]`, *optional*): subfolder names, one per instruction (default
            `"000-<first words>"`, as [`save_adapters`]).
        repo_id, license (`str`, *optional*): written into the cards, as in [`save_adapters`].

    Returns:
        `Path`: `out_dir`.

    Example:

    ```python
    >>> lines = (line.strip() for line in open("instructions.txt") if line.strip())  # doctest: +SKIP
    >>> generate_adapters_to_disk(model, tokenizer, map(format_instruction, lines), "adapters")  # doctest: +SKIP
    >>> len(load_adapters("adapters"))  # doctest: +SKIP
    10000
    ```
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if isinstance(instructions, str):
        raise ValueError("`instructions` must be an iterable of strings, not one string.")
    rows: dict[str, _CardRow] = {}
    with atomic_directory(out_dir) as tmp:
        for batch in _named_batches(instructions, names, batch_size):
            rows.update(_write_batch(model, tokenizer, batch, tmp, repo_id, license))  # its adapters die on return
        if not rows:
            raise ValueError("`instructions` is empty: there is nothing to generate.")
        _write_index_and_card(tmp, rows, repo_id, license)
    return Path(out_dir)


def _write_index_and_card(
    root: Path, adapters: Mapping[str, GeneratedAdapter | _CardRow], repo_id: str | None, license: str | None
) -> None:
    """`index.json` and the top card of a folder of adapters (`{subfolder name: adapter or its card row}`)."""
    entries = {n: {"subfolder": n, "instruction": a.instruction, "fusion": a.has_fusion} for n, a in adapters.items()}
    text = json.dumps({"adapters": entries}, indent=2, ensure_ascii=False) + "\n"
    (root / ADAPTERS_INDEX).write_text(text, encoding="utf-8")
    adapters_model_card(adapters, repo_id=repo_id, license=license).save(root / "README.md")


def _save_one(adapter: GeneratedAdapter, root: Path, name: str, repo_id: str | None, license: str | None) -> None:
    """One adapter in subfolder `name`, its card pointing at that subfolder of `repo_id`."""
    card = adapter_model_card(adapter, repo_id=repo_id, subfolder=name, license=license)
    adapter.save_pretrained(root / name, model_card=card)


def _write_batch(
    model: TagiPreTrainedModel,
    tokenizer: Any,
    batch: list[tuple[str, str]],
    root: Path,
    repo_id: str | None,
    license: str | None,
) -> dict[str, _CardRow]:
    """Generates one batch and writes each adapter as [`save_adapters`] does; returns the card rows."""
    adapters = model.generate_adapter([text for _, text in batch], tokenizer, batch_size=len(batch))
    rows = {}
    for (name, _), adapter in zip(batch, adapters):
        _save_one(adapter, root, name, repo_id, license)
        rows[name] = _card_row(adapter)
    return rows


def _card_row(adapter: GeneratedAdapter) -> _CardRow:
    return _CardRow(
        instruction=adapter.instruction,
        base_model_name_or_path=adapter.base_model_name_or_path,
        generator_name_or_path=adapter.generator_name_or_path,
        generator_revision=adapter.generator_revision,
        has_fusion=adapter.has_fusion,
        task_type=adapter.task_type,
    )


def _named_batches(
    instructions: Iterable[str], names: Iterable[str] | None, batch_size: int
) -> Iterator[list[tuple[str, str]]]:
    """`[(name, instruction), ...]` batches, checked as they are read (positions count over the whole stream)."""
    texts, given = iter(instructions), None if names is None else iter(names)
    seen: set[str] = set()
    for start in itertools.count(0, batch_size):
        batch = []
        for index, text in enumerate(itertools.islice(texts, batch_size), start):
            check_instruction(text, index)
            name = _default_name(index, text) if given is None else next(given, None)
            batch.append((_check_name(name, index, seen), text))
        if not batch:
            break
        yield batch
    if given is not None and next(given, None) is not None:
        raise ValueError(f"`names` has more entries than the {len(seen)} instructions.")


def _check_name(name: str | None, index: int, seen: set[str]) -> str:
    if name is None:
        raise ValueError(f"`names` ran out at instruction {index}: give one name per instruction.")
    _check_name_format(name)
    if name in seen:
        raise ValueError(f"`names` holds the duplicate {name!r} (instruction {index}).")
    seen.add(name)
    return name


def _check_name_format(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED_NAMES:
        raise ValueError(f"`names` entry {name!r} is not a valid subfolder name (letters, digits, `.`, `_`, `-`).")


def named_adapters(adapters: Sequence[GeneratedAdapter], names: Sequence[str] | None) -> dict[str, GeneratedAdapter]:
    """`{subfolder name: adapter}`, the names checked (default: [`_default_name`])."""
    adapters = list(adapters)
    if not adapters:
        raise ValueError("`adapters` is empty: there is nothing to save or push.")
    names = list(names) if names is not None else [_default_name(i, a.instruction) for i, a in enumerate(adapters)]
    if len(names) != len(adapters):
        raise ValueError(f"`names` has {len(names)} entries for {len(adapters)} adapters.")
    for name in names:
        _check_name_format(name)
    if len(set(names)) != len(names):
        raise ValueError(f"`names` holds duplicates: {sorted({n for n in names if names.count(n) > 1})}.")
    return dict(zip(names, adapters))


def _default_name(index: int, instruction: str | None) -> str:
    """`"003-reverse-the-order-of-words"`: ordered, unique, readable."""
    slug = "-".join(re.findall(r"[a-z0-9]+", (instruction or "").lower())[:6])[:60].strip("-")
    return f"{index:03d}-{slug}" if slug else f"{index:03d}"


def save_adapters(
    adapters: Sequence[GeneratedAdapter],
    save_directory: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Writes many adapters (atomically): one PEFT directory per subfolder, `index.json` and a top card.

    `names` are the subfolders (default: `"000-<first words of the instruction>"`, ...). The layout of
    [`tagi_hf.hub.push.push_adapters_to_hub`]; [`tagi_hf.hub.push.push_generated`] pushes such a directory.
    """
    named = named_adapters(adapters, names)
    with atomic_directory(save_directory) as tmp:
        for name, adapter in named.items():
            _save_one(adapter, tmp, name, repo_id, license)
        _write_index_and_card(tmp, named, repo_id, license)
    return Path(save_directory)


def load_adapters(path_or_repo_id: str | os.PathLike, *, revision: str | None = None) -> dict[str, GeneratedAdapter]:
    """Reads what [`save_adapters`] / [`tagi_hf.hub.push.push_adapters_to_hub`] wrote: `{name: adapter}`, from a
    directory or a Hub repo.

    A directory without `index.json` is read as one adapter per subfolder holding an `adapter_config.json`.
    `revision` (a branch, tag or commit) applies to a Hub repo only.
    """
    root = Path(path_or_repo_id)
    if root.is_dir() and revision is not None:
        raise ValueError(f"`revision` {revision!r} names a version of a Hub repo, but `{root}` is a local directory.")
    if not root.is_dir():
        root = Path(snapshot_download(str(path_or_repo_id), revision=revision))
    if (root / ADAPTERS_INDEX).is_file():
        subfolders = _index_subfolders(json.loads((root / ADAPTERS_INDEX).read_text(encoding="utf-8")))
    else:
        found = sorted(root.glob(f"*/{ADAPTER_CONFIG}"))  # hidden folders: temporary writes cut short, not adapters
        subfolders = {p.parent.name: p.parent.name for p in found if not p.parent.name.startswith(".")}
    if not subfolders:
        raise ValueError(
            f"`{root}` holds no adapters: expected `{ADAPTERS_INDEX}` or subfolders with `{ADAPTER_CONFIG}`."
        )
    return {name: GeneratedAdapter.from_pretrained(root / sub) for name, sub in subfolders.items()}


def _index_subfolders(index: Any) -> dict[str, str]:
    """`{name: subfolder}` of an `index.json` written by [`save_adapters`] (`{"adapters": {name: {"subfolder"}}}`)."""
    if not isinstance(index, dict) or not isinstance(index.get("adapters"), dict):
        raise ValueError(
            f'`{ADAPTERS_INDEX}` is not a `save_adapters` index (`{{"adapters": {{name: {{"subfolder": ...}}}}}}`); '
            "a folder written by an older `tagi-hf generate-adapter` reads after deleting its index.json."
        )
    return {name: entry["subfolder"] for name, entry in index["adapters"].items()}
