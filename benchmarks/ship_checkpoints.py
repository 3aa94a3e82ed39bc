"""Builds the checkpoints that ship with the project and writes them to `model_cards/<name>/` (issue 25).

    python benchmarks/ship_checkpoints.py {standin,tagi} [--out runs/benchmark]

`standin`: the benchmark's stand-in backbone (the "pretrained T5" of everything synthetic: a small T5 trained from
scratch on random word lists and on every train-task instance with its definition in context, see
`src/tagi_hf/recipes/standin.py`), built by the benchmark's own recipe and settings (`quality.BENCHMARK_SETTINGS`,
the stage `runs/benchmark/backbone` that `benchmarks/quality.py` reuses), then exported as the Hub repository it would
be pushed to: config, safetensors, tokenizer and a model card with its YAML metadata, its cost (from the stage's
`stage_cost.json`: the run that built it) and its scores.

`tagi`: the benchmark's TAGI model of the "Def" setting (the headline's primary seed), built by the same recipe
from the stand-in stage (multi-task FT, the LoRA teachers, stage 1, stage 2), exported with its tokenizer; its test
scores are quoted from `benchmarks/results/headline.json` when that file scored this very model.

Scores (never the test split): unseen instances of train tasks (the benchmark's fit rows) with the definition in
context, with no instruction, and copying the input; the dev split likewise; and a small fixed sample (`SAMPLE_ROWS`
fit rows) that `tests/test_shipped_checkpoints.py` scores again. The weights ship in bfloat16 only where that leaves
every score of the fit rows and the dev split unchanged, else in float32 (the card says which and why).

A shipped checkpoint changes only through this command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

sys.path.insert(0, str(Path(__file__).parent))
from quality import BENCHMARK_SETTINGS, copy_scores  # noqa: E402

from tagi_hf import TagiModel  # noqa: E402
from tagi_hf.evaluation.fit import summarise_predictions  # noqa: E402
from tagi_hf.evaluation.runner import predict  # noqa: E402
from tagi_hf.modeling.file_utils import atomic_directory  # noqa: E402
from tagi_hf.recipes.synthetic import (  # noqa: E402
    STAGE_COST,
    SUITE_VERSION,
    DemoSettings,
    SyntheticRecipe,
    standin_provenance,
)

ROOT = Path(__file__).resolve().parents[1]
STANDIN = "tagi-synthetic-standin"
TAGI = "tagi-synthetic-def"
SAMPLE_ROWS = 64  # the fixed sample the fast test rescores (the first fit rows)
MAX_NEW_TOKENS = 32


def score(model, tokenizer, rows, instruction_mode: str, kind: str = "t5") -> dict:
    records = predict(model, tokenizer, rows, kind=kind, setting="def", batch_size=64, max_new_tokens=MAX_NEW_TOKENS,
                      instruction_mode=instruction_mode, show_progress=False)  # fmt: skip
    head = summarise_predictions(records, tokenizer, MAX_NEW_TOKENS)
    return {k: head[k] for k in ("rougeL", "exact_match", "n", "ran_to_limit")}


def copying(rows) -> dict:
    head = copy_scores(rows)
    return {k: head[k] for k in ("rougeL", "exact_match", "n")}


STANDIN_ROWS = {"definition in context": "own", "no instruction": "empty"}  # row name: instruction mode
TAGI_ROWS = {"own instruction": "own", "another task's instruction": "shuffled"}


def split_scores(model, tokenizer, rows, *, modes: dict = STANDIN_ROWS, kind: str = "t5", copy: bool = True) -> dict:
    """The rows of one table: one per instruction mode of `modes` and (`copy`) copying the input."""
    scores = {name: score(model, tokenizer, rows, mode, kind) for name, mode in modes.items()}
    return scores | ({"copy the input": copying(rows)} if copy else {})


def checkpoint_scores(model, tokenizer, fit_rows, dev_rows, *, modes: dict = STANDIN_ROWS, kind: str = "t5") -> dict:
    kw = dict(modes=modes, kind=kind)
    return {
        "train_tasks_unseen_instances": split_scores(model, tokenizer, fit_rows, **kw),
        "dev": split_scores(model, tokenizer, dev_rows, **kw),
        "fixed_sample": split_scores(model, tokenizer, fit_rows[:SAMPLE_ROWS], copy=False, **kw),
    }


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def _stage_cost(stage: Path) -> dict:
    cost_file = stage / STAGE_COST
    if not cost_file.exists():
        raise SystemExit(f"{stage} has no {STAGE_COST} (built by an older version): rebuild it with --overwrite.")
    return json.loads(cost_file.read_text())


def _rows(recipe: SyntheticRecipe) -> tuple[list[dict], list[dict]]:
    """The fit rows and the dev rows (never the test split)."""
    return list(recipe.fit_rows()), recipe.heldout_rows("dev")


def _choose_dtype(load, tokenizer, fit_rows, dev_rows, *, modes: dict, kind: str) -> tuple[str, str, dict]:
    """Scores float32 and bfloat16 (`load(dtype)` gives the model); bfloat16 ships only where no fit or dev score
    changes. Returns (dtype, reason, scores by dtype)."""
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load(dtype).eval()
        scores[str(dtype).removeprefix("torch.")] = checkpoint_scores(
            model, tokenizer, fit_rows, dev_rows, modes=modes, kind=kind
        )
    unchanged = all(
        scores["bfloat16"][part][row] == scores["float32"][part][row]
        for part in ("train_tasks_unseen_instances", "dev")
        for row in modes
    )
    reason = "bfloat16 leaves every fit and dev score unchanged" if unchanged else "bfloat16 changed a score"
    return ("bfloat16" if unchanged else "float32"), reason, scores


def _sample(fit_rows: list[dict]) -> dict:
    return {"max_new_tokens": MAX_NEW_TOKENS, "setting": "def", "rows": [dict(r) for r in fit_rows[:SAMPLE_ROWS]]}


def _write_folder(target: Path, model, tokenizer, meta: dict, card: str) -> Path:
    """Writes a shipped folder atomically: weights, tokenizer, `shipped.json` (`meta`) and the model card."""
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "shipped.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
    return target


def ship_standin(settings: DemoSettings, target: Path | None = None) -> Path:
    """Builds (or reuses) the stand-in stage of `settings` and writes its shipped folder to `target` (default:
    `model_cards/tagi-synthetic-standin`)."""
    recipe = SyntheticRecipe(settings)
    stage = recipe.backbone()
    cost = _stage_cost(stage)
    tokenizer = AutoTokenizer.from_pretrained(stage)
    fit_rows, dev_rows = _rows(recipe)
    load = lambda dtype: T5ForConditionalGeneration.from_pretrained(stage, dtype=dtype)  # noqa: E731
    dtype, reason, scores = _choose_dtype(load, tokenizer, fit_rows, dev_rows, modes=STANDIN_ROWS, kind="t5")
    target = Path(target or ROOT / "model_cards" / STANDIN)
    model = load(getattr(torch, dtype))
    meta = {
        "command": "python benchmarks/ship_checkpoints.py standin",
        "kind": "t5",
        "commit": _commit(),
        **standin_provenance(settings),
        "cost": cost,
        "dtype": dtype,
        "dtype_reason": reason,
        "scores": scores,
        "sample": _sample(fit_rows),
        "parameters": model.num_parameters(),
    }
    return _write_folder(target, model, tokenizer, meta, standin_card(meta))


QUICKSTART = f"""from transformers import AutoTokenizer

