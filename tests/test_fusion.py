"""The decoder fusion is the paper's attention over the concatenation `(I ; F_L)`, gated (fusion.py's docstring)."""

import pytest
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Attention

from tagi_hf.modeling.fusion import InstructionCrossAttention, instruction_kv
from tiny import tiny_text_config


def _attention(seed=0) -> InstructionCrossAttention:
    torch.manual_seed(seed)
    config = tiny_text_config()
    config._attn_implementation = "sdpa"
    attention = T5Attention(config, has_relative_attention_bias=False, layer_idx=0).double().eval()
    attention.__class__ = InstructionCrossAttention
    return attention


def _reference(attention, hidden, source, source_mask, instruction, instruction_mask, gate):
    """`O(Attn(F) + tanh(g) (Attn((I ; F)) - Attn(F)))`, every softmax written out."""
    split = lambda x: x.view(*x.shape[:2], -1, attention.key_value_proj_dim).transpose(1, 2)  # noqa: E731
    q, k_f, v_f = split(attention.q(hidden)), split(attention.k(source)), split(attention.v(source))
    k_i, v_i = split(attention.k(instruction)), split(attention.v(instruction))
    neg = torch.finfo(hidden.dtype).min
    bias_f = (1 - source_mask[:, None, None, :].double()) * neg
    bias_i = (1 - instruction_mask[:, None, None, :].double()) * neg
    attn_f = torch.softmax(q @ k_f.transpose(-1, -2) + bias_f, -1) @ v_f
    scores = torch.cat([q @ k_i.transpose(-1, -2) + bias_i, q @ k_f.transpose(-1, -2) + bias_f], -1)
    concat = torch.softmax(scores, -1) @ torch.cat([v_i, v_f], 2)
    mixed = attn_f + torch.tanh(gate) * (concat - attn_f)
    return attention.o(mixed.transpose(1, 2).reshape(*hidden.shape[:2], -1))


@pytest.mark.parametrize("gate", [0.0, 0.7])
def test_decoder_fusion_is_the_gated_attention_over_the_concatenation(gate):
    attention = _attention()
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 3, 32, generator=gen, dtype=torch.float64)
    source = torch.randn(2, 5, 32, generator=gen, dtype=torch.float64)
    instruction = torch.randn(2, 4, 32, generator=gen, dtype=torch.float64)
    source_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    instruction_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    gate_t = torch.tensor(gate, dtype=torch.float64)
    expected = _reference(attention, hidden, source, source_mask, instruction, instruction_mask, gate_t)
    attention.tagi_instruction = instruction_kv(attention, instruction, instruction_mask)
    attention.tagi_gate = gate_t
    mask = source_mask[:, None, None, :].bool()
    out, _, _ = attention(hidden, mask=mask, key_value_states=source)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # Decoding: the first step fills the cross-attention cache, the second reads it.
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    steps = [attention(hidden[:, t : t + 1], mask=mask, key_value_states=source, cache=cache)[0] for t in range(2)]
    torch.testing.assert_close(torch.cat(steps, 1), expected[:, :2], rtol=0, atol=1e-12)
    if gate == 0.0:  # a zero gate is T5's own cross-attention, bit for bit
        attention.tagi_instruction = None
        plain, _, _ = attention(hidden, mask=mask, key_value_states=source)
        assert torch.equal(out, plain)


def test_one_instruction_shared_by_the_batch_equals_it_repeated_per_row():
    attention = _attention()
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 2, 32, generator=gen, dtype=torch.float64)
    source = torch.randn(3, 5, 32, generator=gen, dtype=torch.float64)
    instruction = torch.randn(1, 4, 32, generator=gen, dtype=torch.float64)
    attention.tagi_gate = torch.tensor(0.5, dtype=torch.float64)
    attention.tagi_instruction = instruction_kv(attention, instruction, torch.tensor([[1, 1, 1, 0]]))
    shared, _, _ = attention(hidden, key_value_states=source)
    attention.tagi_instruction = instruction_kv(
        attention, instruction.expand(3, -1, -1), torch.tensor([[1, 1, 1, 0]] * 3)
    )
    repeated, _, _ = attention(hidden, key_value_states=source)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-12)
