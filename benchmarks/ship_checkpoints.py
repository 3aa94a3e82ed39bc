"""Builds the checkpoints that ship with the project and writes them to `model_cards/<name>/` (issue 25).

    python benchmarks/ship_checkpoints.py standin [--out runs/benchmark]

`standin`: the benchmark's stand-in backbone (the "pretrained T5" of everything synthetic: a small T5 trained from
scratch on random word lists and on every train-task instance with its definition in context, see
`src/tagi_hf/recipes/standin.py`), built by the benchmark's own recipe and settings (`quality.BENCHMARK_SETTINGS`,
the stage `runs/benchmark/backbone` that `benchmarks/quality.py` reuses), then exported as the Hub repository it would
be pushed to: config, safetensors, tokenizer and a model card with its YAML metadata, its cost (from the stage's
`stage_cost.json`: the run that built it) and its scores.

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

from tagi_hf.data import load_sni  # noqa: E402
from tagi_hf.evaluation.fit import summarise_predictions  # noqa: E402
from tagi_hf.evaluation.runner import predict  # noqa: E402
from tagi_hf.modeling.file_utils import atomic_directory  # noqa: E402
from tagi_hf.recipes.synthetic import STAGE_COST, DemoSettings, SyntheticRecipe, standin_provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STANDIN = "tagi-synthetic-standin"
SAMPLE_ROWS = 64  # the fixed sample the fast test rescores (the first fit rows)
MAX_NEW_TOKENS = 32


def score(model, tokenizer, rows, instruction_mode: str) -> dict:
    records = predict(model, tokenizer, rows, kind="t5", setting="def", batch_size=64, max_new_tokens=MAX_NEW_TOKENS,
                      instruction_mode=instruction_mode, show_progress=False)  # fmt: skip
    head = summarise_predictions(records, tokenizer, MAX_NEW_TOKENS)
    return {k: head[k] for k in ("rougeL", "exact_match", "n", "ran_to_limit")}


def copying(rows) -> dict:
    head = copy_scores(rows)
    return {k: head[k] for k in ("rougeL", "exact_match", "n")}


def split_scores(model, tokenizer, rows, *, copy: bool = True) -> dict:
    """The rows of one table: the definition in context, no instruction and (`copy`) copying the input."""
    scores = {
        "definition in context": score(model, tokenizer, rows, "own"),
        "no instruction": score(model, tokenizer, rows, "empty"),
    }
    return scores | ({"copy the input": copying(rows)} if copy else {})


def standin_scores(model, tokenizer, fit_rows, dev_rows) -> dict:
    return {
        "train_tasks_unseen_instances": split_scores(model, tokenizer, fit_rows),
        "dev": split_scores(model, tokenizer, dev_rows),
        "fixed_sample": split_scores(model, tokenizer, fit_rows[:SAMPLE_ROWS], copy=False),
    }


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def ship_standin(settings: DemoSettings, target: Path | None = None) -> Path:
    """Builds (or reuses) the stand-in stage of `settings` and writes its shipped folder to `target` (default:
    `model_cards/tagi-synthetic-standin`)."""
    recipe = SyntheticRecipe(settings)
    stage = recipe.backbone()
    cost_file = stage / STAGE_COST
    if not cost_file.exists():
        raise SystemExit(f"{stage} has no {STAGE_COST} (built by an older version): rebuild it with --overwrite.")
    cost = json.loads(cost_file.read_text())
    tokenizer = AutoTokenizer.from_pretrained(stage)
    fit_rows = list(recipe.fit_rows())
    dev_rows = list(
        load_sni(recipe.data_dir, splits=("dev",), max_test_instances_per_task=settings.eval_instances_per_task)["dev"]
    )

    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = T5ForConditionalGeneration.from_pretrained(stage, dtype=dtype).eval()
        scores[str(dtype).removeprefix("torch.")] = standin_scores(model, tokenizer, fit_rows, dev_rows)
    unchanged = all(
        scores["bfloat16"][part][row] == scores["float32"][part][row]
        for part in ("train_tasks_unseen_instances", "dev")
        for row in ("definition in context", "no instruction")
    )
    dtype = "bfloat16" if unchanged else "float32"
    target = Path(target or ROOT / "model_cards" / STANDIN)
    model = T5ForConditionalGeneration.from_pretrained(stage, dtype=getattr(torch, dtype))
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "command": "python benchmarks/ship_checkpoints.py standin",
            "commit": _commit(),
            **standin_provenance(settings),
            "cost": cost,
            "dtype": dtype,
            "dtype_reason": "bfloat16 leaves every fit and dev score unchanged"
            if unchanged
            else "bfloat16 changed a fit or dev score",
            "scores": scores,
            "sample": {
                "max_new_tokens": MAX_NEW_TOKENS,
                "setting": "def",
                "rows": [dict(r) for r in fit_rows[:SAMPLE_ROWS]],
            },
            "parameters": model.num_parameters(),
        }
        (tmp / "shipped.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(standin_card(meta))
    return target


def _row(name: str, s: dict) -> str:
    return f"| {name} | {s['exact_match']:.1f} | {s['rougeL']:.1f} | {s['n']} |"


def _table(title: str, scores: dict) -> list[str]:
    rows = [_row(name, scores[name]) for name in ("definition in context", "no instruction")]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["standin"])
    parser.add_argument("--out", default="runs/benchmark", help="The benchmark's work folder (stages are reused).")
    args = parser.parse_args()
    print(ship_standin(DemoSettings(out=args.out, **BENCHMARK_SETTINGS)))


if __name__ == "__main__":
    main()
