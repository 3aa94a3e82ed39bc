"""Applying generated LoRA factors to a frozen backbone (T5 or a decoder-only LM), one adapter per example.

Each target `nn.Linear` of the backbone has its class changed in place to [`GeneratedLoraLinear`], which keeps the
parameter names (`...SelfAttention.q.weight`), so plain T5 checkpoints still load strictly. The factors of the
current batch are installed for a call with [`use_task_state`]; the maths is PEFT's:
`h = W0 x + (alpha / r) * B A x`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_tagi import TagiConfig


# Where each attention kind lives inside a T5ForConditionalGeneration (PEFT's module names).
class LoraFactors(NamedTuple):
    """LoRA factors of one module, whose weight update is `scaling * B @ A` (PEFT orientation).

    Args:
        A (`torch.Tensor` of shape `(..., r, d_in)`): Down-projection (PEFT's `lora_A.weight`).
        B (`torch.Tensor` of shape `(..., d_out, r)`): Up-projection (PEFT's `lora_B.weight`).
        scaling (`float` or `torch.Tensor` of shape `(...)`): `lora_alpha / r`, optionally one value per row.
    """

    A: torch.Tensor
    B: torch.Tensor
    scaling: float | torch.Tensor = 1.0


_ATTENTION_PATHS = {
    "encoder_self": "encoder.block.{layer}.layer.0.SelfAttention",
    "decoder_self": "decoder.block.{layer}.layer.0.SelfAttention",
    "decoder_cross": "decoder.block.{layer}.layer.1.EncDecAttention",
}


@dataclass(frozen=True)
class LoraTarget:
    """One backbone projection that receives a generated adapter."""

    name: str  # PEFT module name, e.g. "encoder.block.0.layer.0.SelfAttention.q"
    kind: str  # "encoder_self" | "decoder_self" | "decoder_cross"
    layer: int
    projection: str  # "q" | "k" | "v" | "o"
    in_features: int
    out_features: int


def lora_targets(config: TagiConfig) -> list[LoraTarget]:
    """Lists every adapted projection of the backbone, in a fixed order (kind, layer, projection)."""
    text = config.text_config
    if config.is_decoder_only:
        return _decoder_only_targets(config)
    inner = text.num_heads * text.d_kv
    num_layers = {"encoder_self": text.num_layers, "decoder_self": text.num_decoder_layers}
    num_layers["decoder_cross"] = text.num_decoder_layers
    targets = []
    for kind in config.lora_attention_kinds:
        for layer in range(num_layers[kind]):
            for proj in config.lora_target_modules:
                d_in, d_out = (inner, text.d_model) if proj == "o" else (text.d_model, inner)
                name = f"{_ATTENTION_PATHS[kind].format(layer=layer)}.{proj}"
                targets.append(LoraTarget(name, kind, layer, proj, d_in, d_out))
    return targets


def _decoder_only_targets(config: TagiConfig) -> list[LoraTarget]:
    """`model.layers.N.self_attn.{q,k,v,o}_proj` of a Llama-family LM (grouped-query k/v are narrower)."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    width = {"q": text.num_attention_heads * head_dim, "k": kv_heads * head_dim, "v": kv_heads * head_dim}
    targets = []
    for layer in range(text.num_hidden_layers):
        for proj in config.lora_target_modules:
            if proj == "o":
                d_in, d_out = text.num_attention_heads * head_dim, text.hidden_size
            else:
                d_in, d_out = text.hidden_size, width[proj]
            name = f"model.layers.{layer}.self_attn.{proj}_proj"
            targets.append(LoraTarget(name, "decoder_self", layer, proj, d_in, d_out))
    return targets


def linear_target(model: nn.Module, name: str) -> LoraTarget:
    """A target for the `nn.Linear` named `name` of `model` (kind and layer unknown: a teacher's module, say)."""
    module = model.get_submodule(name)
    return LoraTarget(name, "", 0, name.rsplit(".", 1)[1], module.in_features, module.out_features)


def match_batch(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Lines up per-task state (first dim) with a batch: equal, broadcast from 1, or repeated for beams.

    `generate` expands every example `num_beams` times with `repeat_interleave`, so a state of batch `b` serves a
    batch of `b * k` by repeating each row `k` times in place.
    """
    n = tensor.shape[0]
    if n == batch_size or n == 1:
        return tensor
    if batch_size % n != 0:
        raise ValueError(f"Cannot match adapter batch {n} with input batch {batch_size}.")
    return tensor.repeat_interleave(batch_size // n, dim=0)


class GeneratedLoraLinear(nn.Linear):
    """An `nn.Linear` that adds a per-example low-rank update when factors are set.

    `lora_factors` is `None` (plain linear) or `(A, B)` with A `(batch, r, in)` and B `(batch, out, r)`; a batch of
    one is shared by every example.
    """

    lora_factors: tuple[torch.Tensor, torch.Tensor] | None = None
    lora_scaling: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)  # (batch, seq, out)
        if self.lora_factors is None:
            return out
        lora_a, lora_b = (match_batch(t, x.shape[0]).to(x.dtype) for t in self.lora_factors)
        if lora_a.shape[0] == 1:  # one adapter for the whole batch: PEFT's exact computation
            return out + F.linear(F.linear(x, lora_a[0]), lora_b[0]) * self.lora_scaling
        low = torch.matmul(x, lora_a.transpose(1, 2))  # (batch, seq, r)
        return out + torch.matmul(low, lora_b.transpose(1, 2)) * self.lora_scaling  # (batch, seq, out)


def install_lora_layers(backbone: nn.Module, targets: list[LoraTarget], scaling: float) -> None:
    """Turns each target linear of `backbone` into a [`GeneratedLoraLinear`] (idempotent, names unchanged)."""
    for target in targets:
        module = backbone.get_submodule(target.name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"Target `{target.name}` is a {type(module).__name__}, expected nn.Linear.")
        if (module.in_features, module.out_features) != (target.in_features, target.out_features):
            raise ValueError(
                f"Target `{target.name}` has shape (in={module.in_features}, out={module.out_features}), "
                f"the config expects (in={target.in_features}, out={target.out_features})."
            )
        module.__class__ = GeneratedLoraLinear
        module.lora_scaling = scaling
        module.lora_factors = None
