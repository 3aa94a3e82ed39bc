import json
from pathlib import Path

import pytest
import torch
from transformers import T5ForConditionalGeneration

import tagi_hf.evaluation.runner as predict_module
from tagi_hf import GeneratedAdapter, TagiConfig, TagiModel
from tagi_hf.data import (
    format_instruction,
    format_student_input,
    format_teacher_input,
    load_sni,
    synthetic_corpus,
    train_tokenizer,
    write_synthetic_suite,
)
from tagi_hf.evaluation.instruction_modes import GENERIC_DEFINITION, derangement, task_instructions
from tagi_hf.evaluation.rank_classification import option_nll
from tagi_hf.evaluation.runner import (
    evaluate_model,
    load_for_evaluation,
    make_score_fn,
    predict,
    prompt_ids,
    rank_classify_model,
)
from tagi_hf.modeling.instructions import tokenize_instructions
from tiny import tiny_text_config

SNI_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sni-sample"
GEN = dict(max_new_tokens=6, show_progress=False)
QUICK = dict(max_new_tokens=1, show_progress=False)


def suite_tokenizer():
    return train_tokenizer(synthetic_corpus(0, 300), vocab_size=200)


def tiny_tagi(vocab_size: int) -> TagiModel:
    """A tiny TagiModel whose zero-initialised parts are perturbed, so instructions change its outputs."""
    torch.manual_seed(0)
    text = tiny_text_config(vocab_size=vocab_size)
    model = TagiModel(TagiConfig(text_config=text, lora_rank=4, max_instruction_length=256)).eval()
    with torch.no_grad():
        for param in model.generator.heads_b.parameters():
            param.normal_(0.0, 0.3)
        for layer in model.encoder_fusion:
            layer.gate.fill_(0.5)
        model.decoder_gates.weight.fill_(0.5)
    return model


def save_tiny_models(root: Path) -> dict[str, Path]:
    """Saves a tiny TagiModel and a tiny plain T5, each with the same trained tokenizer; returns their dirs."""
    tokenizer = suite_tokenizer()
    torch.manual_seed(1)
    models = {"tagi": tiny_tagi(len(tokenizer)), "t5": T5ForConditionalGeneration(tiny_text_config(len(tokenizer)))}
    for kind, model in models.items():
        model.save_pretrained(root / kind)
        tokenizer.save_pretrained(root / kind)
    return {kind: root / kind for kind in models}


RANK_RECORDS = [  # (dataset, prompt, instruction, input, options)
    ("d1", "p", "Reverse the order of the words.", "cat dog", ["dog cat", "cat dog"]),
    ("d2", "p", "Sort the words.", "owl cat", ["cat owl", "owl", "cat"]),
    ("d2", "q", "Keep only the first word.", "bird fish egg", ["fish egg", "bird", "egg"]),
]


def write_rank_jsonl(path: Path, model_dir: Path) -> tuple[Path, dict]:
    """A rank-classification file whose result is known, and that result.

    Each option is scored on its own (a batch of one: the model's forward and `option_nll`, not the batched
    pipeline under test); the lowest average NLL is the model's pick. The answer is that pick for d1/p and d2/q and
    another option for d2/p, so the accuracy is (100 + (0 + 100) / 2) / 2 = 75.
    """
    model, tokenizer, kind = load_for_evaluation(model_dir, device="cpu")
    assert kind == "tagi"
    records, picks = [], []
    for dataset, prompt, instruction, text, options in RANK_RECORDS:
        adapter = model.generate_adapter(instruction, tokenizer)
        scores = []
        for option in options:
            batch = tokenizer(format_student_input(text), return_tensors="pt")
            labels = tokenizer(option, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                scores.append(option_nll(model(**batch, adapter=adapter, labels=labels).logits, labels).item())
        pick = scores.index(min(scores))
        # Batched scoring rounds differently (~1e-6): the pick must not hinge on a near-tie.
        assert sorted(scores)[1] - sorted(scores)[0] > 1e-3, scores
        answer = pick if (dataset, prompt) != ("d2", "p") else (pick + 1) % len(options)
        records.append({"instruction": instruction, "input": text, "options": options, "dataset": dataset,
                        "prompt": prompt, "answer": options[answer] if dataset == "d1" else answer})  # fmt: skip
        picks.append(pick)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    expected = {
        "predictions": picks,
        "per_prompt": {"d1": {"p": 100.0}, "d2": {"p": 0.0, "q": 100.0}},
        "per_dataset": {"d1": 100.0, "d2": 50.0},
        "accuracy": 75.0,
        "n": 3,
    }
    return path, expected


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=4)


