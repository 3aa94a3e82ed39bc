"""The stand-in backbone's pretraining data: prefix-LM splits and formatted train instances."""

from __future__ import annotations

import pytest
import torch
from transformers import Seq2SeqTrainer, T5ForConditionalGeneration

from tagi_hf.data import PrefixLMCollator, TagiDataCollator, load_sni, train_tokenizer, write_synthetic_suite
from tagi_hf.data.prompts import TEACHER_BRIDGE
from tagi_hf.recipes import standin
from tagi_hf.recipes.standin import instance_texts, pretrain_standin, standin_config


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    suite = write_synthetic_suite(tmp_path_factory.mktemp("suite"), seed=0, instances_per_task=3)
    return load_sni(suite, max_train_instances_per_task=3, seed=0, splits=("train",))["train"]


@pytest.fixture(scope="module")
def tokenizer(rows):
    texts = instance_texts(rows) + list(rows["definition"])
    return train_tokenizer(texts, vocab_size=400)


def test_instance_texts_mix_both_formats_and_end_with_the_output(rows):
    texts = instance_texts(rows, seed=0)
    assert len(texts) == len(rows)
    with_definition = [t for t in texts if t.startswith("Definition: ")]
    alone = [t for t in texts if t.startswith("Input: ")]
    assert len(with_definition) + len(alone) == len(texts)
    assert 0.4 < len(with_definition) / len(texts) < 0.6  # about half each
    for text, row in zip(texts, rows):
        assert text.endswith("\nOutput: " + row["outputs"][0])
        assert (row["definition"] in text) == text.startswith("Definition: ")
        assert (TEACHER_BRIDGE in text) == text.startswith("Definition: ")
    assert instance_texts(rows, seed=0) == texts and instance_texts(rows, seed=1) != texts


def test_boundary_split_matches_the_training_collator_exactly(rows, tokenizer):
    """Split at the output, a text gives the student's input ids and labels of `TagiDataCollator`."""
    row = rows[0]
    text = "Input: " + row["input"] + ".\nOutput: " + row["outputs"][0]
    batch = PrefixLMCollator(tokenizer, boundary_probability=1.0)([{"text": text}])
    expected = TagiDataCollator(tokenizer)([row])
    assert batch["input_ids"][0].tolist() == expected["input_ids"][0].tolist()
    assert batch["labels"][0].tolist() == expected["labels"][0].tolist()


def test_without_boundary_the_split_is_random_and_lossless(tokenizer):
    text = "cat dog sun moon owl tree fish"
    collator = PrefixLMCollator(tokenizer, seed=0, boundary_probability=1.0)  # no boundary in the text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cuts = set()
    for _ in range(20):
        batch = collator([{"text": text}])
        source = [t for t in batch["input_ids"][0].tolist() if t != tokenizer.pad_token_id][:-1]
        target = [t for t in batch["labels"][0].tolist() if t != -100][:-1]
        assert source + target == ids  # prefix + continuation is the text, eos stripped
        cuts.add(len(source))
    assert len(cuts) > 1


def test_boundary_probability_sets_how_often_the_split_is_at_the_output(rows, tokenizer):
    texts = [{"text": t} for t in instance_texts(rows)[:40]]

    def at_boundary(probability: float) -> int:
        batch = PrefixLMCollator(tokenizer, seed=0, boundary_probability=probability)(texts)
        sources = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        return sum(s.rstrip().endswith("\nOutput:") for s in sources)

    assert at_boundary(1.0) == len(texts)
    assert at_boundary(0.0) < len(texts) // 4


@pytest.mark.usefixtures("single_thread")
def test_an_interrupted_pretraining_resumes_from_its_checkpoint(rows, tokenizer, tmp_path, monkeypatch):
    """Stopped at step 3 (checkpoint at step 2), a second call trains only steps 3-6 and ends with the weights of a
    run never stopped, bit for bit (on one thread, as test_trainer's resume test); the checkpoint folder is removed
    once the model is saved."""
    texts = instance_texts(rows, definition_fraction=1.0)
    config = standin_config(len(tokenizer), d_model=16, num_layers=1)
    kwargs = dict(config=config, max_steps=6, batch_size=4, save_steps=2, boundary_probability=1.0)
    pretrain_standin(texts, tokenizer, tmp_path / "reference", **kwargs)
    steps: list[int] = []
    stop_at = {3}

    class Stopping(Seq2SeqTrainer):
        def training_step(self, *args, **kw):
            steps.append(self.state.global_step)
            if self.state.global_step in stop_at:
                stop_at.clear()
                raise KeyboardInterrupt("stopped")
            return super().training_step(*args, **kw)

    monkeypatch.setattr(standin, "Seq2SeqTrainer", Stopping)
    with pytest.raises(KeyboardInterrupt):
        pretrain_standin(texts, tokenizer, tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()
    assert (tmp_path / ".run-work" / "checkpoint-2").is_dir()
    assert steps == [0, 1, 2, 3]
    steps.clear()
    pretrain_standin(texts, tokenizer, tmp_path / "run", **kwargs)
    assert steps == [2, 3, 4, 5]  # resumed after step 2, did not start over
    assert not (tmp_path / ".run-work").exists()
    expected = T5ForConditionalGeneration.from_pretrained(tmp_path / "reference").state_dict()
    got = T5ForConditionalGeneration.from_pretrained(tmp_path / "run").state_dict()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
