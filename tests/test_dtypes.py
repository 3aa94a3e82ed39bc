"""Inference in bfloat16 and float16: `from_pretrained(dtype=...)` for TagiModel (T5) and TagiForCausalLM.

The tolerance: a low-precision forward rounds every stored weight and every intermediate to the dtype's machine
epsilon (2**-8 for bfloat16, 2**-11 for float16); through these two-layer models whose adapter is a moderate change
of the weights (the B heads scaled down below), the rounding adds up to a few epsilons of the logits' scale (2 to 6
seen). The bound is `32 * eps * max|logits|`: well above rounding, and below what the adapter itself changes (checked
in each test, so that an adapter dropped or applied twice would fail it).
"""

import pytest
import torch

from test_causal_lm import tiny_causal
from tiny import tiny_model, tiny_tokenizer

EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
BUILDERS = {"t5": tiny_model, "causal": tiny_causal}


pytestmark = pytest.mark.usefixtures("tiny_models_on_one_thread")


def _saved_model(family, fusion, path):
    model = BUILDERS[family](fusion=fusion)
    with torch.no_grad():  # a moderate adapter: its update comparable to the weights, not many times larger
        for param in model.generator.heads_b.parameters():
            param.mul_(0.1)
    model.save_pretrained(path)
    return model


def _logits(model, ids, labels, adapter):
    kwargs = {"labels": labels} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=ids, adapter=adapter, **kwargs).logits.float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fusion", ["none", "cross_attention"])
@pytest.mark.parametrize("family", ["t5", "causal"])
def test_from_pretrained_in_low_precision_generates_and_runs_close_to_float32(family, fusion, dtype, tmp_path):
    reference = _saved_model(family, fusion, tmp_path)
    model = type(reference).from_pretrained(tmp_path, dtype=dtype).eval()
    assert model.dtype == dtype
    assert {p.dtype for p in model.generator.parameters()} == {dtype}
    if family == "causal":  # T5 keeps its feed-forward output `wo` in float32 (transformers' _keep_in_fp32_modules)
        assert {p.dtype for p in model.parameters()} == {dtype}

    tokenizer = tiny_tokenizer()
    adapter = model.generate_adapter("sort the words", tokenizer=tokenizer)
    assert {t.dtype for pair in adapter.lora_factors.values() for t in pair} == {dtype}
    assert (adapter.instruction_states is None) == (fusion == "none")
    if adapter.instruction_states is not None:
        assert adapter.instruction_states.dtype == dtype
    expected_adapter = reference.generate_adapter("sort the words", tokenizer=tokenizer)
    for name, (lora_a, lora_b) in expected_adapter.lora_factors.items():
        low_a, low_b = adapter.lora_factors[name]
        for low, high in ((low_a, lora_a), (low_b, lora_b)):
            assert (low.float() - high).abs().max() <= 32 * EPS[dtype] * high.abs().max(), name

    g = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(3, 96, (2, 7), generator=g), torch.randint(3, 96, (2, 4), generator=g)
    expected = _logits(reference, ids, labels, expected_adapter)
    bound = 32 * EPS[dtype] * expected.abs().max()
    other = reference.generate_adapter("reverse the order of words", tokenizer=tokenizer)
    assert (_logits(reference, ids, labels, other) - expected).abs().max() > 2 * bound  # the adapter matters
    low = _logits(model, ids, labels, adapter)
    assert (low - expected).abs().max() <= bound
    # A float32 adapter (e.g. saved by a float32 model) serves the low-precision model too: it is cast on use.
    assert (_logits(model, ids, labels, expected_adapter) - expected).abs().max() <= bound

    generated = model.generate(input_ids=ids, adapter=adapter, max_new_tokens=4, do_sample=False)
    prompt = 0 if family == "t5" else ids.shape[1]
    assert generated.shape[0] == 2 and prompt < generated.shape[1] <= prompt + 5
    assert int(generated.max()) < model.config.text_config.vocab_size
