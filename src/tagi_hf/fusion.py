"""Instruction fusion: the paper's hierarchical cross-attention (Eq. 1).

- Encoder: after every encoder layer `l`, the input's states attend to the instruction states `I`:
  `S_l <- S_l + tanh(g_l) * CrossAttn_l(LN(S_l), I)`, with `g_l = 0` at init.
- Decoder: every cross-attention attends to the concatenation `(I ; F_L)`. A softmax over a concatenation is a
  blend of the two softmaxes, `(1 - lam) * Attn(F_L) + lam * Attn(I)` with `lam = sigmoid(lse_I - lse_F)`; we
  gate the instruction part, `out = Attn(F_L) + tanh(h_l) * (Concat - Attn(F_L))`, with `h_l = 0` at init, so a
  fresh model is exactly the backbone.

The instruction's keys and values depend only on the task: [`FusionLayer.project_instruction`] and
[`instruction_kv`] compute them once per task, and the per-instance passes reuse them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

from .lora import match_batch

InstructionKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # keys, values (tasks, heads, len, d_head), mask


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | float:
    """Turns a padding mask (1/True = attend) of shape `(batch, len)` or an attention mask into additive form."""
    if mask is None:
        return 0.0
    if mask.dtype == torch.bool or not torch.is_floating_point(mask) or mask.dim() == 2:
        keep = mask.bool() if mask.dim() > 2 else mask.bool()[:, None, None, :]  # (batch, 1, 1, len)
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
    return mask.to(dtype)


def _split_heads(x: torch.Tensor, d_head: int) -> torch.Tensor:
    return x.view(*x.shape[:2], -1, d_head).transpose(1, 2)  # (batch, heads, len, d_head)


class FusionLayer(nn.Module):
    """Cross-attention from the input's states to the instruction states, added back through a zero gate."""

    def __init__(self, d_model: int, num_heads: int, eps: float):
        super().__init__()
        self.d_head = d_model // num_heads
        self.layer_norm = T5LayerNorm(d_model, eps=eps)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))  # tanh(0) = 0: the backbone is the starting point

    def project_instruction(self, states: torch.Tensor, mask: torch.Tensor) -> InstructionKV:
        """Per-task keys/values of the instruction states `(tasks, len, d_model)`; computed once per task."""
        return _split_heads(self.k(states), self.d_head), _split_heads(self.v(states), self.d_head), mask

    def forward(self, hidden: torch.Tensor, instruction: InstructionKV) -> torch.Tensor:
        keys, values, mask = (match_batch(t, hidden.shape[0]) for t in instruction)
        query = _split_heads(self.q(self.layer_norm(hidden)), self.d_head)  # (batch, heads, seq, d_head)
        bias = additive_mask(mask, query.dtype)  # (batch, 1, 1, len)
        attn = F.scaled_dot_product_attention(query, keys.to(query.dtype), values.to(query.dtype), attn_mask=bias)
        attn = attn.transpose(1, 2).reshape(hidden.shape)  # (batch, seq, d_model)
        return hidden + torch.tanh(self.gate) * self.o(attn)


def instruction_kv(attention: T5Attention, states: torch.Tensor, mask: torch.Tensor) -> InstructionKV:
    """Keys/values of the instruction states through a decoder cross-attention's own (adapted) k and v."""
    d_head = attention.key_value_proj_dim
    return _split_heads(attention.k(states), d_head), _split_heads(attention.v(states), d_head), mask


class InstructionCrossAttention(T5Attention):
    """A T5 decoder cross-attention that also attends to the instruction states when they are set.

    `tagi_instruction` is `None` (plain T5 behaviour) or `(keys, values, mask)` from [`instruction_kv`];
    `tagi_gate` is the layer's scalar gate. The plain attention over `F_L` is T5's own code path (so a zero gate
    reproduces the backbone bit for bit); the gated instruction term is added on top of it.
    """

    tagi_instruction: InstructionKV | None = None
    tagi_gate: torch.Tensor | None = None

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        if self.tagi_instruction is None or key_value_states is None:
            return super().forward(hidden_states, mask, key_value_states, position_bias, cache=cache, **kwargs)
        # A throwaway cache when none is given, to read back the keys/values T5Attention computed for F_L.
        if not isinstance(cache, EncoderDecoderCache):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out, position_bias, weights = super().forward(
            hidden_states, mask, key_value_states, position_bias, cache=cache, **kwargs
        )
        layer = cache.cross_attention_cache.layers[self.layer_idx]
        scores_f = self._scores(hidden_states, layer.keys) + position_bias + additive_mask(mask, out.dtype)
        return out + self._instruction_term(hidden_states, scores_f, layer.values), position_bias, weights

    def _scores(self, hidden_states: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query = _split_heads(self.q(hidden_states), self.key_value_proj_dim)  # (batch, heads, tgt, d_head)
        return query @ keys.transpose(-1, -2).to(query.dtype)  # (batch, heads, tgt, src)

    def _instruction_term(self, hidden_states, scores_f, values_f) -> torch.Tensor:
        """`tanh(gate) * o(Concat - Attn(F_L))`, where `Concat - Attn(F_L) = (1 - lam) (Attn(I) - Attn(F_L))`."""
        inst_k, inst_v, inst_mask = (match_batch(t, hidden_states.shape[0]) for t in self.tagi_instruction)
        scores_i = self._scores(hidden_states, inst_k) + additive_mask(inst_mask, scores_f.dtype)  # (b, h, tgt, ins)
        lse_f, lse_i = scores_f.logsumexp(-1, keepdim=True), scores_i.logsumexp(-1, keepdim=True)
        share_i = torch.sigmoid(lse_i - lse_f)  # (b, h, tgt, 1): weight of I in the joint softmax over (I ; F_L)
        probs_f = F.dropout(torch.exp(scores_f - lse_f), p=self.dropout, training=self.training)
        probs_i = F.dropout(torch.exp(scores_i - lse_i), p=self.dropout, training=self.training)
        delta = share_i * (probs_i @ inst_v.to(probs_i.dtype) - probs_f @ values_f)  # (b, h, tgt, d_head)
        delta = delta.transpose(1, 2).reshape(*hidden_states.shape[:2], -1)  # (b, tgt, inner)
        return torch.tanh(self.tagi_gate).to(delta.dtype) * self.o(delta)


class DecoderFusionGates(nn.Module):
    """One scalar gate per decoder layer on the instruction part of the decoder's attention (zero at init)."""

    _tagi_init = ("zeros", None)

    def __init__(self, num_layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_layers))


def encoder_fusion_hook(block: nn.Module, args, output):
    """Forward hook on an encoder T5Block: applies the block's fusion layer when instruction state is set."""
    fusion = getattr(block, "tagi_fusion", None)
    if fusion is None:
        return output
    layer, instruction = fusion
    return (layer(output[0], instruction), *output[1:])