from tagi_hf import GeneratedAdapter, TagiModel
from tagi_hf.data import format_instruction, format_student_input

model = TagiModel.from_pretrained("model_cards/{TAGI}")  # shipped: the benchmark's TAGI model
tokenizer = AutoTokenizer.from_pretrained("model_cards/{TAGI}")
# A held-out task (a dev task of the suite): no train task does it, only the instruction says what to do.
instruction = format_instruction(
    "In this task you are given a list of words separated by spaces. Write every word in capital letters. "
    "Then remove the first 1 words."
)
adapter = model.generate_adapter(instruction, tokenizer=tokenizer)  # one encoder pass over the instruction
adapter.save_pretrained("caps-adapter")  # a standard PEFT LoRA directory (+ fusion states)
adapter = GeneratedAdapter.from_pretrained("caps-adapter")

inputs = ["pig cat apple", "star moon hill boat"]  # the inputs alone, no instruction
batch = tokenizer([format_student_input(x) for x in inputs], padding=True, return_tensors="pt")
ids = model.generate(**batch, adapter=adapter, max_new_tokens=16)
print(tokenizer.batch_decode(ids, skip_special_tokens=True))
"""
"""The card's usage example: the README's quickstart (tests/test_quickstart.py runs that one)."""

TAGI_STAGES = ("backbone", "baseline", "teachers", "tagi-stage1", "tagi")
"""The stages behind the benchmark's TAGI model ("Def"), in the order the recipe builds them."""


