"""The benchmark report is rendered from the results JSON, never typed in: targets, README section, chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fit_report  # noqa: E402
import run_all  # noqa: E402

FT = "multi-task FT, instruction in context (Tk-Instruct analogue)"
HINT = "hypernet L_pred only (HINT/Hypter analogue)"


def _scores(rouge: float, strict: float, sd: float | None = None) -> dict:
    """One method's scores; with `sd`, over 3 seeds at value - sd, value, value + sd (mean value, sd `sd`)."""
    m = {"rougeL": rouge, "exact_match": strict, "exact_match_strict": strict, "n": 10}
    m |= {"by_kind": {"held-out chain": dict(m), "held-out word": dict(m)}}
    if sd is not None:
        m["seeds"] = {}
        for i, d in enumerate((-sd, 0.0, sd)):
            seed = {"rougeL": rouge + d, "exact_match": strict + d, "exact_match_strict": strict + d}
            m["seeds"][str(i)] = seed | {"by_kind": {k: dict(seed) for k in m["by_kind"]}}
    return m


def _quality(
    tagi: float, ft: float, hint: float, ablations: dict[str, float], drop: float, sd: float | None = 0.5
) -> dict:
    methods = {FT: ft, HINT: hint, "TAGI": tagi, **ablations}
    sensitivity = {
        mode: {"def": _scores(tagi - drop, tagi - drop) | {"drop_rougeL": drop, "drop_exact_match_strict": drop}}
        for mode in ("generic", "shuffled")
    }
    return {
        "methods": {name: {"def": _scores(v, v, sd)} for name, v in methods.items()},
        "sensitivity": sensitivity,
        "teachers_on_own_tasks": {
            "rougeL": 99.0,
            "exact_match": 98.0,
            "exact_match_strict": 97.0,
            "n": 5,
            "tasks": 2,
            "note": "held-back instances",
        },  # fmt: skip
        "meta": {
            "device": "cpu",
            "machine": "x86_64, 2 threads",
            "torch": "2",
            "transformers": "5",
            "commit": "0123456789abcdef",
            "seconds": 600.0,
        },  # fmt: skip
    }


def test_targets_met_when_the_ordering_holds():
    ablations = {"TAGI w/o fusion": 50.0, "TAGI w/o stage 1": 70.0, "TAGI w/o L_kl": 75.0, "TAGI w/o L_ins": 78.0}
    targets = run_all.quality_targets(_quality(tagi=80.0, ft=79.0, hint=60.0, ablations=ablations, drop=40.0))
    # shuffled (test), 2 x FT - 1, held-out words; 2 x (hint + 3, ablations, fusion-most), generic
    assert len(targets) == 4 + 7
    assert all(met for _, met, _ in targets), [t for t in targets if not t[1]]
    measured = {t: v for t, _, v in targets}
    assert measured["def, rougeL: TAGI >= multi-task FT - 1"] == "80.0 ± 0.5 vs 79.0 ± 0.5; gap +2.0, spread 1.0"


def test_an_ordering_is_claimed_only_where_the_gap_exceeds_the_spread():
    ablations = {"TAGI w/o fusion": 78.5, "TAGI w/o stage 1": 79.5}
    q = _quality(tagi=80.0, ft=78.5, hint=76.5, ablations=ablations, drop=40.0, sd=1.0)
    targets = {t: (m, v) for t, m, v in run_all.quality_targets(q)}
    assert targets["def, rougeL: TAGI >= multi-task FT - 1"] == (
        True,
        "80.0 ± 1.0 vs 78.5 ± 1.0; gap +2.5, spread 2.0",
    )
    assert targets["def, rougeL: TAGI >= L_pred-only hypernet + 3"] == (
        False, "80.0 ± 1.0 vs 76.5 ± 1.0; gap +0.5, spread 2.0")  # fmt: skip
    assert targets["def, rougeL: every ablation below TAGI"][0] is False  # 79.5 ± 1.0 is within the spread of 80
    assert targets["def, rougeL: removing fusion hurts most"] == (False, "lowest: TAGI w/o fusion")  # 1.0 < 2.0
    one_seed = {t: (m, v) for t, m, v in run_all.quality_targets(_quality(80.0, 70.0, 60.0, ablations, 40.0, None))}
    assert one_seed["def, rougeL: TAGI >= multi-task FT - 1"] == (False, "80.0 vs 70.0 (1 seed: no ordering claimed)")
    assert one_seed["def, rougeL: removing fusion hurts most"] == (
        False, "lowest: TAGI w/o fusion (1 seed: no ordering claimed)")  # fmt: skip
    assert one_seed["def: generic instruction costs TAGI >= 30 ROUGE-L"] == (True, "drop 40.0")  # not an ordering