@pytest.fixture(scope="module")
def rows(suite):
    return load_sni(suite, splits=("test",), max_test_instances_per_task=1)["test"]


@pytest.fixture(scope="module")
def loaded(dirs):
    return {kind: load_for_evaluation(path, device="cpu") for kind, path in dirs.items()}


@pytest.fixture(scope="module")
def loaded64(dirs):
    """The models in float64, for greedy tokens compared across batch sizes: a padded batch and a single row sum in
    other orders, which in float32 can flip a near tie between two tokens (in float64 the difference is ~1e-15)."""
    entries = {kind: load_for_evaluation(path, device="cpu") for kind, path in dirs.items()}
    return {kind: (model.double(), tokenizer, kind) for kind, (model, tokenizer, kind) in entries.items()}


def test_load_for_evaluation_detects_kind(loaded):
    assert isinstance(loaded["tagi"][0], TagiModel) and loaded["tagi"][2] == "tagi"
    assert isinstance(loaded["t5"][0], T5ForConditionalGeneration) and loaded["t5"][2] == "t5"
    assert not loaded["tagi"][0].training


def test_load_for_evaluation_refuses_other_directories(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_for_evaluation(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=rf"{tmp_path.name}.*'bert'"):
        load_for_evaluation(tmp_path)


def test_tagi_predictions_equal_generate_with_the_task_adapter(loaded, suite):
    model, tokenizer, kind = loaded["tagi"]
    task_rows = load_sni(suite, splits=("test",), max_test_instances_per_task=3)["test"].select(range(3))
    assert len(set(task_rows["task"])) == 1
    records = predict(model, tokenizer, task_rows, kind=kind, batch_size=1, **GEN)
    adapter = model.generate_adapter(format_instruction(task_rows[0]["definition"]), tokenizer)
    for row, record in zip(task_rows, records):
        ids = tokenizer(format_student_input(row["input"]), return_tensors="pt")
        output = model.generate(**ids, adapter=adapter, max_new_tokens=6)
        assert record["prediction"] == tokenizer.decode(output[0], skip_special_tokens=True).strip()
        assert record["references"] == row["outputs"] and record["id"] == row["id"]
    assert any(r["prediction"] for r in records)  # the comparison is not between empty strings


def test_t5_predictions_read_the_instruction_in_context(loaded, rows):
    model, tokenizer, kind = loaded["t5"]
    row = rows[0]
    record = predict(model, tokenizer, [row], kind=kind, setting="def+2pos", **GEN)[0]
    instruction = format_instruction(row["definition"], row["positive_examples"], 2)
    ids = tokenizer(format_teacher_input(instruction, row["input"]), return_tensors="pt")
    output = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert record["prediction"] == tokenizer.decode(output[0], skip_special_tokens=True).strip()


def test_batched_predictions_keep_dataset_order_and_match_unbatched(loaded64, rows):
    model, tokenizer, kind = loaded64["tagi"]
    subset = list(rows)[:12]
    batched = predict(model, tokenizer, subset, kind=kind, batch_size=16, **GEN)
    single = predict(model, tokenizer, subset, kind=kind, batch_size=1, **GEN)
    assert [r["id"] for r in batched] == [r["id"] for r in subset]
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]


def _spy_instructions(monkeypatch, model):
    """Records the instructions passed to `generate_adapter` and the adapter's instruction each task decodes with."""
    calls, used = [], []
    generate_adapter, prepare_task_state = model.generate_adapter, model.prepare_task_state

    def spy_generate_adapter(texts, *args, **kwargs):
        calls.append(list(texts))
        return generate_adapter(texts, *args, **kwargs)

    def spy_prepare_task_state(*, adapter=None, **kwargs):
        used.append(None if isinstance(adapter, list) else adapter.instruction)
        return prepare_task_state(adapter=adapter, **kwargs)

    monkeypatch.setattr(model, "generate_adapter", spy_generate_adapter)
    monkeypatch.setattr(model, "prepare_task_state", spy_prepare_task_state)
    return calls, used


