"""The per-task state of a [`TagiModel`]: what is derived from a batch's instructions once and reused by every
instance of the task (generated LoRA factors, the fusion's instruction keys/values)."""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import InstructionKV

if TYPE_CHECKING:
    from .adapter import GeneratedAdapter

AdapterFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A, B), batched


@dataclass
class TaskState:
    """Everything derived from a batch's instructions, computed once per task and reused by every instance.

    Tensors have a leading task dimension: 1 (shared by the whole batch) or one row per example.
    """

    lora: AdapterFactors
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

    @classmethod
    def concat(cls, states: Sequence[TaskState]) -> TaskState:
        """One state whose rows are the rows of `states` in order; instruction keys/values are padded to the longest
        instruction (padding masked out, so every row attends exactly as it did alone)."""
        first = states[0]
        lora = {name: tuple(torch.cat([s.lora[name][i] for s in states]) for i in (0, 1)) for name in first.lora}

        def fused(attr: str) -> list[InstructionKV] | None:
            layers = getattr(first, attr)
            return (
                None
                if layers is None
                else [_concat_kv([getattr(s, attr)[i] for s in states]) for i in range(len(layers))]
            )

        return cls(lora=lora, encoder_fusion=fused("encoder_fusion"), decoder_fusion=fused("decoder_fusion"))


def _concat_kv(rows: Sequence[InstructionKV]) -> InstructionKV:
    """Concatenates `(keys, values, bias)` triples along the task dimension; shorter instructions are padded (zero
    keys/values, a bias that masks them out)."""
    longest = max(k.shape[2] for k, _, _ in rows)
    out = []
    for k, v, bias in rows:
        extra = longest - k.shape[2]
        masked = torch.finfo(bias.dtype).min
        out.append((F.pad(k, (0, 0, 0, extra)), F.pad(v, (0, 0, 0, extra)), F.pad(bias, (0, extra), value=masked)))
    return tuple(torch.cat(parts) for parts in zip(*out))


class TaskStateCache:
    """A model's task states of recently used adapters, so that the instruction-side work of an adapter (the fusion's
    keys and values of its instruction states, its factors on the model's device) is done once per (adapter, model).

    At most `max_size` adapters are kept (least recently used dropped first; `0` turns caching off). An entry holds a
    weak reference to its adapter (it goes when the adapter is garbage-collected) and a fingerprint of both the model
    weights the state was computed from and the adapter's tensors (object identity, in-place version counter, data
    pointer): a training step, `load_state_dict`, a move to another device or dtype, or an in-place edit of the adapter
    makes the fingerprint differ and the state is recomputed. A copy (`copy.deepcopy`, pickling) starts empty.
    """

    def __init__(self, max_size: int = 8):
        if max_size < 0:
            raise ValueError(f"`max_size` must be >= 0, got {max_size}.")
        self.max_size = max_size
        self._entries: OrderedDict[int, tuple[weakref.ref, Hashable, TaskState]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo) -> TaskStateCache:
        return TaskStateCache(self.max_size)

    def __getstate__(self) -> dict:
        return {"max_size": self.max_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_size"])

    def get(self, adapter: object, fingerprint: Hashable) -> TaskState | None:
        entry = self._entries.get(id(adapter))
        if entry is None or entry[0]() is not adapter or entry[1] != fingerprint:
            self.misses += 1
            return None
        self._entries.move_to_end(id(adapter))
        self.hits += 1
        return entry[2]

    def put(self, adapter: object, fingerprint: Hashable, state: TaskState) -> None:
        if self.max_size == 0:
            return
        key = id(adapter)
        entries = self._entries  # the callback must not keep the cache alive through `self`

        def drop(ref: weakref.ref) -> None:
            if key in entries and entries[key][0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(adapter, drop), fingerprint, state)
        entries.move_to_end(key)
        while len(entries) > self.max_size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class TaskStateSlots:
    """Where a [`TaskState`] goes in a backbone for a call: the generated-LoRA linears by name and, with fusion, each
    encoder block with its fusion layer, and each decoder cross-attention with the gates' tensor."""

    lora: Mapping[str, nn.Module]
    encoder_blocks: Sequence[tuple[nn.Module, nn.Module]] = ()  # (T5Block, FusionLayer) per encoder layer
    cross_attentions: Sequence[nn.Module] = ()  # InstructionCrossAttention per decoder layer
    gates: torch.Tensor | None = None  # (decoder layers,)

    def _set(self, state: TaskState | None) -> None:
        for name, module in self.lora.items():
            module.lora_factors = None if state is None else state.lora.get(name)
        encoder = state is not None and state.encoder_fusion is not None
        for layer, (block, fusion) in enumerate(self.encoder_blocks):
            block.tagi_fusion = (fusion, state.encoder_fusion[layer]) if encoder else None
        decoder = state is not None and state.decoder_fusion is not None
        for layer, attention in enumerate(self.cross_attentions):
            attention.tagi_instruction = state.decoder_fusion[layer] if decoder else None
            attention.tagi_gate = self.gates[layer] if decoder else None


@contextlib.contextmanager
def use_task_state(slots: TaskStateSlots, state: TaskState | None, *, keep: bool = False) -> Iterator[None]:
    """Installs `state` (`None`: no adapter, no fusion) into the layers of `slots` for the block and removes it after,
    also when the block raises. The one way anything (the model's forward, generate and task-state building, the
    joint teachers, the teachers' scoring) puts per-task tensors into a backbone.

    `keep=True` leaves the state installed after a normal exit: activation checkpointing re-runs blocks during
    backward, which must see the same state (the next call installs its own).
    """
    slots._set(state)
    try:
        yield
    except BaseException:
        slots._set(None)
        raise
    if not keep:
        slots._set(None)


def tensor_fingerprint(tensors) -> tuple:
    """Identity, in-place version, data pointer, device and dtype of each tensor: changes whenever its values may.
    (Inference tensors keep no version counter; they cannot be edited in place outside `torch.inference_mode`.)"""
    return tuple((id(t), -1 if t.is_inference() else t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)


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


def adapter_instruction_states(
    adapter: GeneratedAdapter, device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter's instruction states as a batch of one task, `(1, len, d)`, with its mask `(1, len)` (adapters of
    different lengths meet in [`TaskState.concat`], which pads)."""
    if adapter.instruction_states is None:
        raise ValueError("This TagiModel uses fusion, but an `adapter` has no instruction states (a plain LoRA).")
    states = adapter.instruction_states[None].to(device=device, dtype=dtype)
    return states, torch.ones(states.shape[:2], dtype=torch.long, device=device)