def test_generator_targets_from_fit_shuffled_fit_and_the_papers_generator():
    q = _quality(tagi=80.0, ft=80.5, hint=60.0, ablations={"TAGI w/o fusion": 50.0}, drop=40.0)
    q["methods"][run_all.PAPER_GENERATOR] = {"def": _scores(75.0, 75.0, 0.5)}
    q["methods"][run_all.COPY] = {"def": _scores(70.0, 51.8)}
    q["fit"] = {"TAGI": {"def": _fit(85.0)}}
    q["sensitivity_fit"] = {"shuffled": {"def": _fit(40.0) | {"drop_exact_match": 45.0}}}
    targets = {t: (m, v) for t, m, v in run_all.generator_targets(q)}
    assert targets == {
        "def: TAGI EM on unseen train instances >= 80": (True, "85.0"),
        "def: shuffled instruction drops TAGI's train-instance EM by >= 50": (False, "drop 45.0 (to 40.0)"),
        "def: shuffled instruction costs TAGI >= 30 ROUGE-L on test tasks": (True, "drop 40.0"),
        "def, rougeL: TAGI >= multi-task FT - 1": (False, "80.0 ± 0.5 vs 80.5 ± 0.5; gap +0.5, spread 1.0"),
        "def, exact_match: TAGI >= multi-task FT - 1": (False, "80.0 ± 0.5 vs 80.5 ± 0.5; gap +0.5, spread 1.0"),
        "def: TAGI EM on held-out-word tasks >= 50": (True, "80.0 ± 0.5 (copying the input: 51.8)"),
        "def, rougeL: the generator beats the paper's": (True, "80.0 ± 0.5 vs 75.0 ± 0.5; gap +5.0, spread 1.0"),
        "def, exact_match: the generator beats the paper's": (True, "80.0 ± 0.5 vs 75.0 ± 0.5; gap +5.0, spread 1.0"),
    }


def test_targets_missed_are_reported_as_missed():
    ablations = {"TAGI w/o fusion": 79.0, "TAGI w/o stage 1": 81.0, "TAGI w/o L_kl": 75.0, "TAGI w/o L_ins": 78.0}
    targets = dict(
        (name, (met, measured))
        for name, met, measured in run_all.quality_targets(
            _quality(tagi=80.0, ft=81.5, hint=80.0, ablations=ablations, drop=29.0, sd=0.1)
        )
    )
    assert targets["def, rougeL: TAGI >= multi-task FT - 1"] == (
        False,
        "80.0 ± 0.1 vs 81.5 ± 0.1; gap -0.5, spread 0.2",
    )
    assert targets["def, rougeL: TAGI >= L_pred-only hypernet + 3"] == (
        False, "80.0 ± 0.1 vs 80.0 ± 0.1; gap -3.0, spread 0.2")  # fmt: skip
    assert targets["def, rougeL: every ablation below TAGI"][0] is False  # w/o stage 1 scored 81
    assert targets["def, rougeL: removing fusion hurts most"] == (False, "lowest: TAGI w/o L_kl")
    assert targets["def: generic instruction costs TAGI >= 30 ROUGE-L"] == (False, "drop 29.0")
    assert targets["def: shuffled instruction costs TAGI >= 30 ROUGE-L on test tasks"] == (False, "drop 29.0")


