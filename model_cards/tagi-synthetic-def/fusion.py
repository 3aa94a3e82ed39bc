"""Instruction fusion: the paper's hierarchical cross-attention (Eq. 1).

- Encoder: after every encoder layer `l`, the input's states attend to the instruction states `I`:
  `S_l <- S_l + tanh(g_l) * CrossAttn_l(LN(S_l), I)`, with `g_l = 0` at init.
- Decoder: every cross-attention attends to the concatenation `(I ; F_L)`. A softmax over a concatenation is a
  blend of the two softmaxes, `(1 - lam) * Attn(F_L) + lam * Attn(I)` with `lam = sigmoid(lse_I - lse_F)`; we
  gate the instruction part, `out = O(Attn(F_L) + tanh(h_l) * (Concat - Attn(F_L)))`, with `h_l = 0` at init, so
  a fresh model is exactly the backbone.

The instruction's keys and values depend only on the task: [`FusionLayer.project_instruction`] and
[`instruction_kv`] compute them once per task, and the per-instance passes reuse them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm, eager_attention_forward

from .lora import match_batch

# keys, values (tasks, heads, len, d_head) and the padding as an additive bias (tasks, 1, 1, len), made once per task
InstructionKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
        keys, values = _split_heads(self.k(states), self.d_head), _split_heads(self.v(states), self.d_head)
        return keys, values, additive_mask(mask, keys.dtype)

    def forward(self, hidden: torch.Tensor, instruction: InstructionKV) -> torch.Tensor:
        keys, values, bias = (match_batch(t, hidden.shape[0]) for t in instruction)
        query = _split_heads(self.q(self.layer_norm(hidden)), self.d_head)  # (batch, heads, seq, d_head)
        attn = F.scaled_dot_product_attention(
            query, keys.to(query.dtype), values.to(query.dtype), attn_mask=bias.to(query.dtype)
        )
        attn = attn.transpose(1, 2).reshape(hidden.shape)  # (batch, seq, d_model)
        return hidden + torch.tanh(self.gate) * self.o(attn)


def _scaled(scores: torch.Tensor, scaling: float) -> torch.Tensor:
    return scores if scaling == 1.0 else scores * scaling  # T5: 1.0 (one op less per layer and decoding step)


def _per_head_matmul(x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """`x @ task` for `x` (batch, heads, m, k) and per-task `task` (1 or batch, heads, k, n). One task shared by the
    batch is multiplied per head with the batch folded into the rows, instead of being broadcast (copied) per row."""
    if task.shape[0] != 1 or x.shape[0] == 1:
        return x @ task
    batch, heads, m, _ = x.shape
    rows = x.transpose(0, 1).reshape(heads, batch * m, -1)  # (heads, batch * m, k)
    return (rows @ task[0]).view(heads, batch, m, -1).transpose(0, 1)  # (batch, heads, m, n)


def instruction_kv(attention: T5Attention, states: torch.Tensor, mask: torch.Tensor) -> InstructionKV:
    """Keys/values of the instruction states through a decoder cross-attention's own (adapted) k and v."""
    d_head = attention.key_value_proj_dim
    keys, values = _split_heads(attention.k(states), d_head), _split_heads(attention.v(states), d_head)
    return keys, values, additive_mask(mask, keys.dtype)


