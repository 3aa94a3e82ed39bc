"""Tests for tagi_hf.evaluation.rank_classification (P3 / T0 rank-classification protocol)."""

import json
import math

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from tagi_hf.evaluation.rank_classification import (
    RankClassificationExample,
    load_rank_classification_jsonl,
    option_nll,
    rank_classification,
)


def _record(answer, options=("good", "bad"), dataset="A", prompt="p1"):
    record = {"instruction": "pick", "input": "x", "options": list(options), "answer": answer}
    if dataset is not None:
        record.update(dataset=dataset, prompt=prompt)
    return record


def _write_jsonl(path, records, blank_lines=False):
    lines = [json.dumps(r) for r in records]
    path.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n", encoding="utf-8")
    return path


def good_is_best(instructions, inputs, options):
    """Fake scorer: options starting with "good" get the lowest NLL."""
    return torch.tensor([0.5 if option.startswith("good") else 2.0 for option in options])


@pytest.fixture
def examples(tmp_path):
    # The fake scorer always picks the "good..." option, so an example is right iff its answer is that option.
    records = [
        _record("good", dataset="A", prompt="p1"),  # right
        _record(1, dataset="A", prompt="p1"),  # wrong (answer "bad", given as index)
        _record("good2", options=("bad", "good2", "worse"), dataset="A", prompt="p2"),  # right
        _record(0, options=("good", "bad", "bad2"), dataset="B", prompt="q"),  # right
        _record("bad", dataset="B", prompt="q"),  # wrong
        _record("bad", dataset="B", prompt="q"),  # wrong
    ]
    return load_rank_classification_jsonl(_write_jsonl(tmp_path / "rc.jsonl", records, blank_lines=True))


def test_loader_reads_examples_and_answer_forms(examples):
    assert len(examples) == 6
    assert examples[1].answer_index == 1 and examples[2].answer_index == 1 and examples[3].answer_index == 0
    assert examples[2].options == ("bad", "good2", "worse")
    assert (examples[3].dataset, examples[3].prompt) == ("B", "q")


def test_loader_defaults_dataset_and_prompt(tmp_path):
    (example,) = load_rank_classification_jsonl(_write_jsonl(tmp_path / "d.jsonl", [_record("bad", dataset=None)]))
    assert (example.dataset, example.prompt, example.answer_index) == ("default", "default", 1)


@pytest.mark.parametrize(
    ("bad_record", "message"),
    [
        ({"instruction": "i", "input": "x", "options": ["a", "b"]}, "line 2: missing key `answer`"),
        ({"instruction": "i", "options": ["a", "b"], "answer": 0}, "line 2: missing key `input`"),
        (_record("maybe"), "line 2: `answer` 'maybe' is not one of `options`"),
        (_record(2), "line 2: `answer` index 2 is out of range"),
        (_record(True), "line 2: `answer` must be"),
        (_record("good", options=("good",)), "line 2: `options` must be a list of at least two strings"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_loader_validation_names_line_and_key(tmp_path, bad_record, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [_record("good"), bad_record])
    with pytest.raises(ValueError, match=message):
        load_rank_classification_jsonl(path)


def test_loader_rejects_invalid_json_with_line_number(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(_record("good")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        load_rank_classification_jsonl(path)


def test_accuracy_is_mean_over_prompts_then_datasets(examples):
    out = rank_classification(good_is_best, examples, batch_size=4)
    assert out["per_prompt"] == {"A": {"p1": 50.0, "p2": 100.0}, "B": {"q": pytest.approx(100.0 / 3)}}
    assert out["per_dataset"]["A"] == pytest.approx(75.0)
    assert out["per_dataset"]["B"] == pytest.approx(100.0 / 3)
    assert out["accuracy"] == pytest.approx((75.0 + 100.0 / 3) / 2)  # not the instance mean (50)
    assert out["predictions"] == [0, 0, 1, 0, 0, 0] and out["n"] == 6


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_batching_covers_every_option_once(examples, batch_size):
    calls = []

    def recording_score_fn(instructions, inputs, options):
        assert len(instructions) == len(inputs) == len(options) <= batch_size
        calls.append(list(options))
        return good_is_best(instructions, inputs, options)

    out = rank_classification(recording_score_fn, examples, batch_size=batch_size)
    flat = [option for call in calls for option in call]
    assert flat == [option for ex in examples for option in ex.options]
    assert out["accuracy"] == pytest.approx((75.0 + 100.0 / 3) / 2)


def test_ties_go_to_first_option():
    example = RankClassificationExample("i", "x", ("first", "second"), answer_index=0)
    out = rank_classification(lambda i, x, options: torch.ones(len(options)), [example])
    assert out["predictions"] == [0] and out["accuracy"] == 100.0


def test_score_fn_shape_and_arguments_are_checked(examples):
    with pytest.raises(ValueError, match="`score_fn` returned shape"):
        rank_classification(lambda i, x, options: torch.zeros(len(options), 1), examples)
    with pytest.raises(ValueError, match="`batch_size`"):
        rank_classification(good_is_best, examples, batch_size=0)
    with pytest.raises(ValueError, match="`examples`"):
        rank_classification(good_is_best, [])


def test_option_nll_uniform_logits_is_log_vocab():
    labels = torch.tensor([[1, 2, 3], [4, -100, -100]])
    nll = option_nll(torch.zeros(2, 3, 11), labels)
    assert nll.shape == (2,)
    torch.testing.assert_close(nll, torch.full((2,), math.log(11)))


def test_option_nll_ignores_padding_and_averages_per_row():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 9), torch.tensor([[1, 2, -100, -100], [3, 4, 5, 6]])
    nll = option_nll(logits, labels)
    logp = logits.log_softmax(-1)
    expected_row0 = -(logp[0, 0, 1] + logp[0, 1, 2]) / 2
    torch.testing.assert_close(nll[0], expected_row0)
    changed = logits.clone()
    changed[0, 2:] = 100 * torch.randn(2, 9)  # padding positions of row 0
    torch.testing.assert_close(option_nll(changed, labels), nll)


def test_option_nll_rejects_empty_rows_and_bad_shapes():
    with pytest.raises(ValueError, match="no target tokens"):
        option_nll(torch.zeros(2, 2, 5), torch.tensor([[1, 2], [-100, -100]]))
    with pytest.raises(ValueError, match="`logits`"):
        option_nll(torch.zeros(2, 3, 5), torch.zeros(2, 2, dtype=torch.long))


def test_option_nll_equals_t5_mean_cross_entropy():
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    input_ids = torch.randint(2, 64, (2, 7))
    labels = torch.tensor([[5, 9, 13, 1], [7, 1, -100, -100]])
    with torch.no_grad():
        padded = model(input_ids=input_ids, labels=labels)
        singles = [model(input_ids=input_ids[i : i + 1], labels=labels[i : i + 1, : 4 - 2 * i]) for i in range(2)]
    nll = option_nll(padded.logits, labels)
    # Each row's average NLL is that row's own mean cross-entropy, as T5 computes it without any padding.
    torch.testing.assert_close(nll, torch.stack([s.loss for s in singles]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(option_nll(singles[0].logits, labels[:1]), singles[0].loss.reshape(1))