def test_report_and_readme_section_render_from_the_json(tmp_path):
    ablations = {"TAGI w/o fusion": 50.0, "TAGI w/o stage 1": 70.0, "TAGI w/o L_kl": 75.0, "TAGI w/o L_ins": 78.0}
    (tmp_path / "quality.json").write_text(json.dumps(_quality(80.0, 79.0, 60.0, ablations, 40.0)))
    full, short = run_all.render_report(tmp_path, {"quality": {"seconds": 125.0, "cpu_cores": 2}})
    row = "| TAGI | 80.0 ± 0.5 | 80.0 ± 0.5 | 80.0 ± 0.5 |"
    assert row in full and row in short
    assert "| TAGI | 80.0 ± 0.5 / 80.0 ± 0.5 / 80.0 ± 0.5 | 80.0 ± 0.5 / 80.0 ± 0.5 / 80.0 ± 0.5 |" in full  # by kind
    assert "11 of 11 quality targets met" in short
    assert (
        "quality 2 min (date not recorded, 2 CPU cores); not yet run by `run_all.py`: headline, cost, memory." in full
    )
    assert "in all" not in full and "No `cost.json` yet." in full
    run_all.plot(json.loads((tmp_path / "quality.json").read_text()), None, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{run_all.README_START}\nold\n{run_all.README_END}\n\n## after\n")
    run_all.update_readme(readme, short)
    text = readme.read_text()
    assert "old" not in text and short in text and text.endswith("## after\n")
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="benchmark:start"):
        run_all.update_readme(readme, short)


def test_committed_readme_section_matches_the_committed_results():
    """The README's benchmark section is what `run_all.py --report-only` renders from benchmarks/results/."""
    results = ROOT / "benchmarks" / "results"
    if not (results / "quality.json").exists() and not (results / "cost.json").exists():
        pytest.skip("no benchmark results committed yet")
    _, short = run_all.render_report(results)
    text = (ROOT / "README.md").read_text()
    section = text.split(run_all.README_START, 1)[1].split(run_all.README_END, 1)[0]
    assert section.strip() == short.strip()


def test_variant_folders_are_distinct_single_path_components():
    import quality

    slugs = [quality.model_slug(name) for name in quality.VARIANTS if name != "TAGI"]
    assert slugs == ["tagi-hypernet-l-pred-only", "tagi-paper-s-generator", "tagi-without-stage-1",
                     "tagi-without-fusion", "tagi-without-l-kl", "tagi-without-l-ins"]  # fmt: skip
    assert all("/" not in s for s in slugs) and len(set(slugs)) == len(slugs)


def test_learning_rate_selection_is_reported_from_the_json(tmp_path):
    ablations = {"TAGI w/o fusion": 50.0, "TAGI w/o stage 1": 70.0, "TAGI w/o L_kl": 75.0, "TAGI w/o L_ins": 78.0}
    q = _quality(80.0, 80.5, 60.0, ablations, 40.0)
    q["meta"]["stage2_lr_grid"] = [1e-3, 3e-4]
    q["stage2_learning_rate"] = {
        HINT: {"def": {"chosen": 3e-4, "final_train_loss_pred": {"0.001": 3.27, "0.0003": 1.97}}}
    }
    (tmp_path / "quality.json").write_text(json.dumps(q))
    full, short = run_all.render_report(tmp_path, {})
    assert f"| {HINT} | def | 0.001: 3.270, **0.0003: 1.970** | 0.0003 |" in full
    assert "stage-2 learning rates 0.001, 0.0003 (same steps)" in short
    del q["stage2_learning_rate"]  # results written before the grid existed render without the line
    (tmp_path / "quality.json").write_text(json.dumps(q))
    assert "stage-2 learning rates" not in run_all.render_report(tmp_path, {})[1]


