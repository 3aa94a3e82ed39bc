"""Fit checks: unseen instances of train tasks, the teachers scored in one batched pass, EM by operation."""

import json

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import T5ForConditionalGeneration

from tagi_hf.data import format_student_input, load_sni, train_tokenizer, write_synthetic_suite
from tagi_hf.evaluation.fit import count_ran_to_limit, predict_with_teachers, scores_by_operation, unseen_train_rows
from tagi_hf.recipes.standin import standin_config
from tagi_hf.teachers.joint import train_lora_teachers_jointly


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=6)


def test_unseen_rows_are_the_train_instances_training_never_saw(suite):
    trained = load_sni(suite, max_train_instances_per_task=4, seed=3, splits=("train",))["train"]
    rows = unseen_train_rows(suite, max_train_instances_per_task=4, seed=3, per_task=5)
    assert not {r["id"] for r in rows} & set(trained["id"])
    tasks = sorted(set(trained["task"]))
    assert sorted({r["task"] for r in rows}) == tasks
    assert len(rows) == 2 * len(tasks)  # 6 instances per task, 4 trained on: 2 left (fewer than per_task=5)
    one = unseen_train_rows(suite, max_train_instances_per_task=4, seed=3, per_task=1)
    assert [r["id"] for r in one] == [r["id"] for r in rows[::2]]  # the first unseen instance of each task


def test_unseen_rows_sample_tasks_by_seed(suite):
    a = unseen_train_rows(suite, max_train_instances_per_task=4, seed=0, per_task=1, num_tasks=60)
    b = unseen_train_rows(suite, max_train_instances_per_task=4, seed=0, per_task=1, num_tasks=60)
    c = unseen_train_rows(suite, max_train_instances_per_task=4, seed=0, per_task=1, num_tasks=60, sample_seed=1)
    assert len(a) == 60 and [r["id"] for r in a] == [r["id"] for r in b]
    assert {r["task"] for r in a} != {r["task"] for r in c}


def test_unseen_rows_refuse_a_suite_without_spare_instances(suite):
    with pytest.raises(ValueError, match="no instance beyond the 6 trained on"):
        unseen_train_rows(suite, max_train_instances_per_task=6, seed=0, per_task=1)
    with pytest.raises(ValueError, match="`per_task` must be >= 1"):
        unseen_train_rows(suite, max_train_instances_per_task=4, seed=0, per_task=0)


def test_scores_by_operation_weights_instances_and_counts_chains_for_both_ops():
    per_category = {
        "Synthetic -> reverse>first": {"exact_match": 50.0, "n": 2},
        "Synthetic -> reverse": {"exact_match": 100.0, "n": 6},
        "Synthetic -> first": {"exact_match": 0.0, "n": 2},
        "Other": {"exact_match": 0.0, "n": 9},
    }
    out = scores_by_operation(per_category)
    assert out == {"first": {"exact_match": 25.0, "n": 4}, "reverse": {"exact_match": 87.5, "n": 8}}


def test_ran_to_limit_counts_predictions_as_long_as_the_limit():
    tokenizer = train_tokenizer(["cat dog sun moon"] * 20, vocab_size=120)
    assert count_ran_to_limit(["cat dog", "cat cat cat cat", "cat cat cat"], tokenizer, max_new_tokens=3) == 2
    assert count_ran_to_limit(["cat dog"], tokenizer, max_new_tokens=8) == 0


