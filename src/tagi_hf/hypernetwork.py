"""The adapter generator: a pooled instruction vector becomes LoRA factors for every adapted projection.

The paper uses a distinct network per layer, shared between q and v. We use the documented cheaper equivalent: a
trunk shared by all layers, told which (attention kind, layer) it is generating for by a learned embedding, and
one pair of output heads per projection type (q, k, v, o) shared across layers. The B heads start at zero, so a
fresh generator produces a zero update; the A heads do not, so the B heads receive gradient from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_tagi import TagiConfig
from .lora import LoraTarget


class AdapterGenerator(nn.Module):
    """Maps pooled instruction vectors `(tasks, d_model)` to LoRA factors for each [`LoraTarget`]."""

    def __init__(self, config: TagiConfig, targets: list[LoraTarget]):
        super().__init__()
        d_model, hidden, emb = config.text_config.d_model, config.hypernet_hidden_size, config.hypernet_embedding_size
        self.rank = config.lora_rank
        self.targets = targets
        slots = sorted({(t.kind, t.layer) for t in targets})  # q and v of one attention module share a slot
        self._slot_index = {slot: i for i, slot in enumerate(slots)}
        self.slot_embedding = nn.Embedding(len(slots), emb)
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
        for proj, head in self.heads_a.items():
            # A entries ~ N(0, 1/in): the scale PEFT's Kaiming init gives A.
            head._tagi_init = ("normal", (hidden * shapes[proj][0]) ** -0.5)
        for head in self.heads_b.values():
            head._tagi_init = ("zeros", None)  # B = 0 -> the generated update starts at exactly zero
        self.register_buffer("_slot_ids", torch.tensor([self._slot_index[(t.kind, t.layer)] for t in targets]))

    def forward(self, pooled: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Returns `{module name: (A (tasks, r, in), B (tasks, out, r))}`."""
        tasks = pooled.shape[0]
        slots = self.slot_embedding.weight  # (slots, emb)
        x = self.input_norm(pooled)  # (tasks, d_model)
        x = torch.cat([x[:, None].expand(-1, slots.shape[0], -1), slots[None].expand(tasks, -1, -1)], dim=-1)
        h = self.trunk(x)  # (tasks, slots, hidden)
        factors = {}
        for target, slot in zip(self.targets, self._slot_ids.tolist()):
            h_slot = h[:, slot]  # (tasks, hidden)
            lora_a = self.heads_a[target.projection](h_slot).view(tasks, self.rank, target.in_features)
            lora_b = self.heads_b[target.projection](h_slot).view(tasks, target.out_features, self.rank)
            factors[target.name] = (lora_a, lora_b)
        return factors
