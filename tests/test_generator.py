"""The generator that reads the instruction (issue 12): a separate trainable instruction encoder, attention pooling,
their own learning rate, and task-balanced batches."""

import pytest
import torch
from datasets import Dataset

from tagi_hf import TagiConfig, TagiModel
from tagi_hf.data import TaskBalancedSampler
from tagi_hf.modeling.generator import AttentionPooling, masked_mean
from tagi_hf.training.arguments import TagiTrainingArguments
from tagi_hf.training.trainer import TagiTrainer
from tiny import FLOAT32_ROUNDING, batch, tiny_model, tiny_text_config, tiny_tokenizer

NEW = dict(instruction_encoder="separate", instruction_pooling="attention")


def _same_weights(model: TagiModel, reference: TagiModel) -> TagiModel:
    """`model` with `reference`'s weights for every part they share (the new parts keep their start values)."""
    result = model.load_state_dict(reference.state_dict(), strict=False)
    assert result.unexpected_keys == []
    if model.instruction_encoder is not None:
        model.instruction_encoder.load_state_dict(model.backbone.encoder.state_dict())
    return model


def test_attention_pooling_starts_as_the_masked_mean():
    torch.manual_seed(0)
    pool = AttentionPooling(d_model=16, num_slots=3, num_heads=4).double()  # float64: a weighted sum vs a mean
    torch.nn.init.normal_(pool.key.weight)
    states = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])  # the second instruction is empty
    pooled = pool(states, mask)
    assert pooled.shape == (2, 3, 16)
    torch.testing.assert_close(pooled[0], masked_mean(states, mask)[0].expand(3, -1), rtol=0, atol=1e-12)
    assert torch.equal(pooled[1], torch.zeros(3, 16, dtype=torch.float64))  # empty pools to zero, like the mean


def test_attention_pooling_gives_each_slot_its_own_vector_and_ignores_padding():
    torch.manual_seed(0)
    pool = AttentionPooling(d_model=16, num_slots=3, num_heads=4)
    with torch.no_grad():
        pool.query.normal_()
        torch.nn.init.normal_(pool.key.weight)
    states = torch.randn(1, 4, 16)
    mask = torch.tensor([[1, 1, 1, 0]])
    pooled = pool(states, mask)
    assert not torch.allclose(pooled[0, 0], pooled[0, 1])
    altered = states.clone()
    altered[0, 3] = 100.0  # a padded position: must not change anything
    assert torch.equal(pool(altered, mask), pooled)  # exact by design: a padded position's weight is exactly 0


@pytest.mark.parametrize("kwargs", [NEW, dict(instruction_encoder="separate"), dict(instruction_pooling="attention")])
@pytest.mark.parametrize("fusion", ["cross_attention", "none"])
def test_new_generator_starts_as_the_old_one(kwargs, fusion):
    """Copy of the backbone's encoder + zero queries: the same adapters as the frozen encoder + masked mean."""
    reference = tiny_model(fusion).double()  # float64: summation order cannot blur the comparison
    model = _same_weights(tiny_model(fusion, **kwargs).double(), reference)
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=1e-10)


def test_fresh_separate_encoder_is_a_copy_of_the_backbone_encoder():
    model = tiny_model(perturb=False, instruction_encoder="separate")
    ours, theirs = model.instruction_encoder.state_dict(), model.backbone.encoder.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.instruction_encoder.embed_tokens is not model.backbone.shared  # its own embedding, trainable


