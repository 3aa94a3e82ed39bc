"""Tables of how well the benchmark's models fit their training tasks (issue 11), rendered from `quality.json` or
`headline.json`: scores on unseen instances of train tasks, exact match per operation (train and test tasks), and
the fit targets. Used by `run_all.py`; nothing here trains or evaluates."""

from __future__ import annotations

import statistics

FT = "multi-task FT, instruction in context (Tk-Instruct analogue)"
TEACHERS = "per-task LoRA teachers (own task each)"
FIT_TARGETS = {TEACHERS: 90.0, FT: 85.0}  # exact match on unseen instances of train tasks, x100


def stat(m: dict, key: str) -> tuple[float, float | None, int]:
    """(mean, sd, seeds) of a score over the seeds of an entry (`m["seeds"]`: `{seed: scores}`); an entry of one
    seed gives its value, `None` and 1."""
    values = [v[key] for v in m.get("seeds", {}).values() if key in v] or [m[key]]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def fmt(m: dict, key: str) -> str:
    """A score as text: `82.4` for one seed, `82.4 ± 1.3` (mean ± sd) over several."""
    mean, sd, _ = stat(m, key)
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def _settings(q: dict) -> list[str]:
    """Every prompt setting any method was run in, in the order they first appear."""
    return list(dict.fromkeys(s for by_setting in q["methods"].values() for s in by_setting))


def fit_table(q: dict) -> list[str]:
    """Per method (and the teachers): ROUGE-L, EM, strict EM and outputs that ran to the length limit, on unseen
    instances of train tasks, for every prompt setting."""
    settings, meta = _settings(q), q["meta"].get("fit_rows", {})
    lines = [
        f"Fit: unseen instances of train tasks ({meta.get('tasks') or 'all'} train tasks, "
        f"{meta.get('instances_per_task', '?')} instances each; {meta.get('note', '')}).",
        "",
        "| method | " + " | ".join(f"{s}: ROUGE-L | EM | strict EM | ran to limit" for s in settings) + " |",
        "|---|" + "---:|---:|---:|---:|" * len(settings),
    ]
    for name, by_setting in q["fit"].items():
        cells = []
        for s in settings:
            m = by_setting.get(s)
            cells.append(
                "- | - | - | -"
                if m is None
                else f"{fmt(m, 'rougeL')} | {fmt(m, 'exact_match')} | {fmt(m, 'exact_match_strict')} | "
                f"{m['ran_to_limit']}/{m['n']}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def operation_table(rows: dict[str, dict], title: str) -> list[str]:
    """Exact match per operation (rows) and method (columns); `rows`: `{method: summary with by_operation}`."""
    methods = [name for name, m in rows.items() if m.get("by_operation")]
    if not methods:
        return []
    ops = sorted({op for name in methods for op in rows[name]["by_operation"]})
    lines = [title, "", "| operation | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for op in ops:
        cells = [rows[name]["by_operation"].get(op, {}).get("exact_match") for name in methods]
        lines.append(f"| {op} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    return lines


def dev_table(q: dict) -> list[str]:
    """Scores on the dev split (whole train chain types held out from meta-training; where settings are chosen)."""
    if not q.get("dev"):
        return []
    settings = _settings(q)
    lines = ["Dev split (train chain types held out from meta-training, never trained on; settings are chosen here):",
             "", "| method | " + " | ".join(f"{s}: ROUGE-L | EM | strict EM" for s in settings) + " |",
             "|---|" + "---:|---:|---:|" * len(settings)]  # fmt: skip
    for name, by_setting in q["dev"].items():
        cells = [" | ".join(fmt(by_setting[s], k) for k in ("rougeL", "exact_match", "exact_match_strict"))
                 if s in by_setting else "- | - | -" for s in settings]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def fit_tables(q: dict) -> list[str]:
    """Everything about fit for the report: the fit table and EM by operation on train and test tasks."""
    if "fit" not in q:
        return []
    setting = _settings(q)[0]
    fit_rows = {name: by_setting[setting] for name, by_setting in q["fit"].items() if setting in by_setting}
    test_rows = {name: by_setting[setting] for name, by_setting in q["methods"].items()}
    return [
        *fit_table(q),
        "",
        *operation_table(fit_rows, f"Exact match by operation, unseen instances of train tasks ({setting}):"),
        "",
        *operation_table(test_rows, f"Exact match by operation, held-out test tasks ({setting}):"),
        "",
        *dev_table(q),
    ]


def fit_targets(q: dict) -> list[tuple[str, bool, str]]:
    """(target, met, measured): teachers >= 90 EM (once: they do not depend on the prompt setting) and in-context FT
    >= 85 EM on unseen instances of train tasks (mean over seeds), and no prediction of any model running to the
    length limit (train and test tasks)."""
    if "fit" not in q:
        return []
    out = []
    for i, setting in enumerate(_settings(q)):
        for name, target in FIT_TARGETS.items():
            m = q["fit"].get(name, {}).get(setting)
            if name == TEACHERS and i > 0:
                continue  # one target, not one per setting
            if m is not None:
                prefix = "" if name == TEACHERS else f"{setting}: "
                out.append((f"{prefix}{name} EM on unseen train instances >= {target:g}",
                            stat(m, "exact_match")[0] >= target, fmt(m, "exact_match")))  # fmt: skip
        runaway = {name: by[setting]["ran_to_limit"] for name, by in q["fit"].items() if setting in by}
        runaway.update(
            {f"{name} (test)": by[setting]["ran_to_limit"] for name, by in q["methods"].items()
             if setting in by and "ran_to_limit" in by[setting]}
        )  # fmt: skip
        worst = max(runaway, key=runaway.get)
        out.append((f"{setting}: no prediction runs to the length limit", runaway[worst] == 0,
                    f"most: {worst} {runaway[worst]}"))  # fmt: skip
    return out
