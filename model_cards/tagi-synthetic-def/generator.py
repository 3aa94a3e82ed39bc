"""The adapter generator: the instruction's token states become LoRA factors for every adapted projection.

The states are pooled first: one masked mean shared by every module (the paper), or, with attention pooling, one
vector per (attention kind, layer) from a learned query attending over the tokens (HINT's pooling), so the modules of
different layers can read different words of the instruction.

The paper uses a distinct network per layer, shared between q and v. We use the documented cheaper equivalent: a
trunk shared by all layers, told which (attention kind, layer) it is generating for by a learned embedding, and one
pair of output heads per projection type (q, k, v, o) shared across layers. The B heads start at zero, so a
fresh generator produces a zero update; the A heads do not, so the B heads receive gradient from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_tagi import TagiConfig
from .lora import LoraTarget


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `states` `(tasks, len, d)` over the positions where `mask` `(tasks, len)` is 1 (0 for none)."""
    weights = mask[..., None].to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """One pooled vector per slot: a learned query per slot attends (multi-head, masked) over the token states.

    The queries start at zero, so every slot starts as the masked mean; the values are the states themselves.
    """

    def __init__(self, d_model: int, num_slots: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(num_slots, d_model))
        self.norm = nn.LayerNorm(d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`(tasks, len, d)`, `(tasks, len)` -> `(tasks, slots, d)`."""
        tasks, length, d_model = states.shape
        heads, d_head = self.num_heads, d_model // self.num_heads
        keys = self.key(self.norm(states)).view(tasks, length, heads, d_head)
        queries = self.query.view(-1, heads, d_head)
        scores = torch.einsum("shd,tlhd->tshl", queries, keys) * d_head**-0.5
        keep = mask[:, None, None, :].bool()
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1) * keep  # an empty instruction pools to zero, as the masked mean does
        pooled = torch.einsum("tshl,tlhd->tshd", weights, states.view(tasks, length, heads, d_head))
        return pooled.reshape(tasks, -1, d_model)


class AdapterGenerator(nn.Module):
    """Maps instruction token states `(tasks, len, d_model)` to LoRA factors for each [`LoraTarget`]."""

    def __init__(self, config: TagiConfig, targets: list[LoraTarget]):
        super().__init__()
        d_model, hidden, emb = config.hidden_size, config.hypernet_hidden_size, config.hypernet_embedding_size
        self.rank = config.lora_rank
        self.targets = targets
        slots = sorted({(t.kind, t.layer) for t in targets})  # q and v of one attention module share a slot
        self._slot_index = {slot: i for i, slot in enumerate(slots)}
        self.slot_embedding = nn.Embedding(len(slots), emb)
        self.pooling = None
        if config.instruction_pooling == "attention":
            self.pooling = AttentionPooling(d_model, len(slots), config.pooling_num_heads)
        self.input_norm = nn.LayerNorm(d_model)
        self.trunk = nn.Sequential(
            nn.Linear(d_model + emb, hidden),
            nn.GELU(),
            nn.Dropout(config.hypernet_dropout),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),  # unit-scale features, so the A head's init fixes the scale of A
        )
        shapes = {t.projection: (t.in_features, t.out_features) for t in targets}
        self.heads_a = nn.ModuleDict({p: nn.Linear(hidden, self.rank * d_in) for p, (d_in, _) in shapes.items()})
        self.heads_b = nn.ModuleDict({p: nn.Linear(hidden, d_out * self.rank) for p, (_, d_out) in shapes.items()})
        self.register_buffer("_slot_ids", torch.tensor([self._slot_index[(t.kind, t.layer)] for t in targets]))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Instruction states `(tasks, len, d_model)` and mask `(tasks, len)` ->
        `{module name: (A (tasks, r, in), B (tasks, out, r))}`."""
        tasks = states.shape[0]
        slots = self.slot_embedding.weight  # (slots, emb)
        if self.pooling is None:
            pooled = masked_mean(states, mask)[:, None].expand(-1, slots.shape[0], -1)
        else:
            pooled = self.pooling(states, mask)  # (tasks, slots, d_model)
        x = torch.cat([self.input_norm(pooled), slots[None].expand(tasks, -1, -1)], dim=-1)
        h = self.trunk(x)  # (tasks, slots, hidden)
        factors = {}
        for target, slot in zip(self.targets, self._slot_ids.tolist()):
            h_slot = h[:, slot]  # (tasks, hidden)
            lora_a = self.heads_a[target.projection](h_slot).view(tasks, self.rank, target.in_features)
            lora_b = self.heads_b[target.projection](h_slot).view(tasks, target.out_features, self.rank)
            factors[target.name] = (lora_a, lora_b)
        return factors