def test_teachers_predict_in_one_mixed_batch_as_each_does_alone_with_peft(tmp_path):
    words = "apple bird boat book cake car cat cloud".split()
    rows = []
    for task, fn in {"rev": lambda w: w[::-1], "dup": lambda w: w + w}.items():
        for i in range(8):
            ws = [words[(i + 3 * j) % len(words)] for j in range(3)]
            rows.append({"id": f"{task}-{i}", "task": task, "category": "c", "definition": task,
                         "positive_examples": [], "input": " ".join(ws), "outputs": [" ".join(fn(ws))]})  # fmt: skip
    tokenizer = train_tokenizer([format_student_input(r["input"]) + r["outputs"][0] for r in rows] * 5, vocab_size=140)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(standin_config(len(tokenizer), d_model=32, num_layers=2)).eval()
    t5.save_pretrained(tmp_path / "t5")
    bank = train_lora_teachers_jointly(t5, tokenizer, Dataset.from_list(rows), tmp_path / "teachers", rank=4,
                                       max_steps=10, learning_rate=5e-2, batch_size=8)  # fmt: skip
    mixed = [rows[0], rows[8], rows[1], rows[9]]  # rev, dup, rev, dup
    # float64 from here: greedy tokens of per-example LoRA layers on a batch of 4 are compared with PEFT's on a batch
    # of 2 (other sums, other orders); in float32 that can flip a near tie between two tokens.
    t5.double()
    records = predict_with_teachers(t5, bank, tokenizer, mixed, batch_size=4, max_new_tokens=6)
    assert [r["task"] for r in records] == ["rev", "dup", "rev", "dup"]
    assert all(getattr(m, "lora_factors", None) is None for m in t5.modules())  # nothing left installed
    for task in ("rev", "dup"):
        base = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
        peft = PeftModel.from_pretrained(base, tmp_path / "teachers" / task).double().eval()
        task_rows = [r for r in mixed if r["task"] == task]
        enc = tokenizer([format_student_input(r["input"]) for r in task_rows], padding=True, return_tensors="pt")
        with torch.no_grad():
            ids = peft.generate(**enc, max_new_tokens=6, do_sample=False)
        expected = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        assert [r["prediction"] for r in records if r["task"] == task] == expected
    plain = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    assert torch.equal(plain.lm_head.weight.double(), t5.lm_head.weight)  # exact: float32 values converted, untouched


def test_an_interrupted_stage_is_built_again_and_a_finished_one_skipped(tmp_path):
    from tagi_hf.recipes.synthetic import _stage, stage_finished

    built = []
    stage = tmp_path / "baseline"
    (stage / "checkpoints" / "checkpoint-500").mkdir(parents=True)  # a run killed mid-training left its work here
    assert not stage_finished(stage)
    _stage(stage, lambda p: (built.append(p), (p / "config.json").write_text("{}")))
    assert built == [stage] and stage_finished(stage)
    _stage(stage, lambda p: built.append(p))  # finished: skipped
    assert built == [stage]
    teachers = tmp_path / "teachers"
    (teachers / "synth_sort").mkdir(parents=True)  # teachers written one by one, the index not yet
    assert not stage_finished(teachers)
    (teachers / "teachers.json").write_text("{}")
    assert stage_finished(teachers)


def test_a_stage_built_with_other_settings_is_refused_not_reused(tmp_path):
    from tagi_hf.recipes.synthetic import STAGE_RECORD, _stage

    built = []
    stage = tmp_path / "tagi"

    def build(p):
        built.append(p)
        p.mkdir()
        (p / "config.json").write_text("{}")

    _stage(stage, build, record={"stage2_steps": 2000, "instruction_pooling": "mean"})
    assert json.loads((stage / STAGE_RECORD).read_text()) == {"stage2_steps": 2000, "instruction_pooling": "mean"}
    _stage(stage, build, record={"stage2_steps": 2000, "instruction_pooling": "mean"})  # same settings: reused
    assert built == [stage]
    with pytest.raises(ValueError, match="stage2_steps: built with 2000, now 1000"):
        _stage(stage, build, record={"stage2_steps": 1000, "instruction_pooling": "mean"})
    (stage / STAGE_RECORD).unlink()  # built by an older version: reused, unchecked
    _stage(stage, build, record={"stage2_steps": 1000})
    assert built == [stage]


def test_unseen_rows_with_an_offset_are_disjoint_from_the_first_ones(suite):
    kw = dict(max_train_instances_per_task=4, seed=0, num_tasks=30)  # 2 unseen instances per task
    first = unseen_train_rows(suite, per_task=1, **kw)
    later = unseen_train_rows(suite, per_task=1, offset=1, sample_seed=1, **kw)  # as the selection rows are drawn
    both = unseen_train_rows(suite, per_task=2, **kw)
    assert len(first) == len(later) == 30 and not {r["id"] for r in first} & {r["id"] for r in later}
    same_tasks = unseen_train_rows(suite, per_task=1, offset=1, **kw)
    assert {r["id"] for r in first} | {r["id"] for r in same_tasks} == {r["id"] for r in both}
    with pytest.raises(ValueError, match="and the 2 unseen ones skipped"):
        unseen_train_rows(suite, per_task=1, offset=2, **kw)


def test_the_recipe_refuses_a_suite_written_before_the_current_revision(tmp_path):
    from tagi_hf.recipes.synthetic import SUITE_VERSION, DemoSettings, SyntheticRecipe

    (tmp_path / "data" / "splits").mkdir(parents=True)  # a finished data stage of an older generator: no record
    with pytest.raises(ValueError, match=f"written before the suite's {SUITE_VERSION} revision"):
        SyntheticRecipe(DemoSettings(out=str(tmp_path)))
