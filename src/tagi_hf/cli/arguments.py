"""What every `tagi-hf` subcommand module shares: the subcommand record, the help formatter, argument types, and
the flags built from dataclasses.

A subcommand's flags come from dataclasses where it has them ([`Subcommand.arguments`]): `HfArgumentParser` turns
every field into `--field_name` / `--field-name` with its type, default and `help` metadata, as transformers' and
trl's example scripts do, so a new field is a new flag (and a new `--config` key) with no other edit. What it cannot
express is added here by hand, generically: short aliases of long field names (`--batch-size`), the negation
`--no-x` of a boolean field whose default is False, per-subcommand defaults, and a help line (so `--help` shows the
default) for fields without one. Which of several fields is required (`--model` or `--backbone`) is checked by the
dataclass's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Subcommand:
    """A `tagi-hf` subcommand: its name, one-line help, argument builder and runner (returns the exit code).

    `arguments`: dataclasses whose fields become flags (see the module docstring); `add_arguments` adds any further
    flags by hand (or is `None`). `defaults`: this subcommand's defaults of fields, by field name. `aliases`: further
    flags of a field, e.g. `{"--batch-size": "per_device_train_batch_size"}`."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int | None]
    arguments: tuple[type, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each argument's default and keeps the description's line breaks."""


NEGATION_NOTE = "A boolean flag --x takes an optional value (--x false) and has the negation --no-x."


def finish_dataclass_flags(parser: argparse.ArgumentParser, command: Subcommand) -> None:
    """Adds to `parser` (an `HfArgumentParser` built from `command.arguments`) what `HfArgumentParser` leaves out:
    a help line where a field has none, `--no-x` for boolean fields defaulting to False, `command.aliases`, and
    `command.defaults`."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # a field's own flag comes first (HfArgumentParser's `--no_x` after it)
        if action.option_strings:
            actions.setdefault(action.dest, action)
    for dtype in command.arguments:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if not f.init:
                continue
            action = actions[f.name]
            if not action.help:
                action.help = f"`{dtype.__name__}.{f.name}`."
            if _is_bool(hints[f.name]) and f.default is False:
                try:
                    flag = f"--no-{f.name.replace('_', '-')}"
                    parser.add_argument(flag, dest=f.name, action="store_false", help=argparse.SUPPRESS)
                except argparse.ArgumentError:  # a field of that name exists
                    pass
    unknown = set(command.defaults) - set(actions)
    if unknown:
        raise ValueError(f"`{command.name}` defaults name no flag: {sorted(unknown)}")
    parser.set_defaults(**command.defaults)
    for alias, name in command.aliases.items():  # after the defaults: an alias shows none of its own
        target = actions[name]
        parser.add_argument(alias, dest=name, type=target.type, default=argparse.SUPPRESS, help=f"Same as --{name}.")


def _is_bool(hint: Any) -> bool:
    if hint is bool:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and set(typing.get_args(hint)) == {
        bool,
        type(None),
    }


def dataclass_from(args: argparse.Namespace, dtype: type, **overrides: Any) -> Any:
    """An instance of the dataclass `dtype` from the parsed `args` (its fields' values), with `overrides`."""
    names = [f.name for f in dataclasses.fields(dtype) if f.init]
    return dtype(**{**{name: getattr(args, name) for name in names if hasattr(args, name)}, **overrides})


# ----------------------------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def check_positive(owner: str, **values: int | None) -> None:
    """Raises `ValueError` naming the first flag (field names as flags) whose value is given and below 1."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{owner}: `--{name.replace('_', '-')}` must be an integer >= 1, got {value}.")