def test_gradients_reach_the_separate_encoder_and_pooling_not_the_backbone():
    model = tiny_model(**NEW)
    model.train()
    model(**batch()).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert param.grad is None, name
        elif name.startswith(("instruction_encoder.", "generator.pooling.query")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    report = model.trainable_parameters_report()
    assert report["instruction_encoder"] == sum(p.numel() for p in model.instruction_encoder.parameters())
    assert report["backbone"] == 0
    model.set_trainable(instruction_encoder=False)
    assert model.trainable_parameters_report()["instruction_encoder"] == 0


def test_instruction_changes_the_adapter_through_the_new_generator():
    model = tiny_model(**NEW)
    tok = tiny_tokenizer()
    a, b = model.generate_adapter(["sort the words", "reverse the order of words"], tokenizer=tok)
    name = next(iter(a.lora_factors))
    assert not torch.allclose(a.lora_factors[name][1], b.lora_factors[name][1])


def test_save_load_round_trip_and_upgrade_from_an_old_model(tmp_path):
    model = tiny_model(**NEW)
    with torch.no_grad():
        model.generator.pooling.query.normal_()
        for p in model.instruction_encoder.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path / "new")
    loaded = TagiModel.from_pretrained(tmp_path / "new").eval()
    assert loaded.config.instruction_encoder == "separate" and loaded.config.instruction_pooling == "attention"
    inputs = batch()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())  # the same weights
    with torch.no_grad():  # read over the mapped file: rounded otherwise on some CPUs (see tiny.FLOAT32_ROUNDING)
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, **FLOAT32_ROUNDING)
    old = tiny_model()
    old.save_pretrained(tmp_path / "old")
    upgraded = TagiModel.from_pretrained(tmp_path / "old", **NEW).eval()
    encoder, backbone = upgraded.instruction_encoder.state_dict(), upgraded.backbone.encoder.state_dict()
    assert all(torch.equal(encoder[k], backbone[k]) for k in encoder)  # copied, not drawn at random
    with torch.no_grad():
        torch.testing.assert_close(upgraded.double()(**inputs).logits, old.double()(**inputs).logits, rtol=0,
                                   atol=1e-10)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instruction_encoder": "t5"}, "`instruction_encoder` must be one of \\('backbone', 'separate'\\)"),
        ({"instruction_pooling": "max"}, "`instruction_pooling` must be one of \\('mean', 'attention'\\)"),
        ({"pooling_num_heads": 5}, "`pooling_num_heads` \\(5\\) must divide d_model \\(32\\)"),
    ],
)
def test_bad_generator_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TagiConfig(text_config=tiny_text_config(), **kwargs)


# ------------------------------------------------------------------------------------------- training arguments
def _trainer(tmp_path, model, **kwargs):
    args = TagiTrainingArguments(
        output_dir=str(tmp_path), lambda_kl=0.0, lambda_ins=0.0, learning_rate=1e-3, report_to="none",
        per_device_train_batch_size=4, use_cpu=True, **kwargs,
    )  # fmt: skip
    rows = [{"task": f"t{i % 3}", "definition": "sort the words", "positive_examples": [], "input": "cat dog",
             "outputs": ["dog cat"]} for i in range(12)]  # fmt: skip
    from tagi_hf.data import TagiDataCollator

    return TagiTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                       data_collator=TagiDataCollator(tiny_tokenizer(), teacher_inputs=False))  # fmt: skip


def test_instruction_encoder_gets_its_own_learning_rate(tmp_path):
    model = tiny_model(**NEW)
    optimizer = _trainer(tmp_path, model, instruction_encoder_learning_rate=1e-4).create_optimizer()
    encoder = {id(p) for p in model.instruction_encoder.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= encoder or not ids & encoder  # no group mixes the two
        assert group["lr"] == (1e-4 if ids and ids <= encoder else 1e-3)
        seen |= ids
    assert encoder <= seen
    assert seen == {id(p) for p in model.parameters() if p.requires_grad}


def test_without_its_own_rate_the_encoder_trains_at_the_learning_rate(tmp_path):
    model = tiny_model(**NEW)
    optimizer = _trainer(tmp_path / "b", model).create_optimizer()
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}


