"""The `tagi-hf` command line: one subcommand per step of the pipeline.

Adding a subcommand: write `_run_<name>(args) -> int` and its flags, as dataclasses whose fields become flags
through `HfArgumentParser` (`Subcommand.arguments`, as the training subcommands in `cli/train.py` do; see
`cli/arguments.py`) or by hand in `_add_<name>_arguments(parser)`, and append a [`Subcommand`] to [`SUBCOMMANDS`]
(bottom of this file). Every subcommand gets `--config FILE.yaml` (keys are flag names, with dashes or underscores;
explicit flags win over the file) and `--help` with defaults shown. Import the modules a run needs inside
`_run_<name>`: the parser is built on every call, for every subcommand. A `ValueError` raised by a run is bad input:
it prints `error: <message>` and exits with code 2, without a traceback.

```
tagi-hf synth --out synthetic-suite --seed 0
tagi-hf evaluate --model runs/tagi --data-dir synthetic-suite --split dev --output dev-metrics.json  # choose settings
tagi-hf evaluate --model runs/tagi --data-dir synthetic-suite --split test --output metrics.json     # report
tagi-hf generate-adapter --model runs/tagi --instruction "Reverse the order of the words." --out reverse-adapter
```
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from .. import __version__
from .arguments import NEGATION_NOTE, HelpFormatter, Subcommand, finish_dataclass_flags, positive_int
from .train import TRAINING_SUBCOMMANDS


# ------------------------------------------------------------------------------------------------- --config YAML
def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--config FILE.yaml` to a subcommand parser (done for every subcommand by [`build_parser`])."""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=None,
        help="YAML file of defaults for this subcommand's flags (keys: flag names, dashes or underscores); "
        "flags given on the command line win.",
    )


def _options_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each flag's action under its name with underscores (`batch_size` for `--batch-size`, aliases included)."""
    return {
        option.removeprefix("--").replace("-", "_"): action
        for action in parser._actions
        if action.dest not in ("help", "config")
        for option in action.option_strings
        if option.startswith("--")
    }