def test_lowest_final_training_loss_picks_the_learning_rate(tmp_path):
    import quality

    class Recipe:  # stands in for SyntheticRecipe: "trains" by writing a training log
        s = type("S", (), {"learning_rate": 1e-3})()

        def tagi(self, name, *, setting, learning_rate, **kwargs):
            path = tmp_path / name
            path.mkdir()
            loss = {1e-3: 3.2, 3e-4: 1.9}[learning_rate]
            log = [{"step": 100, "loss_pred": 9.0}, {"step": 200, "loss_pred": loss}, {"step": 200}]
            (path / "training_log.json").write_text(json.dumps(log))
            return path

    path, chosen = quality.train_with_lr_grid(Recipe(), "tagi", "-def+2pos", "def+2pos", {}, (1e-3, 3e-4))
    assert path == tmp_path / "tagi-lr0.0003-def+2pos"
    assert chosen == {"chosen": 3e-4, "final_train_loss_pred": {"0.001": 3.2, "0.0003": 1.9}}


def _fit(em: float, ran: int = 0) -> dict:
    by_op = {"reverse": {"exact_match": em - 10, "n": 4}, "sort": {"exact_match": em, "n": 6}}
    return {"rougeL": em + 5, "exact_match": em, "exact_match_strict": em, "n": 10, "ran_to_limit": ran,
            "by_operation": by_op}  # fmt: skip


def _headline(teachers: float, ft: float, tagi: float, ran: int) -> dict:
    q = _quality(tagi=tagi, ft=ft, hint=0.0, ablations={}, drop=40.0)
    q["methods"] = {name: q["methods"][name] for name in (FT, "TAGI")}
    for name in q["methods"]:
        q["methods"][name]["def"] |= {"ran_to_limit": 0, "by_operation": _fit(50.0)["by_operation"]}
    q["fit"] = {FT: {"def": _fit(ft)}, "TAGI": {"def": _fit(tagi, ran)}, fit_report.TEACHERS: {"def": _fit(teachers)}}
    q["meta"] |= {"headline": True, "fit_rows": {"tasks": 60, "instances_per_task": 20, "note": "beyond the 500"}}
    q["dev"] = {FT: {"def": _fit(70.0)}, "TAGI": {"def": _fit(40.0)}}
    del q["teachers_on_own_tasks"]
    return q


def test_fit_targets_are_rendered_met_and_missed_from_the_json(tmp_path):
    met = dict((t, (m, v)) for t, m, v in run_all.quality_targets(_headline(92.0, 86.0, 80.0, 0)))
    fit_only = {t: v for t, v in met.items() if "TAGI" not in t or "length limit" in t}
    assert fit_only == {
        f"{fit_report.TEACHERS} EM on unseen train instances >= 90": (True, "92.0"),
        f"def: {FT} EM on unseen train instances >= 85": (True, "86.0"),
        "def: no prediction runs to the length limit": (True, f"most: {FT} 0"),
    }  # the headline check has no ablation: the fit targets and the generator's
    assert met["def: TAGI EM on unseen train instances >= 80"] == (True, "80.0")
    missed = {t: m for t, m, _ in run_all.quality_targets(_headline(89.9, 84.0, 79.0, 3)) if "FT - 1" not in t}
    assert [t for t, m in missed.items() if m] == ["def: shuffled instruction costs TAGI >= 30 ROUGE-L on test tasks",
                                                   "def: TAGI EM on held-out-word tasks >= 50"]  # fmt: skip
    (tmp_path / "headline.json").write_text(json.dumps(_headline(92.0, 86.0, 80.0, 3)))
    full, short = run_all.render_report(tmp_path, {})
    assert "| TAGI | 85.0 | 80.0 | 80.0 | 3/10 |" in full and "| TAGI | 85.0 | 80.0 | 80.0 | 3/10 |" in short
    assert "| reverse | 76.0 | 70.0 | 82.0 |" in full  # EM by operation: FT, TAGI, teachers (fit rows)
    assert "| no prediction runs to the length limit | **no** | most: TAGI 3 |" not in full
    assert "| def: no prediction runs to the length limit | **no** | most: TAGI 3 |" in full
    assert "Dev split" in full and "| TAGI | 45.0 | 40.0 | 40.0 |" in full


