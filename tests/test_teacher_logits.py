"""Teacher logits cached once per training example (tagi_hf.training.teacher_logits) and the top-k KL they feed."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import T5ForConditionalGeneration

from tagi_hf.data import TagiDataCollator
from tagi_hf.training.losses import SparseTeacher, distillation_kl_loss, sparse_distillation_kl_loss
from tagi_hf.training.teacher_logits import SPARSE_TEACHER_COLUMNS, cache_teacher_logits
from tagi_hf.training.trainer import TagiTrainer
from test_trainer import FakeBank, _args, _rows
from tiny import tiny_model, tiny_tokenizer


def _sparse(teacher_logits: torch.Tensor, k: int, temperature: float) -> SparseTeacher:
    values, ids = teacher_logits.topk(k, dim=-1)
    return SparseTeacher(ids, values, torch.logsumexp(teacher_logits / temperature, -1))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_kl_with_the_whole_vocabulary_is_the_kl(temperature):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 11, generator=gen, dtype=torch.float64) * 3
    labels = torch.tensor([[1, 2, 3, -100], [4, -100, -100, -100]])
    full = distillation_kl_loss(student, teacher, labels, temperature)
    sparse = sparse_distillation_kl_loss(student, _sparse(teacher, 11, temperature), labels, temperature)
    torch.testing.assert_close(sparse, full, rtol=1e-10, atol=1e-12)
    (grad_full,) = torch.autograd.grad(full, student)
    (grad_sparse,) = torch.autograd.grad(sparse, student)
    torch.testing.assert_close(grad_sparse, grad_full, rtol=1e-8, atol=1e-12)


def test_sparse_kl_lumps_only_the_tail():
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(1, 3, 20, generator=gen, dtype=torch.float64)
    teacher = torch.randn(1, 3, 20, generator=gen, dtype=torch.float64) * 2
    labels = torch.tensor([[5, 6, 7]])
    full = distillation_kl_loss(student, teacher, labels)
    for k in (1, 4, 19):  # merging outcomes never raises the KL
        assert sparse_distillation_kl_loss(student, _sparse(teacher, k, 1.0), labels) <= full + 1e-12
    peaked = teacher.clone()
    peaked[..., 4:] = -1e4  # no teacher mass beyond the 4 kept tokens: the lumped tail adds nothing
    torch.testing.assert_close(
        sparse_distillation_kl_loss(student, _sparse(peaked, 4, 1.0), labels),
        distillation_kl_loss(student, peaked, labels),
        rtol=1e-10,
        atol=1e-12,
    )


def _cache(tmp_path, teacher, k=200, temperature=1.0, name="cache"):
    collator = TagiDataCollator(tiny_tokenizer(), max_input_length=16, max_target_length=8)
    data = Dataset.from_list(_rows())
    return cache_teacher_logits(teacher, data, collator, tmp_path / name, top_k=k, temperature=temperature)


def test_cache_holds_one_entry_per_label_token_and_is_reused(tmp_path):
    teacher = T5ForConditionalGeneration(tiny_model().config.text_config).eval()
    cached = _cache(tmp_path, teacher, k=5)
    assert set(SPARSE_TEACHER_COLUMNS) <= set(cached.column_names) and len(cached) == len(_rows())
    collator = TagiDataCollator(tiny_tokenizer(), max_input_length=16, max_target_length=8)
    batch = collator([cached[i] for i in range(4)])
    labels = batch["labels"]
    assert batch["teacher_topk_ids"].shape == (*labels.shape, 5)
    with torch.no_grad():
        logits = teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"], labels=labels
        ).logits
    keep = labels != -100
    values, ids = logits.topk(5, dim=-1)
    assert torch.equal(batch["teacher_topk_ids"][keep], ids[keep])
    torch.testing.assert_close(batch["teacher_topk_logits"][keep], values[keep])
    torch.testing.assert_close(batch["teacher_log_normalizer"][keep], logits.logsumexp(-1)[keep])
    record = json.loads((tmp_path / "cache" / "teacher_logits.json").read_text())
    assert record["top_k"] == 5 and record["rows"] == len(_rows())
    with torch.no_grad():  # a second call loads the cache: the teacher is not run again
        teacher.lm_head.register_forward_hook(lambda *a: (_ for _ in ()).throw(AssertionError("teacher ran")))
        again = _cache(tmp_path, teacher, k=5)
    assert again["teacher_topk_ids"] == cached["teacher_topk_ids"]


def test_cache_for_other_settings_or_another_teacher_is_refused(tmp_path):
    teacher = T5ForConditionalGeneration(tiny_model().config.text_config).eval()
    _cache(tmp_path, teacher, k=5)
    with pytest.raises(ValueError, match="differing: temperature, top_k"):
        _cache(tmp_path, teacher, k=6, temperature=2.0)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(2)
    with pytest.raises(ValueError, match="differing: teacher_sha256"):
        _cache(tmp_path, teacher, k=5)
    with pytest.raises(ValueError, match="`top_k` must be >= 1"):
        _cache(tmp_path, teacher, k=0, name="other")


def _trainer(tmp_path, teacher, dataset, **kwargs):
    model = tiny_model("cross_attention").double()
    model.train()
    return TagiTrainer(
        model=model,
        args=_args(tmp_path, **kwargs),
        teacher_model=teacher,
        teacher_bank=FakeBank(model),
        train_dataset=dataset,
        data_collator=TagiDataCollator(tiny_tokenizer(), max_input_length=16, max_target_length=8),
    )


def test_trainer_loss_from_the_cache_equals_the_live_teacher(tmp_path):
    teacher = T5ForConditionalGeneration(tiny_model().config.text_config).eval()
    cached = _cache(tmp_path, teacher.double(), k=96)  # the whole (tiny) vocabulary: the exact KL
    live = _trainer(tmp_path, teacher, Dataset.from_list(_rows()), lambda_ins=0.0)
    from_cache = _trainer(tmp_path, None, cached, lambda_ins=0.0)
    collator = live.data_collator
    batch_live = collator(_rows()[:6])
    batch_cached = collator([cached[i] for i in range(6)])
    with torch.no_grad():
        loss_live = live.compute_loss(live.model, dict(batch_live))
        loss_cached = from_cache.compute_loss(from_cache.model, dict(batch_cached))
    torch.testing.assert_close(loss_cached, loss_live, rtol=1e-5, atol=0)  # the cache keeps float32 logits
    from_cache.train()  # trains without any teacher model
    assert any("loss_kl" in entry for entry in from_cache.state.log_history)


def test_trainer_refuses_a_cache_made_at_another_temperature(tmp_path):
    teacher = T5ForConditionalGeneration(tiny_model().config.text_config).eval()
    cached = _cache(tmp_path, teacher, k=5, temperature=2.0)
    trainer = _trainer(tmp_path, None, cached, lambda_ins=0.0, kl_temperature=1.0)
    batch = trainer.data_collator([cached[i] for i in range(2)])
    with pytest.raises(ValueError, match="temperature \\[2.0\\], training uses `kl_temperature`=1.0"):
        trainer.compute_loss(trainer.model, batch)
