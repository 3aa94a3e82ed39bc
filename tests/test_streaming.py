"""generate_adapters_to_disk: same files as hub.save_adapters, one batch of adapters alive at a time, atomic."""

import gc
import weakref

import pytest
import torch

from tagi_hf.hub import load_adapters, save_adapters
from tagi_hf.hub.collections import generate_adapters_to_disk
from tiny import tiny_model, tiny_tokenizer

WORDS = "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat".split()
INSTRUCTIONS = [f"reverse the order of words then add {WORDS[i]} at end" for i in range(7)]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
def test_streamed_directory_equals_save_adapters_byte_for_byte(tmp_path, fusion):
    model, tokenizer = tiny_model(fusion), tiny_tokenizer()
    out = generate_adapters_to_disk(model, tokenizer, iter(INSTRUCTIONS), tmp_path / "streamed", batch_size=3)
    in_memory = model.generate_adapter(INSTRUCTIONS, tokenizer, batch_size=3)
    save_adapters(in_memory, tmp_path / "saved")
    streamed, saved = _files(out), _files(tmp_path / "saved")
    per_adapter = 5 if fusion != "none" else 4  # config, weights, (instruction states), provenance, card
    assert len(streamed) == 7 * per_adapter + 2
    assert streamed == saved
    loaded = load_adapters(out)
    assert list(loaded) == [f"{i:03d}-reverse-the-order-of-words-then" for i in range(7)]
    for adapter, expected in zip(loaded.values(), in_memory):
        assert adapter.instruction == expected.instruction
        for name, (a, b) in expected.lora_factors.items():
            assert torch.equal(adapter.lora_factors[name][0], a) and torch.equal(adapter.lora_factors[name][1], b)


def test_one_batch_of_adapters_is_alive_at_a_time(tmp_path, monkeypatch):
    model, consumed, alive_at_call = tiny_model("none"), [], []
    refs: list[weakref.ref] = []
    generate = model.generate_adapter

    def spy(texts, tokenizer, **kwargs):
        gc.collect()
        alive_at_call.append(sum(r() is not None for r in refs))
        consumed.append(len(read))
        adapters = generate(texts, tokenizer, **kwargs)
        refs.extend(weakref.ref(a) for a in adapters)
        return adapters

    monkeypatch.setattr(model, "generate_adapter", spy)
    read = []

    def lazily():
        for text in INSTRUCTIONS:
            read.append(text)
            yield text

    generate_adapters_to_disk(model, tiny_tokenizer(), lazily(), tmp_path / "out", batch_size=2)
    assert consumed == [2, 4, 6, 7]  # read lazily: only the batch being generated
    assert alive_at_call == [0, 0, 0, 0]  # the previous batch's adapters are gone before the next is generated


def test_names_are_checked_and_used(tmp_path):
    model, tokenizer = tiny_model("none"), tiny_tokenizer()
    names = [f"task-{i}" for i in range(3)]
    out = generate_adapters_to_disk(model, tokenizer, INSTRUCTIONS[:3], tmp_path / "named", names=iter(names))
    assert list(load_adapters(out)) == names
    cases = [
        (["a", "b"], "`names` ran out at instruction 2"),
        (["a", "b", "c", "d"], "`names` has more entries than the 3 instructions"),
        (["a", "a", "b"], "duplicate 'a' \\(instruction 1\\)"),
        (["a", "../b", "c"], "'../b' is not a valid subfolder name"),
        (["a", "index.json", "c"], "'index.json' is not a valid subfolder name"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            generate_adapters_to_disk(model, tokenizer, INSTRUCTIONS[:3], tmp_path / "bad", names=bad)
        assert not (tmp_path / "bad").exists()


def test_bad_instructions_and_arguments_name_the_problem(tmp_path):
    model, tokenizer = tiny_model("none"), tiny_tokenizer()
    with pytest.raises(ValueError, match=r"`instructions\[4\]` is empty or whitespace"):
        generate_adapters_to_disk(model, tokenizer, [*INSTRUCTIONS[:4], "  \n"], tmp_path / "a", batch_size=2)
    with pytest.raises(ValueError, match="`instructions` is empty"):
        generate_adapters_to_disk(model, tokenizer, iter([]), tmp_path / "a")
    with pytest.raises(ValueError, match="not one string"):
        generate_adapters_to_disk(model, tokenizer, "sort the words", tmp_path / "a")
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer, got 0"):
        generate_adapters_to_disk(model, tokenizer, INSTRUCTIONS, tmp_path / "a", batch_size=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary folder left


def test_a_crash_midway_keeps_the_previous_directory(tmp_path):
    model, tokenizer = tiny_model("none"), tiny_tokenizer()
    out = generate_adapters_to_disk(model, tokenizer, INSTRUCTIONS[:2], tmp_path / "out")
    before = _files(out)

    def crashing():
        yield from INSTRUCTIONS[:5]
        raise RuntimeError("instruction source failed")

    with pytest.raises(RuntimeError, match="instruction source failed"):
        generate_adapters_to_disk(model, tokenizer, crashing(), out, batch_size=2)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_index_of_another_schema_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "index.json").write_text('[{"index": 0, "path": "adapter-000"}]')
    with pytest.raises(ValueError, match="not a `save_adapters` index.*deleting its index.json"):
        load_adapters(tmp_path)