def test_copy_baseline_scores_the_input_as_prediction():
    import quality

    rows = [
        {"task": "synth_remove_owl", "category": "Synthetic -> remove", "input": "cat dog", "outputs": ["cat dog"]},
        {"task": "synth_sort_then_first_2", "category": "Synthetic -> sort>first", "input": "dog cat sun",
         "outputs": ["cat dog"]},
    ]  # fmt: skip
    m = quality.copy_scores(rows)
    assert (m["exact_match"], m["n"], m["ran_to_limit"]) == (50.0, 2, 0)
    assert m["by_kind"]["held-out word"]["exact_match"] == 100.0 and m["by_kind"]["held-out chain"]["exact_match"] == 0
    assert m["by_operation"] == {"first": {"exact_match": 0.0, "n": 1}, "remove": {"exact_match": 100.0, "n": 1},
                                 "sort": {"exact_match": 0.0, "n": 1}}  # fmt: skip


def test_every_test_scoring_is_appended_to_the_log(tmp_path):
    import quality

    log = tmp_path / "results" / "test_scorings.jsonl"
    quality.log_test_scoring(log, {"method": "TAGI", "setting": "def"})
    quality.log_test_scoring(log, {"method": "copy the input", "setting": "def"})
    assert [json.loads(line)["method"] for line in log.read_text().splitlines()] == ["TAGI", "copy the input"]


def test_old_results_render_the_stand_in_as_what_it_is_and_say_they_are_from_the_previous_suite(tmp_path):
    q = _quality(80.0, 79.0, 60.0, {}, 40.0)
    old = "backbone, instruction in context (no meta-training)"
    q["methods"][old] = {"def": _scores(85.8, 69.5)}
    (tmp_path / "quality.json").write_text(json.dumps(q))
    full, short = run_all.render_report(tmp_path, {})
    assert old not in full and f"| {run_all.STANDIN} | 85.8 | 69.5 | 69.5 |" in short
    assert "**Measured on the previous suite**" in short and "not yet retrained" in short
    q["meta"] |= {"suite": run_all.SUITE_VERSION, "seeds": [0, 1, 2], "settings": {"stage2_steps": 2000}}
    (tmp_path / "quality.json").write_text(json.dumps(q))
    short = run_all.render_report(tmp_path, {})[1]
    assert "previous suite" not in short
    assert "Stage 2: 2,000 steps per model; seeds 0, 1, 2 (mean ± sd over them" in short


def test_the_teachers_fit_target_is_counted_once_over_the_settings():
    q = _headline(92.0, 86.0, 80.0, 0)
    for section in ("methods", "fit"):
        for by_setting in q[section].values():
            by_setting["def+2pos"] = by_setting["def"]
    teachers = [t for t, _, _ in fit_report.fit_targets(q) if fit_report.TEACHERS in t]
    assert teachers == [f"{fit_report.TEACHERS} EM on unseen train instances >= 90"]
    ft = [t for t, _, _ in fit_report.fit_targets(q) if t.endswith(">= 85")]
    assert len(ft) == 2  # FT depends on the setting: one target each