def test_task_balanced_batches_in_the_trainer(tmp_path):
    trainer = _trainer(tmp_path, tiny_model(), examples_per_task=2)
    order = list(trainer._get_train_sampler())
    tasks = trainer.train_dataset["task"]
    for start in range(0, 12, 4):
        chunk = [tasks[i] for i in order[start : start + 4]]
        assert len(set(chunk)) == 2 and all(chunk.count(t) == 2 for t in set(chunk))
    trainer.train_dataset = trainer.train_dataset.remove_columns("task")
    with pytest.raises(ValueError, match="needs a `task` column"):
        trainer._get_train_sampler()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"examples_per_task": 5}, "`examples_per_task` must be between 0 and `per_device_train_batch_size` \\(4\\)"),
    ({"examples_per_task": -1}, "`examples_per_task` must be between 0"),
    ({"instruction_encoder_learning_rate": -1.0}, "`instruction_encoder_learning_rate` must be >= 0"),
])  # fmt: skip
def test_bad_generator_training_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TagiTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, **kwargs)


# ------------------------------------------------------------------------------------------------ the sampler
def test_sampler_batches_hold_distinct_tasks_capped_and_use_every_row_before_repeating():
    tasks = [f"t{i % 10}" for i in range(100)]  # 10 tasks x 10 rows
    sampler = TaskBalancedSampler(tasks, batch_size=16, examples_per_task=4, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 100
    for start in range(0, 96, 16):
        chunk = [tasks[i] for i in order[start : start + 16]]
        assert len(set(chunk)) == 4 and max(chunk.count(t) for t in chunk) == 4
    per_task: dict[str, list[int]] = {}
    for i in order:
        per_task.setdefault(tasks[i], []).append(i)
    for rows in per_task.values():  # a task's first pass covers distinct rows
        first = rows[:10]
        assert len(set(first)) == len(first)


def test_sampler_order_depends_on_seed_and_epoch_only():
    tasks = [f"t{i % 7}" for i in range(70)]
    a = TaskBalancedSampler(tasks, 8, 2, seed=1)
    b = TaskBalancedSampler(tasks, 8, 2, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(TaskBalancedSampler(tasks, 8, 2, seed=2)) != list(a)


def test_sampler_with_fewer_tasks_than_a_batch_needs_fills_the_batch():
    sampler = TaskBalancedSampler(["a"] * 5 + ["b"] * 5, batch_size=8, examples_per_task=2)
    order = list(sampler)
    assert len(order) == 10 and all(0 <= i < 10 for i in order)


@pytest.mark.parametrize(("args", "message"), [
    ((["a"], 4, 0), "`examples_per_task` must be between 1 and `batch_size` \\(4\\)"),
    ((["a"], 4, 5), "`examples_per_task` must be between 1"),
    (([], 4, 2), "non-empty dataset"),
])  # fmt: skip
def test_sampler_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        TaskBalancedSampler(*args)


def test_init_by_module_type_starts_from_the_backbone():
    """`_init_weights` dispatches on TAGI's module types: B heads, fusion gates and pooling queries start at zero
    (so a fresh model is its backbone), A heads at the scale PEFT gives A, fusion projections at 1/sqrt(d_model)."""
    torch.manual_seed(0)
    config = TagiConfig(text_config=tiny_text_config(d_model=64, d_ff=128), lora_rank=4, hypernet_hidden_size=256)
    model = TagiModel(config)
    generator = model.generator
    assert all(torch.count_nonzero(p) == 0 for p in generator.heads_b.parameters())
    assert torch.count_nonzero(generator.pooling.query) == 0
    assert all(layer.gate.item() == 0 for layer in model.encoder_fusion)
    assert torch.count_nonzero(model.decoder_gates.weight) == 0
    head = generator.heads_a["q"]
    d_in = head.out_features // config.lora_rank
    assert head.weight.std().item() == pytest.approx((head.in_features * d_in) ** -0.5, rel=0.05)
    assert torch.count_nonzero(head.bias) == 0
    q = model.encoder_fusion[0].q.weight
    assert q.std().item() == pytest.approx(64**-0.5, rel=0.1)
    inputs = batch()
    with torch.no_grad():
        plain = model.backbone(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
        ).logits
        tagi = model(**inputs).logits
    torch.testing.assert_close(tagi, plain, rtol=0, atol=0)  # exact by design: the same weights, zero parts add 0
