"""Per-task work is done once per (adapter, model) through the public calls (`model(adapter=)`, `generate`)."""

import copy
import gc

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tagi_hf import GeneratedAdapter
from tiny import batch, tiny_model, tiny_tokenizer

TEXTS = ["reverse the order of words", "sort the words", "count the words and answer with a number"]


def _setup(fusion="cross_attention", seed=0):
    model = tiny_model(fusion, seed=seed).double()
    adapters = model.generate_adapter(TEXTS, tokenizer=tiny_tokenizer())
    inputs = {k: v for k, v in batch().items() if not k.startswith("instruction")}
    return model, adapters, inputs


def _logits(model, inputs, adapter):
    with torch.no_grad():
        return model(**inputs, adapter=adapter).logits


def _uncached(model, inputs, adapter):
    size = model.task_state_cache.max_size
    model.task_state_cache.max_size = 0
    model.task_state_cache.clear()
    try:
        return _logits(model, inputs, adapter)
    finally:
        model.task_state_cache.max_size = size


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("fusion", ["cross_attention", "none"])
def test_second_call_does_no_instruction_side_work(fusion):
    model, adapters, inputs = _setup(fusion)
    one = {k: v[:1] for k, v in inputs.items()}  # batch-1 calls, as a user loops over instances
    first = _flops(lambda: model(**one, adapter=adapters[0]))
    second = _flops(lambda: model(**one, adapter=adapters[0]))
    state = model.prepare_task_state(adapter=adapters[0])
    with_state = _flops(lambda: model(**one, task_state=state))
    assert second == with_state  # nothing beyond the instance's own pass
    if fusion == "cross_attention":
        assert first > second  # the fusion's instruction keys/values were computed on the first call only
    assert model.task_state_cache.hits >= 1 and len(model.task_state_cache) == 1


def test_generate_reuses_the_adapter_state():
    model, adapters, inputs = _setup()
    kwargs = dict(input_ids=inputs["input_ids"][:1], attention_mask=inputs["attention_mask"][:1], max_new_tokens=4)
    first = _flops(lambda: model.generate(**kwargs, adapter=adapters[1]))
    second = _flops(lambda: model.generate(**kwargs, adapter=adapters[1]))
    state = model.prepare_task_state(adapter=adapters[1])
    assert second == _flops(lambda: model.generate(**kwargs, task_state=state)) < first
    torch.testing.assert_close(
        model.generate(**kwargs, adapter=adapters[1]), model.generate(**kwargs, task_state=state), rtol=0, atol=0
    )


def test_cached_outputs_equal_uncached_and_do_not_leak_between_adapters():
    model, adapters, inputs = _setup()
    for adapter in [adapters[0], adapters[1], adapters[0], adapters[2], adapters[1]]:
        torch.testing.assert_close(_logits(model, inputs, adapter), _uncached(model, inputs, adapter), rtol=0, atol=0)
    assert not torch.equal(_logits(model, inputs, adapters[0]), _logits(model, inputs, adapters[1]))


def test_mixed_batch_reuses_each_adapters_state():
    model, adapters, inputs = _setup()
    rows = [adapters[2], adapters[0], adapters[2]]
    expected = _uncached(model, inputs, rows)
    model.task_state_cache.hits = model.task_state_cache.misses = 0
    torch.testing.assert_close(_logits(model, inputs, rows), expected, rtol=0, atol=1e-12)
    assert (model.task_state_cache.hits, model.task_state_cache.misses) == (0, 2)  # two distinct adapters
    torch.testing.assert_close(_logits(model, inputs, rows), expected, rtol=0, atol=1e-12)
    assert model.task_state_cache.hits == 2
    for i, adapter in enumerate(rows):  # each row as if alone
        alone = _uncached(model, {k: v[i : i + 1] for k, v in inputs.items()}, adapter)
        torch.testing.assert_close(expected[i : i + 1], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "change",
    ["in_place_edit", "optimizer_step", "load_state_dict", "dtype"],
)
def test_a_changed_model_recomputes(change):
    model, adapters, inputs = _setup()
    _logits(model, inputs, adapters[0])  # cached
    misses = model.task_state_cache.misses
    if change == "in_place_edit":
        with torch.no_grad():
            model.encoder_fusion[0].k.weight.mul_(1.5)
    elif change == "optimizer_step":
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        model(**inputs, adapter=adapters[0]).loss.backward()
        optimizer.step()
    elif change == "load_state_dict":
        other = tiny_model(seed=1).double()
        model.load_state_dict(other.state_dict())
    else:
        model.float()
    after = _logits(model, inputs, adapters[0])
    assert model.task_state_cache.misses == misses + 1
    torch.testing.assert_close(after, _uncached(model, inputs, adapters[0]), rtol=0, atol=0)


