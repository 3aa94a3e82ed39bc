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


def _scores(rouge: float, strict: float) -> dict:
    m = {"rougeL": rouge, "exact_match": strict, "exact_match_strict": strict, "n": 10}
    return m | {"by_kind": {"held-out chain": dict(m), "held-out word": dict(m)}}


def _quality(tagi: float, ft: float, hint: float, ablations: dict[str, float], drop: float) -> dict:
    methods = {FT: ft, HINT: hint, "TAGI": tagi, **ablations}
    sensitivity = {
        mode: {"def": _scores(tagi - drop, tagi - drop) | {"drop_rougeL": drop, "drop_exact_match_strict": drop}}
        for mode in ("generic", "shuffled")
    }
    return {
        "methods": {name: {"def": _scores(v, v)} for name, v in methods.items()},
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
    targets = run_all.quality_targets(_quality(tagi=80.0, ft=80.5, hint=60.0, ablations=ablations, drop=40.0))
    # shuffled (test), 2 x FT - 1, held-out words; 2 x (hint + 3, ablations, fusion-most), generic
    assert len(targets) == 4 + 7
    assert all(met for _, met, _ in targets), [t for t in targets if not t[1]]


def test_generator_targets_from_fit_shuffled_fit_and_the_papers_generator():
    q = _quality(tagi=80.0, ft=80.5, hint=60.0, ablations={"TAGI w/o fusion": 50.0}, drop=40.0)
    q["methods"][run_all.PAPER_GENERATOR] = {"def": _scores(75.0, 75.0)}
    q["fit"] = {"TAGI": {"def": _fit(85.0)}}
    q["sensitivity_fit"] = {"shuffled": {"def": _fit(40.0) | {"drop_exact_match": 45.0}}}
    targets = {t: (m, v) for t, m, v in run_all.generator_targets(q)}
    assert targets == {
        "def: TAGI EM on unseen train instances >= 80": (True, "85.0"),
        "def: shuffled instruction drops TAGI's train-instance EM by >= 50": (False, "drop 45.0 (to 40.0)"),
        "def: shuffled instruction costs TAGI >= 30 ROUGE-L on test tasks": (True, "drop 40.0"),
        "def, rougeL: TAGI >= multi-task FT - 1": (True, "80.0 vs 80.5"),
        "def, exact_match: TAGI >= multi-task FT - 1": (True, "80.0 vs 80.5"),
        "def: TAGI EM on held-out-word tasks >= 50": (True, "80.0"),
        "def, rougeL: the generator beats the paper's": (True, "80.0 vs 75.0"),
        "def, exact_match: the generator beats the paper's": (True, "80.0 vs 75.0"),
    }


def test_targets_missed_are_reported_as_missed():
    ablations = {"TAGI w/o fusion": 79.0, "TAGI w/o stage 1": 81.0, "TAGI w/o L_kl": 75.0, "TAGI w/o L_ins": 78.0}
    targets = dict(
        (name, (met, measured))
        for name, met, measured in run_all.quality_targets(
            _quality(tagi=80.0, ft=81.5, hint=80.0, ablations=ablations, drop=29.0)
        )
    )
    assert targets["def, rougeL: TAGI >= multi-task FT - 1"] == (False, "80.0 vs 81.5")
    assert targets["def, rougeL: TAGI >= L_pred-only hypernet + 3"] == (False, "80.0 vs 80.0")
    assert targets["def, rougeL: every ablation below TAGI"][0] is False  # w/o stage 1 scored 81
    assert targets["def, rougeL: removing fusion hurts most"] == (False, "lowest: TAGI w/o L_kl")
    assert targets["def: generic instruction costs TAGI >= 30 ROUGE-L"] == (False, "drop 29.0")
    assert targets["def: shuffled instruction costs TAGI >= 30 ROUGE-L on test tasks"] == (False, "drop 29.0")


def test_report_and_readme_section_render_from_the_json(tmp_path):
    ablations = {"TAGI w/o fusion": 50.0, "TAGI w/o stage 1": 70.0, "TAGI w/o L_kl": 75.0, "TAGI w/o L_ins": 78.0}
    (tmp_path / "quality.json").write_text(json.dumps(_quality(80.0, 80.5, 60.0, ablations, 40.0)))
    full, short = run_all.render_report(tmp_path, {"quality": {"seconds": 125.0, "cpu_cores": 2}})
    assert "| TAGI | 80.0 | 80.0 | 80.0 |" in full and "| TAGI | 80.0 | 80.0 | 80.0 |" in short
    assert "11 of 11 quality targets met" in short
    assert "quality 2 min; 2 min in all" in full and "No `cost.json` yet." in full
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
        f"def: {fit_report.TEACHERS} EM on unseen train instances >= 90": (True, "92.0"),
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