def _config_tokens(parser: argparse.ArgumentParser, path: str, command: str) -> list[str]:
    """The command-line tokens equivalent to a YAML config; placed before the user's own flags, which then win.

    Not `HfArgumentParser.parse_yaml_file`: that fills the dataclasses from the file alone, so flags given on the
    command line could not override it, and it knows neither the dashed keys of the examples' files
    (`max-steps`), the aliases (`batch-size`), nor the flags of the subcommands without dataclasses. As tokens, a
    file's values pass the same types, choices and checks as typed flags."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"`--config` {path}: cannot read it as YAML ({error}).") from error
    if not isinstance(values, dict):
        raise ValueError(
            f"`--config` {path}: expected a mapping of flag names to values, got {type(values).__name__}."
        )
    options = _options_by_key(parser)
    tokens: list[str] = []
    for key, value in values.items():
        action = options.get(str(key).replace("-", "_"))
        if action is None:
            known = ", ".join(sorted(options))
            raise ValueError(f"`--config` {path}: unknown key `{key}` for `tagi-hf {command}` (known: {known}).")
        tokens += _action_tokens(action, value)
    return tokens


def _action_tokens(action: argparse.Action, value: Any) -> list[str]:
    flag = max(action.option_strings, key=len)
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):  # option_strings: ["--x", "--no-x"]
        return [action.option_strings[0] if value else action.option_strings[1]]
    if action.nargs == 0:  # store_true / store_false (`--no-x`): the flag is present or not
        return [flag] if value is True else []
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


# --------------------------------------------------------------------------------------------------------- synth
def _add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="Folder to write tasks/ and splits/default/{train,dev,test}_tasks.txt into."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the suite: same seed, same bytes.")
    parser.add_argument("--instances-per-task", type=positive_int, default=100, help="Instances per task.")


def _run_synth(args: argparse.Namespace) -> int:
    from ..data import write_synthetic_suite

    out = write_synthetic_suite(args.out, seed=args.seed, instances_per_task=args.instances_per_task)
    files = {split: out / "splits" / "default" / f"{split}_tasks.txt" for split in ("train", "dev", "test")}
    counts = ", ".join(f"{len(path.read_text().split())} {split}" for split, path in files.items())
    print(f"Wrote the synthetic suite (seed {args.seed}) to {out}: {counts} tasks.")
    print("Train on train; choose every setting on dev (whole tasks held out of training); report test.")
    return 0


# ------------------------------------------------------------------------------------------------------ evaluate
def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Saved model directory: a TagiModel or a plain T5.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="SNI-layout folder (tasks/*.json, splits/default/*.txt).")
    source.add_argument("--rank-classification", metavar="FILE.jsonl", help="Rank-classification JSONL instead.")
    parser.add_argument(
        "--split", default="test", help="Split to evaluate, e.g. dev or test (needs splits/default/<split>_tasks.txt)."
    )
    parser.add_argument("--setting", default="def", help="Instruction setting: def or def+Kpos (e.g. def+2pos).")
    parser.add_argument(
        "--max-instances-per-task", type=positive_int, default=100, help="First N instances of every task."
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="Instances per forward pass.")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="Generation length limit.")
    parser.add_argument("--num-beams", type=positive_int, default=1, help="1 = greedy decoding (the protocol).")
    parser.add_argument(
        "--instruction-mode",
        default="own",
        choices=("own", "generic", "shuffled", "empty"),
        help="own: the task's instruction. Controls: generic: 'Complete the task.'; shuffled: another task's; empty: "
        "none at all (T5 reads the input alone, as a TAGI student does; TAGI uses the adapter generated from '').",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the shuffled instruction mode.")
    parser.add_argument("--max-source-length", type=positive_int, default=512, help="Tokens kept of an input.")
    parser.add_argument("--device", default=None, help="Device; default: cuda when available, else cpu.")
    parser.add_argument("--output", required=True, metavar="metrics.json", help="Where to write the metrics JSON.")
    parser.add_argument("--predictions-file", metavar="preds.jsonl", help="Where to write one prediction a line.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.runner import evaluate_model, rank_classify_model

    if args.rank_classification is not None:
        result = rank_classify_model(
            args.model, args.rank_classification, batch_size=args.batch_size, output=args.output, device=args.device
        )
        print(f"accuracy {result['accuracy']:.2f} on {result['n']} examples -> {args.output}")
        return 0
    result = evaluate_model(
        args.model,
        args.data_dir,
        split=args.split,
        setting=args.setting,
        max_instances_per_task=args.max_instances_per_task,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        instruction_mode=args.instruction_mode,
        output=args.output,
        predictions_file=args.predictions_file,
        seed=args.seed,
        max_source_length=args.max_source_length,
        device=args.device,
        show_progress=not args.no_progress,
    )
    summary = {k: round(result[k], 2) for k in ("rougeL", "exact_match", "exact_match_strict")}
    print(f"{json.dumps(summary)} on {result['n']} instances of {result['num_tasks']} tasks -> {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------- generate-adapter
def _add_generate_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Saved TagiModel directory (with its tokenizer).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--instruction", help="The task definition (one adapter, written to --out).")
    source.add_argument(
        "--instruction-file",
        help="One definition per line (blank lines skipped), or a .jsonl of {definition, positive_examples}: one "
        "adapter each, in --out/adapter-000, ... with index.json and a card (the layout of `save_adapters`).",
    )
    parser.add_argument("--out", required=True, help="Adapter directory (or folder of adapter directories).")
    parser.add_argument(
        "--setting",
        default="def",
        help="How the text becomes the instruction: def (Tk-Instruct 'Definition: ...', as in training), "
        "def+Kpos (needs a .jsonl with positive_examples), or raw (the text as is).",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="Instructions per generator pass.")
    parser.add_argument("--device", default=None, help="Device; default: cuda when available, else cpu.")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="Also push what --out holds.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    parser.add_argument(
        "--base-model", default=None, help="Hub id of the backbone, when the model was built from a local path."
    )


def _read_instructions(args: argparse.Namespace) -> list[str]:
    """The formatted instructions asked for, in order."""
    from ..data import format_instruction, parse_setting
    from ..modeling.instructions import validate_instructions

    if args.instruction is not None:
        entries = [{"definition": args.instruction}]
    else:
        entries = _instruction_file_entries(Path(args.instruction_file))
    validate_instructions([entry["definition"] for entry in entries])  # before "Definition: " makes them non-empty
    if args.setting == "raw":
        return [entry["definition"] for entry in entries]
    num_pos = parse_setting(args.setting)
    for i, entry in enumerate(entries):
        if num_pos > len(entry.get("positive_examples") or []):
            raise ValueError(
                f"`--setting` {args.setting} needs {num_pos} positive examples; instruction {i} has fewer."
            )
    return [format_instruction(e["definition"], e.get("positive_examples") or [], num_pos) for e in entries]


def _instruction_file_entries(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"`--instruction-file` {path} holds no instruction.")
    if path.suffix != ".jsonl":
        return [{"definition": line.strip()} for line in lines]
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"`--instruction-file` {path}: entry {number} is not valid JSON ({error.msg}).") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("definition"), str):
            raise ValueError(f"`--instruction-file` {path}: entry {number} needs a string `definition`.")
        entries.append(entry)
    return entries


def _run_generate_adapter(args: argparse.Namespace) -> int:
    from ..evaluation.runner import load_for_evaluation
    from ..hub import adapter_model_card, save_adapters

    instructions = _read_instructions(args)
    model, tokenizer, kind = load_for_evaluation(args.model, device=args.device)
    if kind != "tagi":
        raise ValueError(f"`--model` {args.model} is a plain T5; generating adapters needs a TagiModel.")
    if args.push_to_hub is not None:  # refused before anything is generated or written
        from ..hub.push import check_base_model

        try:
            check_base_model(args.base_model or model.config.base_model_name_or_path, "the generated adapters")
        except ValueError as error:
            raise ValueError(f"{error} On the command line: `--base-model REPO_ID`.") from None
    adapters = model.generate_adapter(instructions, tokenizer, batch_size=args.batch_size)
    out = Path(args.out)
    if args.instruction is not None:
        adapters[0].save_pretrained(out, model_card=adapter_model_card(adapters[0]))
        print(f"Wrote the adapter to {out}")
        return _maybe_push(args, out)
    save_adapters(adapters, out, names=[f"adapter-{i:03d}" for i in range(len(adapters))])
    print(f"Wrote {len(adapters)} adapters, index.json and a card to {out}")
    return _maybe_push(args, out)


def _maybe_push(args: argparse.Namespace, out: Path) -> int:
    if args.push_to_hub is None:
        return 0
    from ..hub.push import push_generated

    push_generated(out, args.push_to_hub, base_model_name_or_path=args.base_model, private=args.private or None)
    print(f"Pushed {out} to {args.push_to_hub}")
    return 0


# ------------------------------------------------------------------------------------------------------- parsing
SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "synth",
        "Write the synthetic instruction suite (SNI layout; train, dev and test splits).",
        _add_synth_arguments,
        _run_synth,
    ),
    Subcommand(
        "evaluate",
        "Evaluate a TAGI or T5 model (SNI protocol or rank classification).",
        _add_evaluate_arguments,
        _run_evaluate,
    ),
    Subcommand(
        "generate-adapter",
        "Generate LoRA adapters from instructions with a TagiModel.",
        _add_generate_adapter_arguments,
        _run_generate_adapter,
    ),
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `tagi-hf` parser and each subcommand's parser by name."""
    parser = argparse.ArgumentParser(
        prog="tagi-hf", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # A subcommand's dataclasses become its flags through HfArgumentParser (a plain argparse parser without them).
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=HfArgumentParser)
    parsers = {}
    for command in [*SUBCOMMANDS, *TRAINING_SUBCOMMANDS]:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.help + (f"\n\n{NEGATION_NOTE}" if command.arguments else ""),
            formatter_class=HelpFormatter,
            dataclass_types=command.arguments,
            usage="%(prog)s [options]" if command.arguments else None,  # `--help` lists them
        )
        finish_dataclass_flags(sub, command)
        if command.add_arguments is not None:
            command.add_arguments(sub)
        add_config_argument(sub)
        sub.set_defaults(_run=command.run)
        parsers[command.name] = sub
    return parser, parsers


def _with_config(argv: list[str], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """`argv` with the tokens of the subcommand's `--config` file inserted right after the subcommand's name."""
    position = next((i for i, token in enumerate(argv) if token in parsers), None)
    if position is None:
        return argv
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--config")
    config = peek.parse_known_args(argv[position + 1 :])[0].config
    if config is None:
        return argv
    command = argv[position]
    tokens = _config_tokens(parsers[command], config, command)
    return argv[: position + 1] + tokens + argv[position + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tagi-hf`; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = build_parser()
    try:
        args = parser.parse_args(_with_config(argv, parsers))
        return int(args._run(args) or 0)
    except SystemExit as exit:  # argparse: --help, --version, usage errors
        return exit.code if isinstance(exit.code, int) else 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
