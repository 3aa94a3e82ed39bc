"""The paper's comparisons in miniature on the synthetic suite (held-out test tasks, fixed seeds, same backbone).

Methods (issue 4): 1 the stand-in backbone with the instruction in context (it is instruction-tuned on every train
instance with its definition in context: a T0 analogue, not a model without meta-training); 2 multi-task fine-tuning
with the instruction in context (Tk-Instruct analogue); 3 hypernetwork with L_pred only (HINT/Hypter analogue); 4 TAGI;
5-8 TAGI without stage 1 / fusion / L_kl / L_ins; TAGI with the paper's generator (the frozen backbone encoder, one
masked mean for every module) where the default generator differs; 9 the per-task LoRA teachers on their own
training tasks. Each
in the "Def" and "Def + 2 Pos." settings, with ROUGE-L, EM and strict EM overall and on the two held-out kinds,
plus TAGI's instruction sensitivity (a generic instruction, another task's instruction). Beside them in every
table (issue 24): "copy the input" (the prediction is the instance input) and "no instruction" (the stand-in and
multi-task FT with `instruction_mode="empty"`: the instance input alone).

Seeds (issue 24): `--seeds S0 S1 ...` trains stage 2 of every hypernetwork method, and multi-task FT, once per seed
(the stand-in, the LoRA teachers, stage 1 and the suite stay those of the settings' seed; extra seeds reuse the
stage-2 learning rate chosen for the first); the report shows mean ± sd and claims an ordering only where the gap
exceeds the spread. `--headline` defaults to 3 seeds.

Every scoring of the test split is appended to `test_scorings.jsonl` beside the results file (date, commit,
configuration): a committed, append-only record of how often the test split was looked at.

    python benchmarks/quality.py [--quick] [--out runs/benchmark] [--results benchmarks/results/quality.json]
                                 [--stage2-lr-grid 1e-3 3e-4]

Every hypernetwork method (3-8) is trained at each stage-2 learning rate of the grid with the same steps, and the run
whose training L_pred ends lowest (mean over the last logging window; training data only, no test score is looked
at) is evaluated: one shared rate made the L_ins-free methods diverge (gradient norms in the hundreds, empty
outputs), which compared TAGI with a broken baseline. `--grid-only SLUG ...` applies the grid to those methods only
(the others at the settings' rate), when the budget allows no more; the results record which.

Every model is also scored on unseen instances of train tasks (`fit`: instances generated for a train task but never
trained on, a seeded sample of `fit_tasks` tasks), since a model that does not fit its training tasks says nothing
about generalisation; the LoRA teachers are scored there on their own tasks. Exact match is broken down by
operation on both the test tasks and the train tasks.

`--headline` trains and scores only the headline rows (multi-task FT with the instruction in context, the LoRA
teachers, TAGI with the default recipe and with the paper's generator, and the baselines; "Def" setting, one stage-2
learning rate, 3 seeds) into `benchmarks/results/headline.json`.

The fit rows reported here are disjoint from the selection rows that the probes choose settings on
(`SyntheticRecipe.fit_rows`).

What it costs: each results file's header gives its run's wall time, date and machine (`meta`), and every stage it
trained (`meta.stage_seconds`; each stage folder's `stage_cost.json`). Stages already under `--out` are reused, so
the run's own time is not the cost from a fresh clone: `meta.stage_costs` lists every stage behind the scores as
it was built (its `stage_cost.json`, whoever built it), which the README ("What the headline check costs") tables.

Everything trains under `--out` (default `runs/benchmark/`; the full TAGI model of the "Def" setting ends up in
`runs/benchmark/tagi/`, loadable by `tagi-hf evaluate`). Re-running reuses finished stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from tagi_hf.data.synthetic import HELD_OUT_WORDS
from tagi_hf.evaluation.fit import scores_by_operation
from tagi_hf.evaluation.metrics import compute_metrics
from tagi_hf.modeling.file_utils import atomic_write_text
from tagi_hf.recipes.synthetic import STAGE_COST, SUITE_VERSION, DemoSettings, SyntheticRecipe, _machine

SETTINGS = ("def", "def+2pos")
# The benchmark's scale (DemoSettings fields; the demo keeps its own smaller defaults). Chosen by the probes logged in
# benchmarks/results/probes/README.md, on unseen instances of train tasks and on the dev split, never on test.
BENCHMARK_SETTINGS: dict = dict(
    instances_per_task=500,  # fresh data: with 60 per task the in-context model memorised (42 % seen vs 21 % unseen)
    eval_instances_per_task=20,
    d_model=128,
    num_layers=3,
    standin_definition_fraction=1.0,  # T0-like stand-in: every train instance with its definition in context
    standin_boundary_probability=0.9,
    backbone_steps=12000,
    backbone_learning_rate=1e-3,  # 2e-3 stayed on the ~20 % plateau for 9,000 steps, 1e-3 left it by 3,000 (probe log)
    baseline_steps=1500,
    baseline_learning_rate=None,  # in-context FT at the stage-2 rate (the demo's own default differs)
    teacher_steps=27000,  # 16 teachers x 4 examples per batch: ~1,500 steps and ~6,000 examples per teacher (probe t5)
    teacher_learning_rate=2e-3,  # 5e-3 broke long runs (t4), 2e-3 fit best (t5)
    stage1_steps=300,
    stage2_steps=2000,
    batch_size=64,
)
STAGE2_LR_GRID = (1e-3, 3e-4)
HEADLINE_SEEDS = (0, 1, 2)
DEFAULT_RESULTS = "benchmarks/results/quality.json"
TEST_SCORINGS = "test_scorings.jsonl"  # beside the results file
TEACHERS = "per-task LoRA teachers (own task each)"
FT = "multi-task FT, instruction in context (Tk-Instruct analogue)"
STANDIN = "stand-in backbone, instruction in context (instruction-tuned on the train tasks, T0 analogue)"
COPY = "copy the input"
NO_INSTRUCTION = {STANDIN: "stand-in backbone, no instruction", FT: "multi-task FT, no instruction"}
PAPER_GENERATOR = "TAGI, paper's generator (frozen encoder, mean pooling)"
VARIANTS = {  # name: keyword arguments of SyntheticRecipe.tagi (defaults: the full method)
    "hypernet L_pred only (HINT/Hypter analogue)": dict(lambda_kl=0.0, lambda_ins=0.0),
    "TAGI": {},
    PAPER_GENERATOR: dict(generator={"instruction_encoder": "backbone", "instruction_pooling": "mean"}),
    "TAGI w/o stage 1": dict(stage1=False),
    "TAGI w/o fusion": dict(fusion="none"),
    "TAGI w/o L_kl": dict(lambda_kl=0.0),
    "TAGI w/o L_ins": dict(lambda_ins=0.0),
}


def model_slug(name: str) -> str:
    """Folder name of a variant: "TAGI w/o L_kl" -> "tagi-without-l-kl" (one path component)."""
    words = re.sub(r"[^a-z0-9]+", "-", name.split("(")[0].lower().replace("w/o", "without")).strip("-")
    return words if words.startswith("tagi") else f"tagi-{words}"


def held_out_kind(task: str) -> str:
    """The spec's two kinds of test task: a held-out chain, or a single op with a held-out parameter word."""
    parts = task.removeprefix("synth_").split("_")
    single_word_op = parts[0] in ("remove", "replace", "append", "prepend") and "then" not in parts
    return "held-out word" if single_word_op and any(w in parts for w in HELD_OUT_WORDS) else "held-out chain"


