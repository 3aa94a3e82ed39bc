"""The per-task state of a [`TagiModel`]: what is derived from a batch's instructions once and reused by every
instance of the task (generated LoRA factors, the fusion's instruction keys/values)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .fusion import InstructionKV

if TYPE_CHECKING:
    from .adapter import GeneratedAdapter

LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A, B)


@dataclass
class TaskState:
    """Everything derived from a batch's instructions, computed once per task and reused by every instance.

    Tensors have a leading task dimension: 1 (shared by the whole batch) or one row per example.
    """

    lora: LoraFactors
    encoder_fusion: list[InstructionKV] | None = None
    decoder_fusion: list[InstructionKV] | None = None

    def select(self, index: torch.Tensor) -> TaskState:
        """Rows of the state for each example (`index[i]` = task of example i)."""
        pick = lambda seq: tuple(t.index_select(0, index) for t in seq)  # noqa: E731
        return TaskState(
            lora={name: pick(ab) for name, ab in self.lora.items()},
            encoder_fusion=None if self.encoder_fusion is None else [pick(kv) for kv in self.encoder_fusion],
            decoder_fusion=None if self.decoder_fusion is None else [pick(kv) for kv in self.decoder_fusion],
        )


@contextlib.contextmanager
def checkpointing_disabled(stack: nn.Module):
    """Turns activation checkpointing off in `stack` for the duration (restored after)."""
    blocks = [m for m in stack.modules() if getattr(m, "gradient_checkpointing", False)]
    for block in blocks:
        block.gradient_checkpointing = False
    try:
        yield
    finally:
        for block in blocks:
            block.gradient_checkpointing = True


def pad_instruction_states(adapters: Sequence[GeneratedAdapter], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads per-adapter instruction states `(len_i, d)` to `(n, max_len, d)` with a mask `(n, max_len)`."""
    if any(a.instruction_states is None for a in adapters):
        raise ValueError("This TagiModel uses fusion, but an `adapter` has no instruction states (a plain LoRA).")
    longest = max(a.instruction_states.shape[0] for a in adapters)
    d_model = adapters[0].instruction_states.shape[1]
    states = adapters[0].instruction_states.new_zeros(len(adapters), longest, d_model).to(device)
    mask = torch.zeros(len(adapters), longest, dtype=torch.long, device=device)
    for i, adapter in enumerate(adapters):
        length = adapter.instruction_states.shape[0]
        states[i, :length] = adapter.instruction_states.to(device)
        mask[i, :length] = 1
    return states, mask