HEADLINE = ROOT / "benchmarks" / "results" / "headline.json"


def ship_tagi(settings: DemoSettings, target: Path | None = None, results: Path | None = HEADLINE) -> Path:
    """Builds (or reuses) the benchmark's TAGI model of the "Def" setting (the headline's primary seed: the stages
    `runs/benchmark/{baseline,teachers,tagi-stage1,tagi}` that `benchmarks/quality.py --headline` reuses) and writes
    its shipped folder to `target` (default: `model_cards/tagi-synthetic-def`). Its test scores are quoted from
    `results` (the headline check's file, when it scored this very model), never scored here."""
    recipe = SyntheticRecipe(settings)
    stage = recipe.tagi("tagi", setting="def", learning_rate=settings.learning_rate)
    costs = {name: _stage_cost(recipe.out / name) for name in TAGI_STAGES}
    tokenizer = AutoTokenizer.from_pretrained(recipe.out / "tokenizer")
    fit_rows, dev_rows = _rows(recipe)
    load = lambda dtype: TagiModel.from_pretrained(stage, dtype=dtype)  # noqa: E731
    dtype, reason, scores = _choose_dtype(load, tokenizer, fit_rows, dev_rows, modes=TAGI_ROWS, kind="tagi")
    test = _headline_test_scores(results, stage) if results is not None else None
    target = Path(target or ROOT / "model_cards" / TAGI)
    model = load(getattr(torch, dtype))
    meta = {
        "command": "python benchmarks/ship_checkpoints.py tagi",
        "kind": "tagi",
        "commit": _commit(),
        **standin_provenance(settings),
        "recipe": {k: getattr(recipe.s, k) for k in TAGI_RECIPE_FIELDS},
        "cost": {"stages": costs, "seconds": sum(c["seconds"] for c in costs.values())},
        "dtype": dtype,
        "dtype_reason": reason,
        "scores": scores,
        "test": test,
        "sample": _sample(fit_rows),
        "parameters": model.num_parameters(),
    }
    return _write_folder(target, model, tokenizer, meta, tagi_card(meta))


TAGI_RECIPE_FIELDS = (
    "baseline_steps teacher_steps teacher_learning_rate stage1_steps stage1_learning_rate stage2_steps learning_rate "
    "lora_rank fusion lambda_kl lambda_ins instruction_encoder instruction_pooling instruction_encoder_learning_rate "
    "examples_per_task"
).split()


def _headline_test_scores(results: Path, stage: Path) -> dict | None:
    """The headline check's test scores of TAGI (this model and its other seeds) and of the rows beside it, when
    `results` exists and scored the model in `stage`."""
    if not results.exists():
        return None
    data = json.loads(results.read_text())
    meta = data["meta"]
    if meta.get("suite") != SUITE_VERSION or Path(meta["settings"]["out"]).resolve() != stage.parent.resolve():
        return None
    rows = {}
    for name, by_setting in data["methods"].items():
        entry = by_setting.get("def")
        if entry is not None:
            seeds = {seed: {k: v[k] for k in ("rougeL", "exact_match")} for seed, v in entry.get("seeds", {}).items()}
            rows[name] = {k: entry[k] for k in ("rougeL", "exact_match", "n")} | {"seeds": seeds}
    shuffled = data["sensitivity"].get("shuffled", {}).get("def")
    if shuffled is not None:
        rows["TAGI (another task's instruction)"] = {k: shuffled[k] for k in ("rougeL", "exact_match", "n")}
    name = results.resolve().relative_to(ROOT) if results.resolve().is_relative_to(ROOT) else results
    return {"results": str(name), "commit": meta["commit"], "finished": meta["finished"],
            "rows": rows}  # fmt: skip