def by_kind(metrics: dict) -> dict:
    """Instance-weighted means of the per-task scores over each held-out kind."""
    groups: dict[str, list[dict]] = {}
    for task, scores in metrics["per_task"].items():
        groups.setdefault(held_out_kind(task), []).append(scores)
    out = {}
    for kind, rows in groups.items():
        n = sum(r["n"] for r in rows)
        out[kind] = {k: sum(r[k] * r["n"] for r in rows) / n for k in ("rougeL", "exact_match", "exact_match_strict")}
        out[kind]["n"] = n
    return out


def summarise(metrics: dict) -> dict:
    head = {k: metrics[k] for k in ("rougeL", "exact_match", "exact_match_strict", "n", "ran_to_limit")}
    return {**head, "by_kind": by_kind(metrics), "by_operation": scores_by_operation(metrics["per_category"])}


def final_loss_pred(model_dir: Path) -> float:
    """The last logged training L_pred of a stage-2 run (mean over its last logging window)."""
    log = json.loads((model_dir / "training_log.json").read_text())
    return [entry["loss_pred"] for entry in log if "loss_pred" in entry][-1]


def train_with_lr_grid(
    recipe: SyntheticRecipe, slug: str, suffix: str, setting: str, kwargs: dict, lr_grid: tuple[float, ...]
) -> tuple[Path, dict]:
    """Trains one variant at every stage-2 learning rate of `lr_grid`; returns the run with the lowest final training
    L_pred and `{"chosen": lr, "final_train_loss_pred": {lr: loss}}`. The settings' own rate keeps the plain name."""
    runs = {}
    for lr in lr_grid:
        tag = "" if lr == recipe.s.learning_rate else f"-lr{lr:g}"
        runs[lr] = recipe.tagi(slug + tag + suffix, setting=setting, learning_rate=lr, **kwargs)
    losses = {lr: final_loss_pred(path) for lr, path in runs.items()}
    chosen = min(losses, key=losses.get)
    return runs[chosen], {"chosen": chosen, "final_train_loss_pred": {f"{lr:g}": v for lr, v in losses.items()}}