def test_a_decoder_weight_change_recomputes():
    model, adapters, inputs = _setup()
    before = _logits(model, inputs, adapters[0])
    with torch.no_grad():  # the decoder's cross-attention k/v read the instruction states too
        model.backbone.decoder.block[0].layer[1].EncDecAttention.v.weight.mul_(2.0)
    after = _logits(model, inputs, adapters[0])
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _uncached(model, inputs, adapters[0]), rtol=0, atol=0)


def test_an_edited_adapter_recomputes():
    model, adapters, inputs = _setup()
    before = _logits(model, inputs, adapters[0])
    adapters[0].instruction_states.mul_(0.5)
    after = _logits(model, inputs, adapters[0])
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _uncached(model, inputs, adapters[0]), rtol=0, atol=0)


def test_no_leak_between_models():
    model, adapters, inputs = _setup()
    other = tiny_model(seed=1).double()
    expected_other = _uncached(other, inputs, adapters[0])
    _logits(model, inputs, adapters[0])
    torch.testing.assert_close(_logits(other, inputs, adapters[0]), expected_other, rtol=0, atol=0)
    clone = copy.deepcopy(model)
    assert len(clone.task_state_cache) == 0 and len(model.task_state_cache) == 1
    with torch.no_grad():
        clone.encoder_fusion[1].v.weight.add_(0.1)
    torch.testing.assert_close(_logits(clone, inputs, adapters[0]), _uncached(clone, inputs, adapters[0]))
    assert not torch.equal(_logits(clone, inputs, adapters[0]), _logits(model, inputs, adapters[0]))


def test_cache_is_bounded_and_drops_dead_adapters():
    model, adapters, inputs = _setup()
    model.task_state_cache.max_size = 2
    for adapter in adapters:
        _logits(model, inputs, adapter)
    assert len(model.task_state_cache) == 2
    _logits(model, inputs, adapters[0])  # the least recently used one was dropped: recomputed
    assert model.task_state_cache.misses == 4
    fresh = GeneratedAdapter(
        lora_factors={n: (a.clone(), b.clone()) for n, (a, b) in adapters[1].lora_factors.items()},
        lora_alpha=adapters[1].lora_alpha,
        instruction_states=adapters[1].instruction_states.clone(),
    )
    _logits(model, inputs, fresh)
    assert len(model.task_state_cache) == 2
    del fresh
    gc.collect()
    assert len(model.task_state_cache) == 1  # its entry went with it


def test_states_with_gradients_are_never_reused():
    model, adapters, inputs = _setup()
    model.train()
    grads = []
    for _ in range(2):  # a cached graph would fail on the second backward
        model(**inputs, adapter=adapters[0]).loss.backward()
        assert len(model.task_state_cache) == 0
        grads.append(model.encoder_fusion[0].k.weight.grad.clone())
    # The fusion's keys are reached through the task state: each pass built its own and added the same gradient.
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], 2 * grads[0], rtol=1e-12, atol=0)  # float64


def test_negative_cache_size_is_refused():
    from tagi_hf.modeling.task_state import TaskStateCache

    with pytest.raises(ValueError, match="`max_size` must be >= 0"):
        TaskStateCache(-1)