class InstructionCrossAttention(T5Attention):
    """A T5 decoder cross-attention that also attends to the instruction states when they are set.

    `tagi_instruction` is `None` (plain T5 behaviour) or `(keys, values, bias)` from [`instruction_kv`];
    `tagi_gate` is the layer's scalar gate. The attention over `F_L` is computed by T5's own attention function (so
    a zero gate reproduces the backbone bit for bit); the gated instruction term is mixed into its heads before the
    output projection, and the query is shared by both.
    """

    tagi_instruction: InstructionKV | None = None
    tagi_gate: torch.Tensor | None = None

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        if self.tagi_instruction is None or key_value_states is None:
            return super().forward(hidden_states, mask, key_value_states, position_bias, cache=cache, **kwargs)
        # T5Attention's cross-attention step by step, so that the query (and its LoRA) is computed once for both parts
        # and the output projection runs once on the mixed heads.
        batch, tgt = hidden_states.shape[:2]
        query = _split_heads(self.q(hidden_states), self.key_value_proj_dim)  # (batch, heads, tgt, d_head)
        keys, values = self._source_kv(key_value_states, cache, kwargs)
        if position_bias is None:  # cross-attention has no relative bias: zeros, shared with the later layers
            position_bias = torch.zeros((1, self.n_heads, tgt, keys.shape[-2]), device=query.device, dtype=query.dtype)
            if self.gradient_checkpointing and self.training:
                position_bias.requires_grad = True
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        attn_f, weights = attention(
            self, query, keys, values, mask, dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling, position_bias=position_bias, **kwargs,
        )  # fmt: skip
        attn_f = attn_f.reshape(batch, tgt, -1)  # (batch, tgt, inner): T5's own attention over F_L
        scores_f = _scaled(query @ keys.transpose(-1, -2), self.scaling) + position_bias
        if mask is not None:  # no mask: no padding in the batch (nothing to add)
            scores_f = scores_f + additive_mask(mask, query.dtype)
        mixed = attn_f + torch.tanh(self.tagi_gate).to(attn_f.dtype) * self._instruction_delta(query, scores_f, attn_f)
        return self.o(mixed), position_bias, weights

    def _source_kv(self, key_value_states, cache, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of `F_L`: from the cache after the first decoding step, else projected (and cached)."""
        if isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        keys = _split_heads(self.k(key_value_states), self.key_value_proj_dim)
        values = _split_heads(self.v(key_value_states), self.key_value_proj_dim)
        if isinstance(cache, EncoderDecoderCache):
            keys, values = cache.cross_attention_cache.update(keys, values, self.layer_idx, kwargs=kwargs)
            cache.is_updated[self.layer_idx] = True
        elif cache is not None:
            keys, values = cache.update(keys, values, self.layer_idx, kwargs=kwargs)
        return keys, values

    def _instruction_delta(self, query, scores_f, attn_f) -> torch.Tensor:
        """`Concat - Attn(F_L) = lam (Attn(I) - Attn(F_L))` per head, `lam = sigmoid(lse_I - lse_F)`; (b, tgt, inner)
        like `attn_f`."""
        inst_k, inst_v, inst_bias = (match_batch(t, query.shape[0]) for t in self.tagi_instruction)
        scores_i = _scaled(_per_head_matmul(query, inst_k.transpose(-1, -2).to(query.dtype)), self.scaling)
        scores_i = scores_i + inst_bias.to(query.dtype)
        lse_f, lse_i = scores_f.logsumexp(-1, keepdim=True), scores_i.logsumexp(-1, keepdim=True)
        share_i = torch.sigmoid(lse_i - lse_f)  # (b, h, tgt, 1): weight of I in the joint softmax over (I ; F_L)
        probs_i = F.dropout(torch.exp(scores_i - lse_i), p=self.dropout, training=self.training)
        heads_f = attn_f.view(*attn_f.shape[:2], -1, self.key_value_proj_dim).transpose(1, 2)  # (b, h, tgt, d_head)
        delta = share_i * (_per_head_matmul(probs_i, inst_v.to(probs_i.dtype)) - heads_f)  # (b, h, tgt, d_head)
        return delta.transpose(1, 2).reshape(attn_f.shape)


class DecoderFusionGates(nn.Module):
    """One scalar gate per decoder layer on the instruction part of the decoder's attention (zero at init)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_layers))


def encoder_fusion_hook(block: nn.Module, args, output):
    """Forward hook on an encoder T5Block, or on a decoder-only LM's layer: applies the block's fusion layer to its
    output hidden states when instruction state is set (`block.tagi_fusion = (FusionLayer, InstructionKV)`)."""
    fusion = getattr(block, "tagi_fusion", None)
    if fusion is None:
        return output
    layer, instruction = fusion
    if isinstance(output, torch.Tensor):  # Llama-family layers return the hidden states alone
        return layer(output, instruction)
    return (layer(output[0], instruction), *output[1:])
