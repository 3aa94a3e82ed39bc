import random

import pytest
from transformers import AutoTokenizer

from tagi_hf.data import WORDS, build_synthetic_tasks, format_teacher_input, synthetic_corpus, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(synthetic_corpus(0, 1500), vocab_size=600)


def _suite_texts() -> list[str]:
    """Definitions, inputs and outputs of every task of the suite (train, dev and test), plus prompts."""
    rng, texts = random.Random(0), []
    for task in (task for split in build_synthetic_tasks(0).values() for task in split):
        inputs = [" ".join(rng.choices(WORDS, k=rng.randint(4, 7))) for _ in range(3)]
        texts += [task.definition, *inputs, *(task.output(text) for text in inputs)]
        texts.append(format_teacher_input("Definition: " + task.definition, inputs[0]))
    return texts


def test_t5_special_token_ids_and_eos(tokenizer):
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("cat dog")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1
    assert tokenizer("cat", add_special_tokens=False)["input_ids"][-1] != 1
    assert len(tokenizer) <= 600


@pytest.mark.parametrize(
    "text",
    ["CAT DOG", "cat-dog", "cat+dog", "cat/dog", "3 5 4 12", "none", "owl kite drum rose gold", "a  b", "Q: x?\n"],
)
def test_lossless_round_trip_of_special_cases(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_lossless_round_trip_of_all_suite_texts(tokenizer):
    texts = _suite_texts()
    encoded = tokenizer(texts)["input_ids"]
    decoded = tokenizer.batch_decode(encoded, skip_special_tokens=True)
    assert decoded == texts


def test_merges_make_suite_words_short(tokenizer):
    # A word of V seen in training is one or two tokens, not a letter each.
    assert len(tokenizer("apple", add_special_tokens=False)["input_ids"]) <= 2


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Reverse the order of the words. CAT-DOG 7"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2)
    assert reloaded.decode(reloaded(text)["input_ids"], skip_special_tokens=True) == text


def test_sentinels_follow_t5_order(tmp_path):
    tokenizer = train_tokenizer(["cat dog sun"] * 20, vocab_size=300, extra_ids=3)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids("<extra_id_2>") == len(tokenizer) - 3
    ids = tokenizer("cat <extra_id_1> sun")["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<extra_id_1>") in ids
    assert "<extra_id_1>" not in tokenizer.decode(ids, skip_special_tokens=True)
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("cat <extra_id_1> sun")["input_ids"] == ids


def test_invalid_sizes():
    with pytest.raises(ValueError, match="`vocab_size`"):
        train_tokenizer(["cat"], vocab_size=50)
    with pytest.raises(ValueError, match="`extra_ids`"):
        train_tokenizer(["cat"], extra_ids=-1)