def copy_scores(rows) -> dict:
    """Scores of copying each row's input as its prediction (`summarise` keys, with per-operation EM)."""
    rows = list(rows)
    metrics = compute_metrics([r["input"] for r in rows], [list(r["outputs"]) for r in rows],
                              tasks=[r["task"] for r in rows], categories=[r["category"] for r in rows])  # fmt: skip
    return summarise(metrics | {"ran_to_limit": 0})


def log_test_scoring(log: Path, entry: dict) -> None:
    """Appends one scoring of the test split to the append-only JSONL `log` (one line, flushed to disk)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return commit + (" (+ local changes)" if dirty.stdout.strip() else "")


class LoggedTestScorer:
    """Scores the test split and logs every scoring (date, commit, configuration) to `log`."""

    def __init__(self, recipe, log: Path, results_path: Path, quick: bool):
        self.recipe, self.log, self.results_path, self.quick = recipe, log, results_path, quick
        self.commit = _commit()

    def __call__(self, name: str, path: Path | None, *, setting: str, instruction_mode: str = "own") -> dict:
        s = self.recipe.s
        if path is None:  # copying the input
            result = copy_scores(self.recipe.heldout_rows("test"))
        else:
            result = summarise(self.recipe.evaluate(path, setting=setting, instruction_mode=instruction_mode))
        log_test_scoring(self.log, {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": self.commit, "suite": SUITE_VERSION, "method": name,
            "model": None if path is None else str(path),
            "setting": setting, "instruction_mode": instruction_mode, "quick": self.quick,
            "results": str(self.results_path), "settings": dataclasses.asdict(s),
            "rougeL": round(result["rougeL"], 2), "exact_match": round(result["exact_match"], 2),
        })  # fmt: skip
        return result


def _head(m: dict) -> dict:
    """What the seed table keeps of one seed's scores."""
    keep = {k: m[k] for k in ("rougeL", "exact_match", "exact_match_strict") if k in m}
    return keep | ({"by_kind": m["by_kind"]} if "by_kind" in m else {})