@pytest.mark.parametrize("mode", ["own", "generic", "shuffled", "empty"])
def test_instruction_modes_change_the_instruction_given_to_the_generator(loaded, rows, monkeypatch, mode):
    model, tokenizer, kind = loaded["tagi"]
    calls, used = _spy_instructions(monkeypatch, model)
    predict(model, tokenizer, rows, kind=kind, instruction_mode=mode, seed=3, **QUICK)
    tasks = list(dict.fromkeys(rows["task"]))
    own = {t: format_instruction(d) for t, d in zip(rows["task"], rows["definition"])}
    assert len(calls) == 1  # every task's adapter comes from one batched call
    if mode == "own":
        assert calls[0] == [own[t] for t in tasks] and used == calls[0]
    elif mode == "generic":
        assert calls[0] == [format_instruction(GENERIC_DEFINITION)] and used == calls[0] * len(tasks)
    elif mode == "empty":
        assert calls[0] == [""] and used == [""] * len(tasks)
    else:
        assert sorted(calls[0]) == sorted(own.values())
        assert all(text != own[task] and text in own.values() for task, text in zip(tasks, used))


def test_t5_instruction_modes(loaded, rows, monkeypatch):
    model, tokenizer, kind = loaded["t5"]
    seen = []
    original = predict_module.in_context_ids
    monkeypatch.setattr(
        predict_module, "in_context_ids", lambda t, i, x, **k: seen.append(i) or original(t, i, x, **k)
    )
    predict(model, tokenizer, rows, kind=kind, instruction_mode="generic", **QUICK)
    assert set(seen) == {format_instruction(GENERIC_DEFINITION)} and len(seen) == len(rows)


def _spy_generate(monkeypatch, model) -> list[torch.Tensor]:
    """Records the `input_ids` of every `model.generate` call."""
    fed, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda **kwargs: fed.append(kwargs["input_ids"]) or generate(**kwargs))
    return fed


@pytest.mark.parametrize(("kind", "mode"), [("t5", "own"), ("t5", "empty"), ("tagi", "own")])
def test_prompt_ids_are_what_predict_feeds(loaded, rows, monkeypatch, kind, mode):
    """`prompt_ids` (to count prompt tokens) gives exactly the ids `predict` feeds: the instruction in context for a
    plain model, the input alone for TAGI (its instruction goes through the adapter) and in the `empty` mode."""
    model, tokenizer, kind = loaded[kind]
    subset = list(rows)[:3]
    instructions = task_instructions(subset, instruction_mode=mode)
    fed = _spy_generate(monkeypatch, model)
    predict(model, tokenizer, subset, kind=kind, instruction_mode=mode, batch_size=1, max_source_length=24, **QUICK)
    text = {row["task"]: "" if kind == "tagi" else instructions[row["task"]] for row in subset}
    expected = [prompt_ids(tokenizer, text[r["task"]], r["input"], max_source_length=24) for r in subset]
    assert [ids[0].tolist() for ids in fed] == expected
    if kind == "t5" and mode == "own":
        assert all(len(ids) > 24 for ids in expected)  # the instruction is there, beyond the input's 24 tokens


def test_t5_empty_mode_feeds_exactly_the_student_input(loaded64, suite, monkeypatch):
    model, tokenizer, kind = loaded64["t5"]
    subset = list(load_sni(suite, splits=("test",), max_test_instances_per_task=3)["test"].select(range(3)))
    assert len({row["task"] for row in subset}) == 1  # one task: one batch of 3 below
    expected = [tokenizer(format_student_input(row["input"]))["input_ids"] for row in subset]
    outputs = [model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False) for ids in expected]
    reference = [tokenizer.decode(output[0], skip_special_tokens=True).strip() for output in outputs]
    fed = _spy_generate(monkeypatch, model)
    records = predict(model, tokenizer, subset, kind=kind, instruction_mode="empty", batch_size=1, **GEN)
    assert [ids[0].tolist() for ids in fed] == expected  # no definition, no "Now complete..." bridge: the input alone
    assert [r["prediction"] for r in records] == reference
    fed.clear()
    batched = predict(model, tokenizer, subset, kind=kind, instruction_mode="empty", batch_size=3, **GEN)
    padded = tokenizer([format_student_input(row["input"]) for row in subset], padding="longest", return_tensors="pt")
    assert len(fed) == 1 and torch.equal(fed[0], padded["input_ids"])  # the batch a TAGI student gets
    assert [r["prediction"] for r in batched] == reference