def test_run_all_passes_the_seeds_to_the_quality_step(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(run_all.subprocess, "run", lambda command, **kwargs: commands.append(command))
    run_all.run_step("quality", tmp_path, quick=False, seeds=[0, 1, 2])
    run_all.run_step("quality", tmp_path, quick=True)
    run_all.run_step("headline", tmp_path, quick=False, seeds=[0, 1, 2])
    assert commands[0][-4:] == ["--seeds", "0", "1", "2"] and commands[2][-4:] == ["--seeds", "0", "1", "2"]
    assert "--seeds" not in commands[1] and "--quick" in commands[1]


def test_run_all_plan_regenerates_every_results_file_with_the_committed_settings(tmp_path):
    steps = {entry["step"]: entry for entry in run_all.plan(tmp_path)}
    assert list(steps) == ["quality", "headline", "cost", "memory"]
    written = {Path(f).name for entry in steps.values() for f in entry["writes"]}
    assert written == {"quality.json", "headline.json", "test_scorings.jsonl", "cost.json", "adapter_memory.json"}
    quality, headline = steps["quality"]["command"], steps["headline"]["command"]
    assert quality[quality.index("--set") + 1] == "stage2_steps=1000"
    grid_only = quality[quality.index("--grid-only") + 1 :]
    assert grid_only == ["tagi-hypernet-l-pred-only", "tagi-without-l-ins"]
    committed = json.loads((ROOT / "benchmarks" / "results" / "quality.json").read_text())["meta"]
    assert committed["stage2_lr_grid_applies_to"] == grid_only and committed["settings"]["stage2_steps"] == 1000
    assert "--headline" in headline and "--set" not in headline and "--seeds" not in headline
    assert headline[headline.index("--results") + 1] == str(tmp_path / "headline.json")
    assert [e["step"] for e in run_all.plan(tmp_path, only=("memory", "headline"))] == ["headline", "memory"]
    entry = run_all.runtime_entry(12.34, steps["quality"]["command"])
    assert entry["seconds"] == 12.3 and entry["command"].startswith("python benchmarks/quality.py --results ")
    assert entry["finished"].endswith(" UTC") and entry["cpu_cores"] >= 1 and entry["machine"]
    with pytest.raises(ValueError, match=r"Unknown benchmark step\(s\) \['plots'\]"):
        run_all.plan(tmp_path, only=("plots",))


def test_run_all_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run ran a step")

    monkeypatch.setattr(run_all.subprocess, "run", refuse)
    run_all.main(["--dry-run", "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "headline: python " in out and f"writes {tmp_path / 'r' / 'headline.json'}" in out
    assert not (tmp_path / "r").exists()


def test_runtimes_line_gives_dates_and_sums_only_one_run():
    entry = {
        "seconds": 600.0,
        "cpu_cores": 2,
        "finished": "2026-12-07 10:00 UTC",
        "machine": "Xeon",
        "commit": "a" * 40,
    }
    one_run = {step: entry for step in run_all.STEPS}
    line = run_all.runtimes_line(one_run, {})
    assert "quality 10 min (2026-12-07 10:00 UTC, Xeon, 2 CPU cores, ran at commit aaaaaaaaaa)" in line
    assert "40 min in all." in line and "not yet run" not in line
    mixed = one_run | {"cost": entry | {"commit": "b" * 40}}
    assert "in all" not in run_all.runtimes_line(mixed, {})
    other = run_all.runtimes_line(one_run, {"quality": {"meta": {"commit": "c" * 40}}})
    assert (
        "quality 10 min (2026-12-07 10:00 UTC, Xeon, 2 CPU cores, ran at commit aaaaaaaaaa; not the run behind"
        in other
    )
    assert (
        "in all" in other
        and "headline 10 min (2026-12-07 10:00 UTC, Xeon, 2 CPU cores, ran at commit aaaaaaaaaa)" in other
    )


def test_results_record_when_their_run_finished_and_the_header_says_so(tmp_path):
    import re

    import quality

    from tagi_hf.recipes.synthetic import DemoSettings

    meta = quality._meta(DemoSettings(), 12.0)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", meta["finished"]) and meta["seconds"] == 12.0
    target = tmp_path / "quality.json"
    base = {"methods": {}, "meta": meta | {"prompt_settings": ["def"]}}
    target.write_text(json.dumps(base))
    later = {"methods": {}, "meta": meta | {"prompt_settings": ["def+2pos"], "finished": "2026-12-07 09:00 UTC"}}
    quality.merge_results(target, later, "later.json")
    merged = json.loads(target.read_text())["meta"]["merged"]
    assert [m["finished"] for m in merged] == ["2026-12-07 09:00 UTC"]
    header = run_all.quality_header({"meta": json.loads(target.read_text())["meta"]})
    assert f"finished {meta['finished']}, 0 min" in header and "finished 2026-12-07 09:00 UTC, 0 min" in header
    del base["meta"]["finished"]
    assert "finished" not in run_all.quality_header(base)


def test_cost_header_says_when_its_run_started():
    from cost_report import render_markdown

    cost = json.loads((ROOT / "benchmarks" / "results" / "cost.json").read_text())
    head = render_markdown(cost).splitlines()[0]
    assert head.endswith(f"; run started {cost['created'].replace('T', ' ')}.") and cost["created"][:4] == "2026"
    assert "run started" not in render_markdown({k: v for k, v in cost.items() if k != "created"}).splitlines()[0]
