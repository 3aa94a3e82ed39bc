"""Tests for tagi_hf.evaluation.metrics and its packaged `evaluate` module (SNI / Tk-Instruct protocol)."""

import socket
import sys

import pytest
from rouge_score import rouge_scorer

from tagi_hf.evaluation.metrics import SNI_ROUGE_PATH, compute_metrics, load_metric, normalize_answer, score_instance

PAIRS = [
    ("The cat sat on the mat.", "the cat is sitting on a mat"),
    ("running quickly", "they ran quick runs"),
    ("", "something"),
    ("completely unrelated words", "nothing shared here"),
    ("Answer: 42", "42"),
    ("New York City is big", "new-york city, which is big"),
    ("positive", "Positive"),
    ("a b c d e f g", "g f e d c b a"),
    ("The quick brown fox jumps over the lazy dog", "A quick brown dog jumps over the lazy fox"),
]


def test_rouge_l_matches_rouge_score_directly():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for prediction, reference in PAIRS:
        expected = 100 * scorer.score(reference, prediction)["rougeL"].fmeasure
        assert score_instance(prediction, [reference])["rougeL"] == pytest.approx(expected, abs=1e-6)
    predictions, references = [p for p, _ in PAIRS], [[r] for _, r in PAIRS]
    expected_mean = sum(100 * scorer.score(r[0], p)["rougeL"].fmeasure for p, r in zip(predictions, references))
    assert compute_metrics(predictions, references)["rougeL"] == pytest.approx(expected_mean / len(PAIRS), abs=1e-6)


def test_rouge_l_is_max_over_references():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    prediction, references = "the cat sat", ["a dog barked", "the cat sat down", "cat"]
    expected = max(100 * scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)
    assert score_instance(prediction, references)["rougeL"] == pytest.approx(expected, abs=1e-6)
    assert expected < 100.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The Cat.", "the cat", 100.0),
        ("  Yes  ", "yes!", 100.0),
        ("cat   dog", "cat dog", 100.0),
        ("cat-dog", "catdog", 100.0),  # punctuation is removed, not replaced by a space
        ("cat-dog", "cat dog", 0.0),
        ("a cat", "cat", 0.0),  # Tk-Instruct keeps articles
        ("cat", "dog", 0.0),
    ],
)
def test_exact_match_normalisation(prediction, reference, expected):
    assert score_instance(prediction, [reference])["exact_match"] == expected


def test_normalize_answer_article_option():
    assert normalize_answer("The  Cat, an Owl!") == "the cat an owl"
    assert normalize_answer("The  Cat, an Owl!", remove_articles=True) == "cat owl"


@pytest.mark.parametrize(
    ("prediction", "reference", "strict", "em", "rouge"),
    [
        ("CAT DOG", "cat dog", 0.0, 100.0, 100.0),
        ("cat-dog", "cat dog", 0.0, 0.0, 100.0),
        ("cat, dog", "cat dog", 0.0, 100.0, 100.0),
        ("  cat dog\n", "cat dog ", 100.0, 100.0, 100.0),
    ],
)
def test_strict_exact_match_sees_case_and_separators(prediction, reference, strict, em, rouge):
    scores = score_instance(prediction, [reference])
    assert scores["exact_match_strict"] == strict
    assert scores["exact_match"] == em
    assert scores["rougeL"] == pytest.approx(rouge)


def test_per_task_and_per_category_aggregation():
    predictions = ["yes", "no", "blue", "Red"]
    references = [["Yes"], ["yes"], ["blue", "green"], ["red"]]
    out = compute_metrics(predictions, references, tasks=["t1", "t1", "t2", "t2"], categories=["c", "d", "d", "d"])
    # instance scores for EM: 100, 0, 100, 100; strict: 0, 0, 100, 0
    assert out["n"] == 4
    assert out["exact_match"] == pytest.approx(75.0)
    assert out["exact_match_strict"] == pytest.approx(25.0)
    assert out["per_task"]["t1"] == {"rougeL": 50.0, "exact_match": 50.0, "exact_match_strict": 0.0, "n": 2}
    assert out["per_task"]["t2"] == {"rougeL": 100.0, "exact_match": 100.0, "exact_match_strict": 50.0, "n": 2}
    assert out["per_category"]["c"]["n"] == 1 and out["per_category"]["c"]["exact_match"] == 100.0
    assert out["per_category"]["d"]["exact_match"] == pytest.approx(200.0 / 3)  # instance mean, not task mean


def test_overall_is_instance_mean_not_task_mean():
    out = compute_metrics(["a", "b", "c", "x"], [["a"], ["b"], ["c"], ["y"]], tasks=["big", "big", "big", "small"])
    assert out["exact_match"] == pytest.approx(75.0)  # mean over tasks would be 50
    assert "per_category" not in out


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"references": [["a"]]}, "references"),
        ({"references": [["a"], ["b"]], "tasks": ["t"]}, "tasks"),
        ({"references": [["a"], ["b"]], "categories": ["c", "c", "c"]}, "categories"),
    ],
)
def test_mismatched_lengths_raise(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*`predictions`"):
        compute_metrics(["a", "b"], **kwargs)


def test_empty_inputs_raise():
    with pytest.raises(ValueError, match="`references`"):
        compute_metrics(["a"], [[]])
    with pytest.raises(ValueError, match="`predictions`"):
        compute_metrics([], [])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline env vars, a private modules cache, and a network that refuses every connection."""
    import evaluate

    for var in ("HF_EVALUATE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "0")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)  # read at import time: patch the value too
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader appends its modules cache

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_evaluate_module_loads_offline_and_matches(offline, tmp_path):
    assert (SNI_ROUGE_PATH / "sni_rouge.py").is_file()
    metric = load_metric(keep_in_memory=True, cache_dir=str(tmp_path / "metrics"))
    predictions = [p for p, _ in PAIRS]
    references = [[r, "cat dog"] for _, r in PAIRS]
    tasks = [f"task{i % 3}" for i in range(len(PAIRS))]
    categories = [f"cat{i % 2}" for i in range(len(PAIRS))]
    got = metric.compute(predictions=predictions, references=references, tasks=tasks, categories=categories)
    expected = compute_metrics(predictions, references, tasks=tasks, categories=categories)
    assert got == expected  # same scoring code: identical numbers, nested groups included
    assert set(got["per_task"]) == {"task0", "task1", "task2"}


def test_evaluate_module_accepts_single_string_references(offline, tmp_path):
    metric = load_metric(keep_in_memory=True, cache_dir=str(tmp_path / "metrics"))
    got = metric.compute(predictions=["CAT DOG", "yes"], references=["cat dog", "no"])
    assert got == compute_metrics(["CAT DOG", "yes"], [["cat dog"], ["no"]])
    assert got["exact_match"] == 50.0 and got["exact_match_strict"] == 0.0