def test_tagi_empty_mode_uses_the_adapter_generated_from_the_empty_text(loaded, rows, monkeypatch):
    model, tokenizer, kind = loaded["tagi"]
    subset = list(rows)[:3]
    ids, _ = tokenize_instructions(tokenizer, [""], 256, allow_empty=True)
    assert ids.tolist() == [[tokenizer.eos_token_id]]  # zero text tokens: EOS alone
    adapter = model.generate_adapter("", tokenizer, allow_empty=True)
    fed = _spy_generate(monkeypatch, model)
    records = predict(model, tokenizer, subset, kind=kind, instruction_mode="empty", batch_size=1, **GEN)
    for row, record, input_ids in zip(subset, records, fed):
        batch = tokenizer(format_student_input(row["input"]), return_tensors="pt")
        assert torch.equal(input_ids, batch["input_ids"])
        output = model.generate(**batch, adapter=adapter, max_new_tokens=6)
        assert record["prediction"] == tokenizer.decode(output[0], skip_special_tokens=True).strip()
    own = predict(model, tokenizer, subset, kind=kind, batch_size=1, **GEN)
    assert [r["prediction"] for r in own] != [r["prediction"] for r in records]  # the instruction mattered
    with pytest.raises(ValueError, match="empty"):
        model.generate_adapter("", tokenizer)  # outside the evaluation control, an empty instruction is refused


def test_given_adapters_are_decoded_with_instead_of_generated_ones(loaded, rows, monkeypatch):
    """`adapters=`: the caller's adapters (made once, e.g. timed or saved) serve their tasks; none is generated."""
    model, tokenizer, kind = loaded["tagi"]
    subset = list(rows)[:3]
    tasks = list(dict.fromkeys(r["task"] for r in subset))
    other = model.generate_adapter(format_instruction("Reverse the order of the words."), tokenizer)
    calls, _ = _spy_instructions(monkeypatch, model)
    records = predict(model, tokenizer, subset, kind=kind, adapters=dict.fromkeys(tasks, other), batch_size=1, **GEN)
    assert calls == []  # no adapter generated inside
    for row, record in zip(subset, records):
        ids = tokenizer(format_student_input(row["input"]), return_tensors="pt")
        output = model.generate(**ids, adapter=other, max_new_tokens=6)
        assert record["prediction"] == tokenizer.decode(output[0], skip_special_tokens=True).strip()
    own = predict(model, tokenizer, subset, kind=kind, batch_size=1, **GEN)
    assert [r["prediction"] for r in own] != [r["prediction"] for r in records]  # the given adapter was used
    with pytest.raises(ValueError, match=r"no adapter for 1 task\(s\) of the dataset: \['" + tasks[-1]):
        predict(model, tokenizer, subset, kind=kind, adapters=dict.fromkeys(tasks[:-1], other), **GEN)
    t5, t5_tokenizer, t5_kind = loaded["t5"]
    with pytest.raises(ValueError, match="`adapters` are for a TAGI model"):
        predict(t5, t5_tokenizer, subset, kind=t5_kind, adapters=dict.fromkeys(tasks, other), **GEN)


