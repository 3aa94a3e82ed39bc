import pytest
import torch

from tagi_hf.data import (
    TagiDataCollator,
    format_instruction,
    format_student_input,
    format_teacher_input,
    parse_setting,
    synthetic_corpus,
    train_tokenizer,
)

EXAMPLES = [
    {"input": "cat dog", "output": "dog cat", "explanation": ""},
    {"input": "Is it sun?", "output": "sun", "explanation": "ignored"},
    {"input": "a", "output": "a", "explanation": ""},
]
ROWS = [
    {
        "id": "t1-0",
        "task": "t1",
        "category": "",
        "definition": "Reverse the order of the words",
        "positive_examples": EXAMPLES,
        "input": "cat sun dog",
        "outputs": ["dog sun cat", "other"],
    },
    {
        "id": "t2-0",
        "task": "t2",
        "category": "",
        "definition": "Count the words.",
        "positive_examples": [],
        "input": "cat",
        "outputs": ["1"],
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = synthetic_corpus(0, 300) + [format_teacher_input(format_instruction(r["definition"]), "x") for r in ROWS]
    return train_tokenizer(texts, vocab_size=400)


def _decode(tokenizer, ids: torch.Tensor) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


# Prompt formats (Tk-Instruct's `DataCollatorForNI`, character for character).


def test_tk_instruct_teacher_format():
    instruction = format_instruction("Reverse the order of the words", EXAMPLES, num_pos=2)
    assert format_teacher_input(instruction, "cat sun dog") == (
        "Definition: Reverse the order of the words.\n\n"
        " Positive Example 1 -\nInput: cat dog.\n Output: dog cat.\n\n"
        " Positive Example 2 -\nInput: Is it sun?\n Output: sun.\n\n"
        "Now complete the following example -\nInput: cat sun dog.\nOutput: "
    )
    assert format_teacher_input("", "x") == "Now complete the following example -\nInput: x.\nOutput: "


def test_instruction_and_student_formats():
    assert format_instruction("Count the words.") == "Definition: Count the words."
    assert format_instruction(" Count. ", EXAMPLES, num_pos=0) == "Definition: Count."
    assert format_instruction("D", EXAMPLES, num_pos=5).count("Positive Example") == 3
    assert format_student_input(" cat dog ") == "Input: cat dog.\nOutput: "
    assert format_student_input("Why?") == "Input: Why?\nOutput: "
    assert format_teacher_input("Definition: D.", "cat").endswith(format_student_input("cat"))
    with pytest.raises(ValueError, match="`num_pos`"):
        format_instruction("D", EXAMPLES, num_pos=-1)


@pytest.mark.parametrize(
    ("setting", "expected"), [("def", 0), ("def+2pos", 2), ("DEF+10POS", 10), ("Def + 2 Pos.", 2), ("def+0pos", 0)]
)
def test_parse_setting(setting, expected):
    assert parse_setting(setting) == expected


@pytest.mark.parametrize("setting", ["", "pos", "def+pos", "def+2", "def2pos", "def+-1pos", None])
def test_parse_setting_rejects(setting):
    with pytest.raises(ValueError, match="`setting`"):
        parse_setting(setting)


# Collator.


def test_batch_keys_shapes_and_task_keys(tokenizer):
    batch = TagiDataCollator(tokenizer)(ROWS)
    tensors = [
        "instruction_input_ids",
        "instruction_attention_mask",
        "input_ids",
        "attention_mask",
        "teacher_input_ids",
        "teacher_attention_mask",
        "labels",
    ]
    assert list(batch) == [*tensors, "task_keys", "task_categories"]
    assert batch["task_keys"] == ["t1", "t2"]
    for name in tensors:
        assert batch[name].dtype == torch.long and batch[name].shape[0] == 2
    for prefix in ("instruction_", "", "teacher_"):
        ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
        assert ids.shape == mask.shape
        assert torch.equal(ids == tokenizer.pad_token_id, mask == 0)  # dynamic padding: longest row has no pad
        assert mask.sum(dim=1).max() == ids.shape[1]


@pytest.mark.parametrize("setting", ["def", "def+2pos"])
def test_texts_seen_by_hypernetwork_student_and_teacher(tokenizer, setting):
    batch = TagiDataCollator(tokenizer, setting=setting)(ROWS)
    num_pos = parse_setting(setting)
    for i, row in enumerate(ROWS):
        instruction = format_instruction(row["definition"], row["positive_examples"], num_pos)
        assert _decode(tokenizer, batch["instruction_input_ids"][i]) == instruction
        student = _decode(tokenizer, batch["input_ids"][i])
        assert student == format_student_input(row["input"])
        assert "Definition" not in student and row["definition"] not in student
        teacher = batch["teacher_input_ids"][i][batch["teacher_attention_mask"][i].bool()].tolist()
        assert teacher == tokenizer(format_teacher_input(instruction, row["input"]))["input_ids"]
    assert ("Positive Example" in _decode(tokenizer, batch["instruction_input_ids"][0])) == (num_pos > 0)


def test_labels_are_the_first_output_with_ignored_padding(tokenizer):
    labels = TagiDataCollator(tokenizer)(ROWS)["labels"]
    first = tokenizer("dog sun cat")["input_ids"]
    second = tokenizer("1")["input_ids"]
    assert labels[0, : len(first)].tolist() == first
    assert labels[1].tolist() == second + [-100] * (labels.shape[1] - len(second))
    custom = TagiDataCollator(tokenizer, label_pad_token_id=-1)(ROWS)["labels"]
    assert (custom[1, len(second) :] == -1).all()


def test_truncation_to_max_lengths(tokenizer):
    collator = TagiDataCollator(
        tokenizer, setting="def+2pos", max_instruction_length=6, max_input_length=5, max_target_length=2
    )
    batch = collator(ROWS)
    assert batch["instruction_input_ids"].shape[1] == 6 and batch["input_ids"].shape[1] == 5
    assert batch["labels"].shape[1] == 2
    assert batch["instruction_input_ids"][0, -1] == tokenizer.eos_token_id  # truncation keeps the final </s>


def test_long_teacher_input_keeps_the_instance(tokenizer):
    collator = TagiDataCollator(tokenizer, setting="def+2pos", max_instruction_length=8, max_input_length=40)
    batch = collator(ROWS[:1])
    teacher = batch["teacher_input_ids"][0].tolist()
    assert len(teacher) == 48 == collator.max_teacher_length
    tail = tokenizer("Now complete the following example -\n" + format_student_input(ROWS[0]["input"]))["input_ids"]
    assert teacher[-len(tail) :] == tail
    assert _decode(tokenizer, batch["teacher_input_ids"][0]).startswith("Definition: Reverse")


def test_without_teacher_inputs(tokenizer):
    batch = TagiDataCollator(tokenizer, teacher_inputs=False)(ROWS)
    assert not any(key.startswith("teacher_") for key in batch)


def test_works_on_loader_rows(tokenizer, tmp_path):
    from tagi_hf.data import load_sni, write_synthetic_suite

    data = load_sni(write_synthetic_suite(tmp_path, instances_per_task=2), splits=("test",))["test"]
    rows = [data[i] for i in range(4)]
    batch = TagiDataCollator(tokenizer, setting="def+2pos")(rows)
    assert batch["task_keys"] == [row["task"] for row in rows]
    assert _decode(tokenizer, batch["input_ids"][0]) == format_student_input(rows[0]["input"])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"setting": "def+x"}, "`setting`"),
        ({"max_instruction_length": 0}, "`max_instruction_length`"),
        ({"max_input_length": -1}, "`max_input_length`"),
        ({"max_target_length": 0}, "`max_target_length`"),
        ({"max_input_length": 10, "max_teacher_length": 5}, "`max_teacher_length`"),
    ],
)
def test_invalid_arguments(tokenizer, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        TagiDataCollator(tokenizer, **kwargs)


def test_empty_batch(tokenizer):
    with pytest.raises(ValueError, match="`rows`"):
        TagiDataCollator(tokenizer)([])
