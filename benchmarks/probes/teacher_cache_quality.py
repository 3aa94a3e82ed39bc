"""Does stage 2 from a top-k teacher cache train as well as from the live teacher? (dev split and fit only)

    python benchmarks/probes/teacher_cache_quality.py [--top-k 64] [--steps 1000] [--out runs/benchmark]

Trains the recipe's TAGI ("Def", benchmark scale, `--steps` stage-2 steps) with `teacher_logits_top_k=--top-k` into
`<out>/tagi-teacher-top<k>-<steps>steps` (the other stages reused), scores it on the dev split and on unseen instances
of train tasks, and appends one JSON line (beside the live-teacher model of the same steps, `<out>/tagi-<steps>steps`,
scored the same way) to `benchmarks/results/probes/teacher_cache_quality.jsonl`. Never looks at the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import BENCHMARK_SETTINGS, final_loss_pred  # noqa: E402

from tagi_hf.recipes.synthetic import DemoSettings, SyntheticRecipe  # noqa: E402

LOG = Path(__file__).resolve().parents[1] / "results" / "probes" / "teacher_cache_quality.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default="runs/benchmark")
    args = parser.parse_args()
    base = DemoSettings(out=args.out, **{**BENCHMARK_SETTINGS, "stage2_steps": args.steps})
    rows = {}
    for name, k in ((f"tagi-{args.steps}steps", 0), (f"tagi-teacher-top{args.top_k}-{args.steps}steps", args.top_k)):
        recipe = SyntheticRecipe(dataclasses.replace(base, teacher_logits_top_k=k))
        start = time.time()
        path = recipe.tagi(name)
        dev = recipe.evaluate(path, split="dev")
        fit = recipe.evaluate_fit(path, sample="selection")  # never the reported fit rows
        rows[name] = {
            "teacher_logits_top_k": k,
            "dev_rougeL": dev["rougeL"],
            "dev_exact_match": dev["exact_match"],
            "fit_exact_match": fit["exact_match"],
            "final_train_loss_pred": final_loss_pred(path),
            "stage_seconds": recipe.timings,
            "seconds_incl_eval": round(time.time() - start, 1),
        }
        print(json.dumps({name: rows[name]}))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as log:
        log.write(json.dumps({"steps": args.steps, "top_k": args.top_k, "runs": rows}) + "\n")


if __name__ == "__main__":
    main()