def test_generate_kwargs_reach_generate_over_the_defaults(loaded, rows):
    """`generate_kwargs=` reach `generate`, over predict's defaults: 3 new tokens instead of 6 (greedy: the same
    decoding, cut shorter; the tiny TAGI writes all 6)."""
    model, tokenizer, kind = loaded["tagi"]
    subset = list(rows)[:2]
    free = predict(model, tokenizer, subset, kind=kind, batch_size=1, **GEN)
    three = {"min_new_tokens": 3, "max_new_tokens": 3}
    forced = predict(model, tokenizer, subset, kind=kind, batch_size=1, generate_kwargs=three, **GEN)
    for a, b in zip(free, forced):
        assert b["prediction"] and (
            a["prediction"].startswith(b["prediction"]) or b["prediction"].startswith(a["prediction"])
        )
    assert [r["prediction"] for r in free] != [r["prediction"] for r in forced]


def test_shuffled_is_a_seeded_derangement(rows):
    own = task_instructions(rows)
    first, again = (task_instructions(rows, instruction_mode="shuffled", seed=5) for _ in range(2))
    assert first == again and first != task_instructions(rows, instruction_mode="shuffled", seed=6)
    assert all(first[task] != own[task] for task in own)
    assert sorted(first.values()) == sorted(own.values())
    for n in (2, 3, 10):
        perm = derangement(n, seed=0)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))


def test_invalid_modes_and_single_task(rows):
    assert set(task_instructions(rows, instruction_mode="empty").values()) == {""}
    with pytest.raises(ValueError, match="instruction_mode"):
        task_instructions(rows, instruction_mode="random")
    one_task = [rows[0]]
    with pytest.raises(ValueError, match="at least 2 tasks"):
        task_instructions(one_task, instruction_mode="shuffled")


def test_evaluate_model_metrics_and_limits(dirs, suite, tmp_path):
    result = evaluate_model(dirs["tagi"], suite, max_instances_per_task=2, output=tmp_path / "m.json", **QUICK)
    assert result["n"] == 2 * result["num_tasks"] and all(v["n"] == 2 for v in result["per_task"].values())
    assert json.loads((tmp_path / "m.json").read_text()) == result
    with pytest.raises(ValueError, match="max-instances-per-task"):
        evaluate_model(dirs["tagi"], suite, max_instances_per_task=0)


@pytest.mark.parametrize("kind", ["tagi", "t5"])
def test_score_fn_is_the_option_nll(loaded, kind):
    model, tokenizer, _ = loaded[kind]
    score_fn = make_score_fn(model, tokenizer, kind, batch_size=4)
    instructions, inputs, options = ["Sort the words.", "Reverse."], ["cat owl", "a b"], ["cat owl", "b"]
    scores = score_fn(instructions, inputs, options)
    for i in range(2):
        labels = tokenizer(options[i], return_tensors="pt")["input_ids"]
        if kind == "tagi":
            batch = tokenizer(format_student_input(inputs[i]), return_tensors="pt")
            batch["adapter"] = model.generate_adapter(instructions[i], tokenizer)
        else:
            batch = tokenizer(format_teacher_input(instructions[i], inputs[i]), return_tensors="pt")
        expected = option_nll(model(**batch, labels=labels).logits, labels)
        torch.testing.assert_close(scores[i : i + 1], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 16])
def test_rank_classify_model(dirs, tmp_path, batch_size):
    jsonl, expected = write_rank_jsonl(tmp_path / "rc.jsonl", dirs["tagi"])
    result = rank_classify_model(dirs["tagi"], jsonl, batch_size=batch_size, output=tmp_path / "rc.json")
    assert {key: result[key] for key in expected} == expected  # the lowest-NLL option of each example, averaged
    assert (result["kind"], result["model"], result["file"]) == ("tagi", str(dirs["tagi"]), str(jsonl))
    assert json.loads((tmp_path / "rc.json").read_text()) == result


def test_adapter_cache_in_score_fn_generates_each_instruction_once(loaded, monkeypatch):
    model, tokenizer, _ = loaded["tagi"]
    calls, _ = _spy_instructions(monkeypatch, model)
    score_fn = make_score_fn(model, tokenizer, "tagi")
    score_fn(["a", "a", "b"], ["x", "y", "z"], ["cat", "dog", "cat"])
    score_fn(["b", "c"], ["x", "y"], ["cat", "dog"])
    assert calls == [["a", "b"], ["c"]]
    assert isinstance(model.generate_adapter("a", tokenizer), GeneratedAdapter)
