"""`make benchmark`: reruns every benchmark, then regenerates the results report, the README table and the chart.

    python benchmarks/run_all.py [--quick] [--only quality headline cost memory] [--report-only] [--dry-run]
                                 [--seeds 0 1 2]

1. `quality.py`: the paper's comparisons in miniature on the synthetic suite -> `results/quality.json`, with the
   settings of the committed table: the benchmark scale with 1,000 stage-2 steps per model, both prompt settings,
   the stage-2 learning-rate grid for the two methods it was given to ([`QUALITY_GRID_ONLY`]; the others at the
   settings' rate), one seed unless `--seeds` (trained models under `runs/benchmark/`);
2. `quality.py --headline`: the headline rows -> `results/headline.json` (2,000 stage-2 steps, "Def", one rate;
   its own default seeds unless `--seeds`; the full TAGI model at `runs/benchmark/tagi/`). It runs after step 1
   and reuses its stand-in, FT, teachers and stage-1 models;
3. `cost.py`: FLOPs, wall time, adapter throughput and training cost -> `results/cost.json`;
4. `adapter_memory.py`: peak memory of generating 1,000 vs 10,000 adapters -> `results/adapter_memory.json`;
5. the report: `results/REPORT.md` (every table), the README section between the `benchmark` markers and
   `results/benchmark.png`, all rendered from the JSON files (nothing is typed in by hand). Each step's wall time,
   date, machine and command go to `results/runtimes.json`.

`--dry-run` prints every step's command and the files it writes, and runs nothing ([`plan`]). `--quick` runs tiny
budgets into `benchmarks/results/quick/` (checks the scripts, not the method) and leaves the README alone.
`--report-only` re-renders the report from the JSON files already there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from cost_report import METHOD_LABELS, goals_table, plot_cost, render_markdown  # noqa: E402
from fit_report import fit_table, fit_tables, fit_targets, fmt, stat  # noqa: E402

from tagi_hf.modeling.file_utils import atomic_write_text  # noqa: E402
from tagi_hf.recipes.synthetic import SUITE_VERSION  # noqa: E402

README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
STEPS = ("quality", "headline", "cost", "memory")
# quality.py's benchmark scale (BENCHMARK_SETTINGS), except 1,000 stage-2 steps per model (headline check: 2,000),
# with the stage-2 learning-rate grid given to the two methods the committed table gave it to (its meta:
# stage2_lr_grid_applies_to): 18 stage-2 models (7 hypernetwork methods x 2 prompt settings, + 2 x 2 extra rates).
QUALITY_SET = ["stage2_steps=1000"]
QUALITY_GRID_ONLY = ("tagi-hypernet-l-pred-only", "tagi-without-l-ins")
QUALITY_COLUMNS = ("rougeL", "exact_match", "exact_match_strict")
FT = "multi-task FT, instruction in context (Tk-Instruct analogue)"
STANDIN = "stand-in backbone, instruction in context (instruction-tuned on the train tasks, T0 analogue)"
COPY = "copy the input"
RENAMED = {"backbone, instruction in context (no meta-training)": STANDIN}
"""Labels of older results files, rendered as what the model is: the stand-in was trained on every train instance
with its definition in context (instruction-tuned on the train tasks), not a backbone without meta-training."""


def plan(results: Path, quick: bool = False, seeds: list[int] | None = None, only=STEPS) -> list[dict]:
    """Every step `run_all.py` runs, in order: {"step", "command" (argv after the Python executable), "writes"
    (the results files it regenerates)}. `seeds`: the quality and headline steps' stage-2 (and FT) training seeds
    (`quality.py --seeds`; default: the quality step the settings' seed alone, the headline step its own default)."""
    quick_flag = ["--quick"] if quick else []
    seed_flag = ["--seeds", *map(str, seeds)] if seeds else []
    runs = str(ROOT / "runs" / ("benchmark-quick" if quick else "benchmark"))
    budget = [] if quick else ["--set", *QUALITY_SET, "--grid-only", *QUALITY_GRID_ONLY]
    steps = {
        "quality": ([str(HERE / "quality.py"), *quick_flag, "--results", str(results / "quality.json"), "--out", runs,
                     *budget, *seed_flag], ["quality.json", "test_scorings.jsonl"]),
        "headline": ([str(HERE / "quality.py"), "--headline", *quick_flag, "--results", str(results / "headline.json"),
                      "--out", runs, *seed_flag], ["headline.json", "test_scorings.jsonl"]),
        "cost": ([str(HERE / "cost.py"), *quick_flag, "--out", str(results / "cost.json")], ["cost.json"]),
        "memory": ([str(HERE / "adapter_memory.py"), "--output", str(results / "adapter_memory.json"),
                    *(["--counts", "100", "1000"] if quick else [])], ["adapter_memory.json"]),
    }  # fmt: skip
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        raise ValueError(f"Unknown benchmark step(s) {unknown}; known: {', '.join(STEPS)}.")
    return [{"step": k, "command": steps[k][0], "writes": [str(results / f) for f in steps[k][1]]}
            for k in STEPS if k in only]  # fmt: skip


def run_step(step: str, results: Path, quick: bool, seeds: list[int] | None = None) -> float:
    """Runs one benchmark step ([`plan`]) in a subprocess; returns its wall time in seconds."""
    (entry,) = plan(results, quick, seeds, only=(step,))
    start = time.perf_counter()
    print(f"[benchmark] {step}: {' '.join(entry['command'])}", flush=True)
    subprocess.run([sys.executable, *entry["command"]], check=True, cwd=ROOT)
    return time.perf_counter() - start


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def runtime_entry(seconds: float, command: list[str]) -> dict:
    """What `runtimes.json` keeps of one step's run: wall time, when it finished, the machine, commit and command."""
    import platform

    from tagi_hf.recipes.synthetic import _machine

    machine = _machine()
    return {
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_cores": os.cpu_count(),
        "machine": f"{machine['cpu']}, {platform.machine()}, {machine['device']}",
        "load_average": os.getloadavg(),
        "commit": _commit(),
        "command": " ".join(["python", *(str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c
                                         for c in command)]),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------- quality
def _cells(m: dict | None) -> str:
    """Scores of one method in one setting (mean ± sd over seeds where there are several); `-` where the method
    was not run in that setting."""
    return " | ".join("-" if m is None else fmt(m, k) for k in QUALITY_COLUMNS)


def relabel(q: dict) -> dict:
    """`q` with the method names of older results files replaced by what the models are ([`RENAMED`])."""
    out = dict(q)
    for section in ("methods", "fit", "dev", "stage2_learning_rate"):
        if section in q:
            out[section] = {RENAMED.get(name, name): v for name, v in q[section].items()}
    return out


def _by_kind(m: dict, kind: str) -> dict | None:
    """One held-out kind's scores of an entry, with its per-seed values when it has several seeds."""
    if kind not in m.get("by_kind", {}):
        return None
    seeds = {seed: v["by_kind"][kind] for seed, v in m.get("seeds", {}).items() if kind in v.get("by_kind", {})}
    return m["by_kind"][kind] | ({"seeds": seeds} if seeds else {})


def _all_settings(q: dict) -> list[str]:
    """Every prompt setting any method was run in, in the order they first appear."""
    return list(dict.fromkeys(s for by_setting in q["methods"].values() for s in by_setting))


def quality_tables(q: dict) -> list[str]:
    settings = _all_settings(q)
    lines = [
        "| method | " + " | ".join(f"{s}: ROUGE-L | EM | strict EM" for s in settings) + " |",
        "|---|" + "---:|---:|---:|" * len(settings),
    ]
    for name, by_setting in q["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_cells(by_setting.get(s)) for s in settings) + " |")
    first = {name: by_setting[settings[0]] for name, by_setting in q["methods"].items() if settings[0] in by_setting}
    kinds = sorted({k for m in first.values() for k in m["by_kind"]})
    lines += ["", f"By held-out kind ({settings[0]} setting; ROUGE-L | EM | strict EM):", ""]
    lines += ["| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, m in first.items():
        lines.append(f"| {name} | " + " | ".join(_cells(_by_kind(m, k)).replace(" | ", " / ") for k in kinds) + " |")
    lines += ["", "Instruction sensitivity of TAGI (drop from its own instruction):", ""]
    lines += ["| instruction | setting | ROUGE-L | drop | strict EM | drop |", "|---|---|---:|---:|---:|---:|"]
    for mode, by_setting in q["sensitivity"].items():
        for setting, m in by_setting.items():
            lines.append(
                f"| {mode} | {setting} | {m['rougeL']:.1f} | {m['drop_rougeL']:.1f} | {m['exact_match_strict']:.1f} | "
                f"{m['drop_exact_match_strict']:.1f} |"
            )
    lines += lr_table(q)
    t = q.get("teachers_on_own_tasks")  # results written before the fit rows existed
    if t is not None:
        lines += ["", f"Reference (method 9), per-task LoRA teachers on their own training tasks ({t['note']}, "
                  f"{t['tasks']} tasks): ROUGE-L {t['rougeL']:.1f}, EM {t['exact_match']:.1f}, strict EM "
                  f"{t['exact_match_strict']:.1f}."]  # fmt: skip
    return lines


def lr_summary(q: dict) -> str:
    """One line: the stage-2 learning rates tried and how the evaluated run was picked ("" for older results)."""
    grid = q["meta"].get("stage2_lr_grid")
    if not grid or "stage2_learning_rate" not in q:
        return ""
    applies = q["meta"].get("stage2_lr_grid_applies_to", "every hypernetwork method")
    who = "Hypernetwork methods: each" if isinstance(applies, str) else f"{', '.join(applies)} (the others: one rate)"
    return (f"{who} trained at stage-2 learning rates {', '.join(f'{lr:g}' for lr in grid)} "
            "(same steps); the run with the lowest final training L_pred is evaluated.")  # fmt: skip


def lr_table(q: dict) -> list[str]:
    """Final training L_pred of every stage-2 learning rate tried, per method and setting; the chosen one in bold."""
    chosen = q.get("stage2_learning_rate")
    if not chosen:
        return []
    lines = ["", lr_summary(q), "", "| method | setting | final training L_pred per learning rate | chosen |"]
    lines.append("|---|---|---|---:|")
    for name, by_setting in chosen.items():
        for setting, c in by_setting.items():
            losses = ", ".join(
                f"**{lr}: {v:.3f}**" if float(lr) == c["chosen"] else f"{lr}: {v:.3f}"
                for lr, v in c["final_train_loss_pred"].items()
            )
            lines.append(f"| {name} | {setting} | {losses} | {c['chosen']:g} |")
    return lines


PAPER_GENERATOR = "TAGI, paper's generator (frozen encoder, mean pooling)"


def ordered(q_setting: dict, a: str, b: str, metric: str, margin: float = 0.0) -> tuple[bool, str]:
    """Whether method `a` scores above method `b` + `margin` by more than the spread (the sum of their sds over
    seeds), as (met, measured). One seed gives no spread: no ordering is claimed."""
    ma, sa, na = stat(q_setting[a], metric)
    mb, sb, nb = stat(q_setting[b], metric)
    text = f"{fmt(q_setting[a], metric)} vs {fmt(q_setting[b], metric)}"
    if sa is None or sb is None:
        return False, f"{text} (1 seed: no ordering claimed)"
    gap, spread = ma - mb - margin, sa + sb
    return gap > spread, f"{text}; gap {gap:+.1f}, spread {spread:.1f}"


def generator_targets(q: dict) -> list[tuple[str, bool, str]]:
    """Issue 12's targets that the headline check measures too: TAGI fits its train tasks, depends on the
    instruction (train and test tasks), matches in-context FT on held-out tasks, learns held-out words, and the
    generator beats the paper's. Scores are means over seeds; comparisons between methods are [`ordered`]."""
    out = []
    for setting in _all_settings(q):
        fit = q.get("fit", {}).get("TAGI", {}).get(setting)
        if fit is not None:
            em = stat(fit, "exact_match")[0]
            out.append((f"{setting}: TAGI EM on unseen train instances >= 80", em >= 80, fmt(fit, "exact_match")))
        shuffled_fit = q.get("sensitivity_fit", {}).get("shuffled", {}).get(setting)
        if shuffled_fit is not None:
            drop = shuffled_fit["drop_exact_match"]
            out.append((f"{setting}: shuffled instruction drops TAGI's train-instance EM by >= 50", drop >= 50,
                        f"drop {drop:.1f} (to {shuffled_fit['exact_match']:.1f})"))  # fmt: skip
        shuffled = q.get("sensitivity", {}).get("shuffled", {}).get(setting)
        if shuffled is not None:
            drop = shuffled["drop_rougeL"]
            out.append((f"{setting}: shuffled instruction costs TAGI >= 30 ROUGE-L on test tasks", drop >= 30,
                        f"drop {drop:.1f}"))  # fmt: skip
        m = {name: by_setting[setting] for name, by_setting in q["methods"].items() if setting in by_setting}
        for metric in ("rougeL", "exact_match"):
            met, measured = ordered(m, "TAGI", FT, metric, margin=-1.0)
            out.append((f"{setting}, {metric}: TAGI >= multi-task FT - 1", met, measured))
        word = _by_kind(m["TAGI"], "held-out word")
        if word is not None:
            copy = _by_kind(m[COPY], "held-out word") if COPY in m else None
            beside = "" if copy is None else f" (copying the input: {fmt(copy, 'exact_match')})"
            out.append((f"{setting}: TAGI EM on held-out-word tasks >= 50", stat(word, "exact_match")[0] >= 50,
                        fmt(word, "exact_match") + beside))  # fmt: skip
        if PAPER_GENERATOR in m:
            for metric in ("rougeL", "exact_match"):
                met, measured = ordered(m, "TAGI", PAPER_GENERATOR, metric)
                out.append((f"{setting}, {metric}: the generator beats the paper's", met, measured))
    return out


def quality_targets(q: dict) -> list[tuple[str, bool, str]]:
    """The issues' targets, as (target, met, measured) for every setting (each target once)."""
    hint_name = "hypernet L_pred only (HINT/Hypter analogue)"
    out = fit_targets(q) + generator_targets(q)
    if q["meta"].get("headline"):
        return out  # the headline check trains no ablation and no L_pred-only hypernet
    for setting in _all_settings(q):
        m = {name: by_setting[setting] for name, by_setting in q["methods"].items() if setting in by_setting}
        for metric in ("rougeL", "exact_match"):
            met, measured = ordered(m, "TAGI", hint_name, metric, margin=3.0)
            out.append((f"{setting}, {metric}: TAGI >= L_pred-only hypernet + 3", met, measured))
            ablations = {k: stat(v, metric)[0] for k, v in m.items() if k.startswith("TAGI w/o")}
            if not ablations:
                out.append((f"{setting}, {metric}: ablations", False, "not run in this setting (budget)"))
                continue
            below = [ordered(m, "TAGI", k, metric) for k in ablations]
            one_seed = any(stat(m[k], metric)[1] is None for k in ablations)
            listed = ", ".join(f"{k.removeprefix('TAGI ')} {fmt(m[k], metric)}" for k in ablations)
            listed += " (1 seed: no ordering claimed)" if one_seed else ""
            out.append((f"{setting}, {metric}: every ablation below TAGI", all(met for met, _ in below), listed))
            worst = min(ablations, key=ablations.get)
            above = [ordered(m, k, "TAGI w/o fusion", metric)[0] for k in ablations if k != "TAGI w/o fusion"]
            fusion_most = worst == "TAGI w/o fusion" and all(above)
            seeds_known = stat(m[worst], metric)[1] is not None
            out.append((f"{setting}, {metric}: removing fusion hurts most", fusion_most,
                        f"lowest: {worst}" + ("" if seeds_known else " (1 seed: no ordering claimed)")))  # fmt: skip
        generic = q["sensitivity"].get("generic", {}).get(setting)
        if generic is not None:
            drop = generic["drop_rougeL"]
            out.append((f"{setting}: generic instruction costs TAGI >= 30 ROUGE-L", drop >= 30, f"drop {drop:.1f}"))
    return out


def stage_costs(meta: dict) -> str:
    """One line: the wall time of every stage the run trained (cached stages are not listed), and of every stage
    behind its scores where the results record them (`stage_costs`: each stage's own `stage_cost.json`)."""
    stages = meta.get("stage_seconds") or {}
    line = "Stage wall times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items()) + "."
    line = line if stages else "No stage was trained by this run (all reused)."
    built = meta.get("stage_costs") or {}
    if built:
        line += (
            " Every stage behind these scores, as built (`stage_cost.json`: minutes, finished): "
            + ", ".join(f"{k} {c['seconds'] / 60:.1f} ({c['finished']})" for k, c in built.items())
            + "."
        )
    return line


def headline_section(h: dict, full: bool = True) -> list[str]:
    """The headline check: header, stage costs, test-task tables, fit tables and targets (`full=False`: the
    README's cut, without the per-operation tables)."""
    targets = quality_targets(h)
    table = ["| target | met | measured |", "|---|---|---|"]
    table += [f"| {t} | {'yes' if met else '**no**'} | {measured} |" for t, met, measured in targets]
    tests = quality_tables(h) if full else quality_tables(h)[: len(h["methods"]) + 2]
    fit = fit_tables(h) if full else fit_table(h)
    return [quality_header(h), "", stage_costs(h["meta"]), "", *tests, "", *fit, "", "Targets:", "", *table]


def _names(methods: str | list[str] | None) -> str:
    return "all" if not methods or isinstance(methods, str) else ", ".join(methods)


def _finished(meta: dict) -> str:
    """The text `finished DATE, ` where a run recorded when it finished ("" for results written before it did)."""
    return f"finished {meta['finished']}, " if meta.get("finished") else ""


def quality_header(q: dict) -> str:
    meta = q["meta"]
    stages = meta.get("stage_seconds") or {}
    trained = f"{len(stages)} stages trained in it" if stages else "evaluation only: models from an earlier run"
    merged = "".join(
        f"; {', '.join(m['settings'])} added from a later run (commit {m['commit'][:10]}, "
        f"{_finished(m)}{m['seconds'] / 60:.0f} min, methods: {_names(m['methods'])})"
        for m in meta.get("merged", [])
    )
    steps = meta.get("settings", {}).get("stage2_steps")
    seeds = meta.get("seeds") or [meta.get("settings", {}).get("seed", 0)]
    runs = (f" Stage 2: {steps:,} steps per model" if steps else "") + (
        f"; seeds {', '.join(map(str, seeds))} (mean ± sd over them where a method was trained per seed)."
        if len(seeds) > 1
        else "; one seed (no ordering between methods is claimed)."
    )
    previous = ""
    if meta.get("suite") != SUITE_VERSION:
        previous = (
            f" **Measured on the previous suite**, before its {SUITE_VERSION} revision (docs/synthetic-suite.md, "
            "Refinements: held-out instances that their task changes, no held-out task computing a train task's "
            "function), without the copy and no-instruction rows; not yet retrained."
        )
    return (
        f"Quality on the synthetic suite's held-out test tasks ({meta['device']}, {meta['machine']}; torch "
        f"{meta['torch']}, transformers {meta['transformers']}; commit {meta['commit'][:10]}; "
        f"{_finished(meta)}{meta['seconds'] / 60:.0f} min, {trained}{merged}). Scores x100.{runs}{previous}"
    )


# -------------------------------------------------------------------------------------------------------- memory
def memory_table(m: dict) -> list[str]:
    lines = [
        f"Adapter generation memory ({m['model']}; batch {m['batch_size']}; {m['machine']['cpu_count']} CPU cores):",
        "",
        "| mode | instructions | peak RSS, MB | RSS before, MB | seconds | bytes on disk |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in m["runs"]:
        lines.append(
            f"| {r['mode']} | {r['instructions']:,} | {r['peak_rss_mb']:.0f} | {r['rss_before_generation_mb']:.0f} | "
            f"{r['seconds']:.0f} | {r['bytes_on_disk']:,} |"
        )
    return lines


# -------------------------------------------------------------------------------------------------------- report
def plot(q: dict | None, cost: dict | None, path: Path) -> None:
    """One PNG: quality per method (ROUGE-L and strict EM, first setting) and cost relative to in-context T5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if cost is not None and q is None:
        plot_cost([cost], path)
        return
    panels = 2 if cost is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.8), squeeze=False)
    ax = axes[0][0]
    setting = next(iter(next(iter(q["methods"].values()))))
    names = list(q["methods"])
    for i, (metric, label) in enumerate((("rougeL", "ROUGE-L"), ("exact_match_strict", "strict EM"))):
        ax.barh([j + 0.4 * i for j in range(len(names))], [q["methods"][n][setting][metric] for n in names], 0.4,
                label=label)  # fmt: skip
    ax.set_yticks([j + 0.2 for j in range(len(names))])
    ax.set_yticklabels([n.split(" (")[0] for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"score x100, held-out tasks ({setting})")
    ax.legend(fontsize=8)
    ax.set_title("Quality on the synthetic suite")
    if cost is not None:
        ax = axes[0][1]
        shapes = list(cost["shapes"])
        methods = [m for m in METHOD_LABELS if all(m in r["flops"] for r in cost["shapes"].values())]
        width = 0.8 / len(shapes)
        for i, name in enumerate(shapes):
            flops = cost["shapes"][name]["flops"]
            values = [flops[m]["per_task"] / flops["in_context"]["per_task"] for m in methods]
            ax.barh([j + i * width for j in range(len(methods))], values, width, label=name)
        ax.set_yticks([j + 0.4 - width / 2 for j in range(len(methods))])
        ax.set_yticklabels([METHOD_LABELS[m] for m in methods], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("FLOPs per task of 100 instances / in-context T5")
        ax.legend(fontsize=8)
        ax.set_title("Inference cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


RESULT_COMMIT = {"quality": lambda r: r["meta"].get("commit"), "headline": lambda r: r["meta"].get("commit"),
                 "cost": lambda r: r.get("git_commit")}  # fmt: skip
"""Where a results file records the commit its run ran on."""


def runtimes_line(runtimes: dict[str, dict], results: dict[str, dict | None]) -> str:
    """One line: each step's wall time in its last `run_all.py` run, with its date, machine and commit; a step whose
    results file came from another run (its commit differs) is said to be so; a total only where every step ran at
    one commit (one `make benchmark`). Each run reused the stages already trained: not the cost from a fresh clone."""
    parts = []
    for step in [s for s in STEPS if s in runtimes] + [s for s in runtimes if s not in STEPS]:
        r = runtimes[step]
        quick = " (--quick)" if (results.get(step) or {}).get("meta", results.get(step) or {}).get("quick") else ""
        cores = f"{r['cpu_cores']} CPU cores" if "cpu_cores" in r else None
        commit_at = f"ran at commit {r['commit'][:10]}" if r.get("commit") else None
        where = ", ".join(x for x in (r.get("finished", "date not recorded"), r.get("machine"), cores, commit_at) if x)
        result, commit = results.get(step), r.get("commit")
        other = result is not None and step in RESULT_COMMIT and commit and RESULT_COMMIT[step](result) != commit
        if other:
            where += f"; not the run behind `{step}.json`, see its header"
        parts.append(f"{step}{quick} {r['seconds'] / 60:.0f} min ({where})")
    missing = [s for s in STEPS if s not in runtimes]
    line = "Wall time of the last `run_all.py` run of each step: " + "; ".join(parts)
    line += f"; not yet run by `run_all.py`: {', '.join(missing)}." if missing else "."
    commits = {r.get("commit") for r in runtimes.values()}
    if not missing and len(commits) == 1 and None not in commits:
        line += f" {sum(r['seconds'] for r in runtimes.values()) / 60:.0f} min in all."
    return line + " Each run reused the models already trained under `runs/`: not the cost from a fresh clone."


def render_report(results: Path, runtimes: dict[str, dict] | None = None) -> tuple[str, str]:
    """(full report, README section) from the JSON files under `results`; absent files are reported as such."""
    q, cost, memory = (_load(results / f) for f in ("quality.json", "cost.json", "adapter_memory.json"))
    headline = _load(results / "headline.json")
    q, headline = (None if r is None else relabel(r) for r in (q, headline))
    runtimes = runtimes if runtimes is not None else _load(results / "runtimes.json")
    full, short = ["# Benchmark results", "", "Regenerated by `make benchmark` (`python benchmarks/run_all.py`)."], []
    if runtimes:
        line = runtimes_line(runtimes, {"quality": q, "headline": headline, "cost": cost})
        full.append(line)
        short += [line, ""]
    full.append("")
    if q is not None:
        targets = quality_targets(q)
        table = ["| target | met | measured |", "|---|---|---|"]
        table += [f"| {t} | {'yes' if met else '**no**'} | {measured} |" for t, met, measured in targets]
        full += ["## Quality", "", quality_header(q), ""] + quality_tables(q) + [""] + fit_tables(q)
        full += ["", "Targets:", ""] + table + [""]
        short += [quality_header(q), ""] + quality_tables(q)[: len(q["methods"]) + 2] + [""]
        short += [lr_summary(q), ""] if lr_summary(q) else []
        met = sum(m for _, m, _ in targets)
        short += [f"{met} of {len(targets)} quality targets met; see "
                  "[benchmarks/results/REPORT.md](benchmarks/results/REPORT.md).", ""]  # fmt: skip
    else:
        full += ["## Quality", "", "No `quality.json` yet.", ""]
    if headline is not None:
        full += ["## Headline check (`python benchmarks/quality.py --headline`)", "", *headline_section(headline), ""]
        short += ["Headline check (`python benchmarks/quality.py --headline`):", ""]
        short += [*headline_section(headline, full=False), ""]
    if cost is not None:
        cost_markdown = render_markdown(cost)
        full += ["## Cost", "", cost_markdown, ""]
        rows = goals_table(cost)
        where = cost_markdown.splitlines()[0].removeprefix("Cost benchmark on ")
        short += [f"Cost ({where})", ""] + rows + [""]
    else:
        full += ["## Cost", "", "No `cost.json` yet.", ""]
    if memory is not None:
        full += ["## Memory", ""] + memory_table(memory) + [""]
    short += ["![benchmark chart](benchmarks/results/benchmark.png)"] if (q or cost) else []
    return "\n".join(full), "\n".join(short)


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"`{readme}` has no `{README_START}` ... `{README_END}` markers to fill.")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{README_START}\n{section}\n{README_END}{tail}")
    tmp.replace(readme)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets into results/quick/; README untouched")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="quality: stage-2 and FT training seeds")
    parser.add_argument("--report-only", action="store_true", help="re-render the report from existing JSON")
    parser.add_argument("--dry-run", action="store_true", help="print each step's command and files; run nothing")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    results = args.results or (HERE / "results" / "quick" if args.quick else HERE / "results")
    if args.dry_run:
        for entry in plan(results, args.quick, args.seeds, args.only):
            print(f"{entry['step']}: python {' '.join(entry['command'])}\n    writes {', '.join(entry['writes'])}")
        return
    results.mkdir(parents=True, exist_ok=True)
    runtimes_file = results / "runtimes.json"
    runtimes = _load(runtimes_file) or {}
    if not args.report_only:
        for entry in plan(results, args.quick, args.seeds, args.only):
            seconds = run_step(entry["step"], results, args.quick, args.seeds)
            runtimes[entry["step"]] = runtime_entry(seconds, entry["command"])
            atomic_write_text(runtimes_file, json.dumps(runtimes, indent=1) + "\n")
    full, short = render_report(results, runtimes)
    atomic_write_text(results / "REPORT.md", full + "\n")
    q, cost = _load(results / "quality.json"), _load(results / "cost.json")
    q = None if q is None else relabel(q)
    if q or cost:
        plot(q, cost, results / "benchmark.png")
    if not args.quick and args.results is None:
        update_readme(ROOT / "README.md", short)
    print(full)


if __name__ == "__main__":
    main()