def run(
    settings: DemoSettings,
    results_path: Path,
    quick: bool = False,
    prompt_settings=SETTINGS,
    lr_grid: tuple[float, ...] = STAGE2_LR_GRID,
    headline: bool = False,
    grid_only: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    primary_seed_only: tuple[str, ...] = (),
) -> dict:
    recipe = SyntheticRecipe(settings)
    seeds = tuple(dict.fromkeys((settings.seed, *(seeds or ()))))  # the settings' seed first: its models are primary
    score_test = LoggedTestScorer(recipe, results_path.parent / TEST_SCORINGS, results_path, quick)
    started = time.time()
    results: dict = {"methods": {}, "fit": {}, "dev": {}, "sensitivity": {}}
    variants = {n: VARIANTS[n] for n in ("TAGI", PAPER_GENERATOR)} if headline else VARIANTS
    variants = {n: kw for n, kw in variants.items() if kw.get("generator", {}) != recipe.generator()}  # no duplicate
    if methods is not None:  # a partial comparison (e.g. a setting whose ablations the budget did not reach)
        variants = {n: kw for n, kw in variants.items() if n == "TAGI" or model_slug(n) in methods}
    used = {"backbone", "teachers"}  # + the stage-1 models and the models scored, below
    fit_copy = copy_scores(recipe.fit_rows())
    fit_copy.pop("by_kind")
    for setting in prompt_settings:
        suffix = "" if setting == "def" else f"-{setting}"
        if settings.stage2_steps != BENCHMARK_SETTINGS["stage2_steps"]:  # e.g. run_all's shorter full comparison
            suffix += f"-{settings.stage2_steps}steps"  # its own folders: never the headline's models
        # name: (model folder or None for copying, instruction mode, {seed: folder} of the extra seeds)
        models = {COPY: (None, "own", {}), STANDIN: (recipe.backbone(), "own", {}),
                  NO_INSTRUCTION[STANDIN]: (recipe.backbone(), "empty", {}),
                  FT: (recipe.baseline(setting), "own", {seed: recipe.baseline(setting, seed) for seed in seeds[1:]}),
                  NO_INSTRUCTION[FT]: (recipe.baseline(setting), "empty", {})}  # fmt: skip
        for name, kwargs in variants.items():
            slug = "tagi" if name == "TAGI" else model_slug(name)
            grid = lr_grid if grid_only is None or slug in grid_only else (settings.learning_rate,)
            path, chosen = train_with_lr_grid(recipe, slug, suffix, setting, kwargs, grid)
            results.setdefault("stage2_learning_rate", {}).setdefault(name, {})[setting] = chosen
            tag = "" if chosen["chosen"] == settings.learning_rate else f"-lr{chosen['chosen']:g}"
            extra_seeds = () if slug in primary_seed_only else seeds[1:]
            extra = {
                seed: recipe.tagi(
                    f"{slug}{tag}{suffix}-seed{seed}",
                    setting=setting,
                    learning_rate=chosen["chosen"],
                    seed=seed,
                    **kwargs,
                )
                for seed in extra_seeds
            }
            models[name] = (path, "own", extra)  # fmt: skip
        for path, _, extra in models.values():
            used |= {p.name for p in (path, *extra.values()) if p is not None}
        used |= {
            recipe.stage1_name(kw.get("fusion"), kw.get("generator"))
            for kw in variants.values()
            if kw.get("stage1", True)
        }
        for name, (path, mode, extra) in models.items():
            test = score_test(name, path, setting=setting, instruction_mode=mode)
            if path is None:
                fit = fit_copy
                dev = copy_scores(recipe.heldout_rows("dev"))
            else:
                fit = recipe.evaluate_fit(path, setting=setting, instruction_mode=mode)
                dev = summarise(recipe.evaluate(path, setting=setting, split="dev", instruction_mode=mode))
            dev.pop("by_kind")  # the test split's two kinds; dev tasks are train-like chains and words
            if extra:  # per-seed scores; the primary seed's full summaries stay the entries themselves
                by_seed = {"test": {seeds[0]: test}, "fit": {seeds[0]: fit}, "dev": {seeds[0]: dev}}
                for seed, seed_path in extra.items():
                    by_seed["test"][seed] = score_test(f"{name} (seed {seed})", seed_path, setting=setting)
                    by_seed["fit"][seed] = recipe.evaluate_fit(seed_path, setting=setting)
                    by_seed["dev"][seed] = summarise(recipe.evaluate(seed_path, setting=setting, split="dev"))
                for part, entry in (("test", test), ("fit", fit), ("dev", dev)):
                    entry["seeds"] = {str(seed): _head(m) for seed, m in by_seed[part].items()}
            results["methods"].setdefault(name, {})[setting] = test
            results["fit"].setdefault(name, {})[setting] = fit
            results["dev"].setdefault(name, {})[setting] = dev
        tagi = models["TAGI"][0]
        own = results["methods"]["TAGI"][setting]
        for mode in ("generic", "shuffled"):
            m = score_test(f"TAGI ({mode} instruction)", tagi, setting=setting, instruction_mode=mode)
            m["drop_rougeL"] = own["rougeL"] - m["rougeL"]
            m["drop_exact_match_strict"] = own["exact_match_strict"] - m["exact_match_strict"]
            results["sensitivity"].setdefault(mode, {})[setting] = m
        fit_own = results["fit"]["TAGI"][setting]  # the control on train tasks: does the fit need the instruction?
        m = recipe.evaluate_fit(tagi, setting=setting, instruction_mode="shuffled")
        m["drop_exact_match"] = fit_own["exact_match"] - m["exact_match"]
        results.setdefault("sensitivity_fit", {}).setdefault("shuffled", {})[setting] = m
    teachers = recipe.evaluate_fit(None)  # each teacher on unseen instances of its own task (method 9)
    results["fit"][TEACHERS] = dict.fromkeys(prompt_settings, teachers)  # the teachers do not depend on the setting
    results["meta"] = _meta(settings, time.time() - started, quick)
    results["meta"]["headline"] = headline
    results["meta"]["suite"] = SUITE_VERSION
    results["meta"]["seeds"] = list(seeds)
    results["meta"]["primary_seed_only"] = list(primary_seed_only)  # methods trained with the first seed alone
    results["meta"]["test_scorings"] = str(score_test.log)
    results["meta"]["fit_rows"] = {
        "tasks": settings.fit_tasks,
        "instances_per_task": settings.eval_instances_per_task,
        "note": f"train-task instances beyond the {settings.instances_per_task} trained on, disjoint from the "
        "selection rows the probes choose settings on",
    }
    results["meta"]["stage_seconds"] = recipe.timings  # stages trained by this invocation (others were cached)
    results["meta"]["stage_costs"] = stage_costs(recipe.out, used)  # every stage behind the scores, whoever built it
    results["meta"]["prompt_settings"] = list(prompt_settings)
    results["meta"]["stage2_lr_grid"] = list(lr_grid)
    results["meta"]["methods"] = "all" if methods is None else ["tagi", *methods]
    results["meta"]["stage2_lr_grid_applies_to"] = (
        "every hypernetwork method" if grid_only is None else list(grid_only)
    )
    atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")
    return results