def _row(name: str, s: dict) -> str:
    return f"| {name} | {s['exact_match']:.1f} | {s['rougeL']:.1f} | {s['n']} |"


def _table(title: str, scores: dict, modes: dict = STANDIN_ROWS) -> list[str]:
    rows = [_row(name, scores[name]) for name in modes]
    rows.append(_row("copy the input (no model)", scores["copy the input"]))
    return [title, "", "| input | EM | ROUGE-L | n |", "|---|---:|---:|---:|", *rows, ""]


def standin_card(meta: dict) -> str:
    s = meta["scores"][meta["dtype"]]
    cost, machine = meta["cost"], meta["cost"]["machine"]
    lines = [
        "---",
        "library_name: transformers",
        "license: apache-2.0",
        "pipeline_tag: text2text-generation",
        "tags:",
        "- t5",
        "- tagi",
        "- synthetic",
        "---",
        "",
        f"# {STANDIN}",
        "",
        "The stand-in for a pretrained T5 in everything synthetic in tagi-hf: a small T5 "
        f"({meta['parameters'] / 1e6:.2f} M parameters, d_model {meta['settings']['d_model']}, "
        f"{meta['settings']['num_layers']}+{meta['settings']['num_layers']} layers, a tokenizer of "
        f"{meta['settings']['vocab_size']} pieces trained in code) trained from scratch, as a prefix LM, on random "
        "word lists and on every train-task instance of the synthetic suite (`docs/synthetic-suite.md`, seed "
        f"{meta['settings']['seed']}) with its definition in context. It is therefore **instruction-tuned on the "
        "train tasks** (a T0 analogue), not a plain pretrained LM. TAGI's recipe starts from it as a user starts from "
        "`google/t5-base-lm-adapt`.",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        f'model = AutoModelForSeq2SeqLM.from_pretrained("model_cards/{STANDIN}")',
        f'tokenizer = AutoTokenizer.from_pretrained("model_cards/{STANDIN}")',
        "```",
        "",
        "## How it was built",
        "",
        f"`{meta['command']}` (commit `{meta['commit'][:10]}`), the benchmark's stand-in stage with its settings "
        f"(`benchmarks/quality.py`: {meta['settings']['backbone_steps']:,} steps at batch "
        f"{meta['settings']['batch_size']}, learning rate {meta['settings']['backbone_learning_rate']:g}). "
        f"It took {cost['seconds'] / 60:.1f} min, finished {cost['finished']}, on {machine.get('cpu', '?')}, "
        f"{machine['platform']} "
        f"({machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, {machine['device']}, "
        f"torch {machine['torch']}).",
        "",
        f"Weights in **{meta['dtype']}** ({meta['dtype_reason']}; both are scored below).",
        "",
        "## Scores",
        "",
        "Greedy decoding, at most 32 new tokens, exact match / ROUGE-L (%). Never the test split.",
        "",
        *_table("Unseen instances of train tasks (the benchmark's fit rows):", s["train_tasks_unseen_instances"]),
        *_table("Dev split (held-out tasks, used to choose settings):", s["dev"]),
        f"All dtypes and the fixed sample that `tests/test_shipped_checkpoints.py` rescores (the first "
        f"{len(meta['sample']['rows'])} fit rows, stored there) are in `shipped.json`.",
        "",
    ]
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def tagi_card(meta: dict) -> str:
    s, r, cost = meta["scores"][meta["dtype"]], meta["recipe"], meta["cost"]
    stages = cost["stages"]
    machine = stages["tagi"]["machine"]
    from_standin = cost["seconds"] - stages["backbone"]["seconds"]
    lines = [
        "---",
        "library_name: transformers",
        "license: apache-2.0",
        "pipeline_tag: text2text-generation",
        "tags:",
        "- t5",
        "- tagi",
        "- hypernetwork",
        "- lora",
        "- synthetic",
        "---",
        "",
        f"# {TAGI}",
        "",
        "TAGI (Task Adapters Generation from Instructions; Liao et al., NeurIPS 2024) at toy scale: a hypernetwork "
        "reads a task's instruction and generates a LoRA adapter (plus the instruction fusion) for a frozen small T5, "
        "which then runs the task on inputs given without the instruction. This is the benchmark's TAGI model of the "
        f'"Def" setting (the model behind the headline rows of tagi-hf\'s README), around `{STANDIN}` '
        f"({meta['parameters'] / 1e6:.2f} M parameters in all), meta-trained on the train tasks of the synthetic "
        f"suite (`docs/synthetic-suite.md`, revision {meta['suite']}, seed {meta['settings']['seed']}).",
        "",
        "```python",
        *QUICKSTART.splitlines(),
        "```",
        "",
        "prints `['CAT APPLE', 'MOON HILL BOAT']` (a dev task: never trained on; tagi-hf's README quickstart, run by "
        "its tests).",
        "",
        "`AutoModelForSeq2SeqLM.from_pretrained` loads it too once `tagi_hf` is imported. Instructions are worded as "
        "the suite's definitions are; the model knows only the suite's words and operations.",
        "",
        "## How it was built",
        "",
        f"`{meta['command']}` (commit `{meta['commit'][:10]}`) runs the benchmark's recipe with its settings "
        "(`benchmarks/quality.py`, the stages that `quality.py --headline` reuses): in-context multi-task FT "
        f"({r['baseline_steps']:,} steps, the L_kl teacher), per-task LoRA teachers ({r['teacher_steps']:,} joint "
        f"steps, the L_ins targets), stage 1 ({r['stage1_steps']:,} steps of hypernetwork pretraining) and stage 2 "
        f"({r['stage2_steps']:,} steps at batch {meta['settings']['batch_size']}, L_pred + {r['lambda_kl']:g} L_kl + "
        f"{r['lambda_ins']:g} L_ins, learning rate {r['learning_rate']:g}; generator: a trainable copy of the encoder "
        f"reads the instruction ({r['instruction_encoder']}, {r['instruction_pooling']} pooling), "
        f"{r['examples_per_task']} examples per task per batch, LoRA rank {r['lora_rank']}, fusion {r['fusion']}).",
        "",
        "| stage | time | finished |",
        "|---|---:|---|",
        *(f"| {name} | {_minutes(c['seconds'])} | {c['finished']} |" for name, c in stages.items()),
        f"| **in all** | **{_minutes(cost['seconds'])}** ({_minutes(from_standin)} from the shipped stand-in) | |",
        "",
        f"On {machine.get('cpu', '?')}, {machine['platform']} ({machine['cpu_cores']} cores, "
        f"{machine['torch_threads']} torch thread(s) per stage, {machine['device']}, torch {machine['torch']}); "
        "stages ran one after another or side by side on the two cores, so the sum is CPU time, not wall time.",
        "",
        f"Weights in **{meta['dtype']}** ({meta['dtype_reason']}; both are scored in `shipped.json`).",
        "",
        "## Scores",
        "",
        "Greedy decoding, at most 32 new tokens, exact match / ROUGE-L (%). TAGI sees the instruction only through "
        'the adapter it generates; "another task\'s instruction" gives each task the instruction of another task.',
        "",
        *_table(
            "Unseen instances of train tasks (the benchmark's fit rows):", s["train_tasks_unseen_instances"], TAGI_ROWS
        ),
        *_table("Dev split (held-out tasks, used to choose settings):", s["dev"], TAGI_ROWS),
    ]
    test = meta.get("test")
    if test:
        lines += [
            f"Test split (held-out tasks), quoted from `{test['results']}` (the headline check, commit "
            f"`{test['commit'][:10]}`, finished {test['finished']}; scored once there, not here). Each row is the "
            "first seed's model (for TAGI: this one); the mean over seeds is in tagi-hf's README:",
            "",
            "| model | EM | ROUGE-L | n |",
            "|---|---:|---:|---:|",
            *(_row(name, row) for name, row in test["rows"].items()),
            "",
        ]
    lines += [
        f"The fixed sample that `tests/test_shipped_checkpoints.py` rescores (the first {len(meta['sample']['rows'])} "
        "fit rows) is stored in `shipped.json`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["standin", "tagi"])
    parser.add_argument("--out", default="runs/benchmark", help="The benchmark's work folder (stages are reused).")
    args = parser.parse_args()
    ship = {"standin": ship_standin, "tagi": ship_tagi}[args.what]
    print(ship(DemoSettings(out=args.out, **BENCHMARK_SETTINGS)))


if __name__ == "__main__":
    main()