def stage_costs(out: Path, names: set[str]) -> dict:
    """`{stage: {"seconds", "finished"}}` from the `stage_cost.json` of each stage folder `out/name` that has one: what
    each model behind the scores cost when it was built (by this run or an earlier one)."""
    costs = {}
    for name in sorted(names):
        cost_file = out / name / STAGE_COST
        if cost_file.exists():
            cost = json.loads(cost_file.read_text())
            costs[name] = {"seconds": cost["seconds"], "finished": cost["finished"]}
    return costs


def _meta(settings: DemoSettings, seconds: float, quick: bool = False) -> dict:
    commit = _commit()
    import transformers

    return {
        "settings": dataclasses.asdict(settings),
        "quick": quick,
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{_machine()['cpu']}, {platform.machine()}, {torch.get_num_threads()} threads",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--results", default=DEFAULT_RESULTS)
    parser.add_argument("--quick", action="store_true", help="Tiny budgets: checks the script, not the method.")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="Override DemoSettings fields (recorded)."
    )
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="Prompt settings.")
    parser.add_argument(
        "--stage2-lr-grid", nargs="+", type=float, default=list(STAGE2_LR_GRID),
        help="Stage-2 learning rates tried for every hypernetwork method (lowest final training L_pred is used).",
    )  # fmt: skip
    parser.add_argument(
        "--grid-only", nargs="+", default=None, metavar="SLUG",
        help="Apply --stage2-lr-grid only to these methods (folder names, e.g. tagi-without-l-ins); the others train "
        "at the settings' rate. Recorded in the results.",
    )  # fmt: skip
    parser.add_argument(
        "--methods", nargs="+", default=None, metavar="SLUG",
        help="Only TAGI and these hypernetwork methods (folder names, e.g. tagi-hypernet-l-pred-only); the baselines "
        "always run. Recorded in the results.",
    )  # fmt: skip
    parser.add_argument(
        "--merge-into",
        default=None,
        metavar="JSON",
        help="Also merge this run's settings into an existing results file (e.g. a setting run later, with "
        "--methods, into benchmarks/results/quality.json); the merge is recorded in its meta.",
    )
    parser.add_argument(
        "--headline",
        action="store_true",
        help="Only the baselines, in-context FT, the teachers, TAGI and TAGI with the paper's generator (Def setting, "
        f"one rate, seeds {' '.join(map(str, HEADLINE_SEEDS))} unless --seeds is given).",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None,
        help="Stage-2 (and multi-task FT) training seeds; the settings' seed is always the first (default: it alone).",
    )  # fmt: skip
    parser.add_argument(
        "--primary-seed-only", nargs="+", default=[], metavar="SLUG",
        help="Hypernetwork methods (folder names) trained and scored with the first seed alone, when the budget "
        "allows no more (recorded; their rows show one seed).",
    )  # fmt: skip
    args = parser.parse_args()
    if args.headline:
        args.settings, args.stage2_lr_grid = ["def"], [DemoSettings.learning_rate]
        args.seeds = args.seeds or list(HEADLINE_SEEDS)
        if args.results == DEFAULT_RESULTS:
            args.results = str(Path(DEFAULT_RESULTS).with_name("headline.json"))
    settings = DemoSettings(out=args.out, **BENCHMARK_SETTINGS)
    if args.quick:
        settings = dataclasses.replace(
            settings, instances_per_task=8, eval_instances_per_task=3, d_model=32, backbone_steps=20,
            baseline_steps=10, teacher_steps=5, stage1_steps=5, stage2_steps=10, batch_size=8,
        )  # fmt: skip
    fields = {f.name: f.type for f in dataclasses.fields(DemoSettings)}
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            raise ValueError(f"`--set {item}`: `{key}` is not a DemoSettings field ({', '.join(fields)}).")
        default = getattr(DemoSettings(), key)
        overrides[key] = type(default)(value) if not isinstance(default, bool) else value.lower() == "true"
    settings = dataclasses.replace(settings, **overrides)
    slugs = {"tagi" if n == "TAGI" else model_slug(n) for n in VARIANTS}
    for flag, given in (("--grid-only", args.grid_only), ("--methods", args.methods),
                        ("--primary-seed-only", args.primary_seed_only)):  # fmt: skip
        unknown = sorted(set(given or ()) - slugs)
        if unknown:
            raise ValueError(f"`{flag}`: unknown method folder(s) {unknown}; known: {sorted(slugs)}.")
    grid_only = tuple(args.grid_only) if args.grid_only else None
    methods = tuple(args.methods) if args.methods else None
    results = run(settings, Path(args.results), args.quick, tuple(args.settings), tuple(args.stage2_lr_grid),
                  args.headline, grid_only, methods, tuple(args.seeds or ()),
                  tuple(args.primary_seed_only))  # fmt: skip
    if args.merge_into:
        merge_results(Path(args.merge_into), results, args.results)


def merge_results(target: Path, results: dict, source: str) -> None:
    """Adds `results`' prompt settings to the results file `target`: every per-method, per-setting entry of this
    run replaces or joins the target's; the target's meta records what was merged from where."""
    merged = json.loads(target.read_text())
    for section in ("methods", "fit", "dev", "sensitivity", "sensitivity_fit", "stage2_learning_rate"):
        for name, by_setting in results.get(section, {}).items():
            merged.setdefault(section, {}).setdefault(name, {}).update(by_setting)
    meta = results["meta"]
    merged["meta"].setdefault("merged", []).append(
        {"settings": meta["prompt_settings"], "methods": meta.get("methods"), "commit": meta["commit"],
         "seconds": meta["seconds"], "finished": meta.get("finished"), "stage_seconds": meta.get("stage_seconds"),
         "results": source}
    )  # fmt: skip
    settings = merged["meta"]["prompt_settings"]
    merged["meta"]["prompt_settings"] = list(dict.fromkeys([*settings, *meta["prompt_settings"]]))
    atomic_write_text(target, json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
