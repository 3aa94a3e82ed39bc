"""[`GeneratedAdapter`]: one task's generated LoRA adapter, saved as a standard PEFT LoRA directory."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .file_utils import atomic_directory

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INSTRUCTION_STATES = "tagi_instruction_states.safetensors"
PROVENANCE = "tagi_adapter.json"
_PEFT_PREFIX = "base_model.model."


@dataclass
class GeneratedAdapter:
    r"""
    A LoRA adapter generated from one instruction by a [`TagiModel`] or [`TagiForCausalLM`].

    Args:
        lora_factors (`dict[str, tuple[torch.Tensor, torch.Tensor]]`):
            `{PEFT module name: (A (r, in), B (out, r))}`, e.g. `"encoder.block.0.layer.0.SelfAttention.q"`.
        lora_alpha (`float`): PEFT's alpha; the update is `(lora_alpha / r) * B @ A`.
        instruction (`str`, *optional*): the instruction the adapter was generated from.
        base_model_name_or_path (`str`, *optional*): the backbone the adapter belongs to.
        instruction_states (`torch.Tensor`, *optional*): `(len, d_model)` encoder states of the instruction, needed
            by the fusion (`fusion="cross_attention"`); `None` for plain LoRA adapters.
        generator_config (`dict`): the generator's [`TagiConfig`] as a dict (provenance).
        generator_name_or_path / generator_revision (`str`, *optional*): where the generator came from.
        task_type (`str`, defaults to `"SEQ_2_SEQ_LM"`): PEFT's task type: `"CAUSAL_LM"` for a decoder-only backbone.

    Example:

    ```python
    >>> adapter = model.generate_adapter("Reverse the order of the words.", tokenizer=tokenizer)  # doctest: +SKIP
    >>> adapter.save_pretrained("reverse-adapter")  # doctest: +SKIP
    >>> peft_model = GeneratedAdapter.from_pretrained("reverse-adapter").to_peft_model(t5)  # doctest: +SKIP
    ```

    To publish one: `tagi_hf.hub.push_adapter_to_hub(adapter, "me/reverse-adapter")` (checks the base model is a Hub
    id, writes the full card, one commit).
    """

    lora_factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    lora_alpha: float
    instruction: str | None = None
    base_model_name_or_path: str | None = None
    instruction_states: torch.Tensor | None = None
    generator_config: dict = field(default_factory=dict)
    generator_name_or_path: str | None = None
    generator_revision: str | None = None
    task_type: str = "SEQ_2_SEQ_LM"

    @property
    def rank(self) -> int:
        return next(iter(self.lora_factors.values()))[0].shape[0]

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank

    @property
    def target_modules(self) -> list[str]:
        return list(self.lora_factors)

    @property
    def has_fusion(self) -> bool:
        return self.instruction_states is not None

    def delta(self, name: str) -> torch.Tensor:
        """The weight update `(alpha / r) B A` of one module, `(out, in)`, in `nn.Linear.weight` orientation."""
        lora_a, lora_b = self.lora_factors[name]
        return self.scaling * lora_b @ lora_a

    def peft_config(self) -> LoraConfig:
        """The `LoraConfig` of this adapter (exact module names, so nothing else is adapted)."""
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            target_modules=self.target_modules,
            lora_dropout=0.0,
            bias="none",
            task_type=self.task_type,
            base_model_name_or_path=self.base_model_name_or_path,
        )

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under PEFT's on-disk key names (no adapter name)."""
        state = {}
        for name, (lora_a, lora_b) in self.lora_factors.items():
            state[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = lora_a.detach().contiguous()
            state[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = lora_b.detach().contiguous()
        return state

    def check_compatible(self, backbone: nn.Module) -> None:
        """Raises `ValueError` naming the module and shapes if this adapter does not fit `backbone`."""
        for name, (lora_a, lora_b) in self.lora_factors.items():
            try:
                module = backbone.get_submodule(name)
            except AttributeError:
                raise ValueError(f"Adapter module `{name}` does not exist in the backbone.") from None
            want_a, want_b = (self.rank, module.in_features), (module.out_features, self.rank)
            if tuple(lora_a.shape) != want_a or tuple(lora_b.shape) != want_b:
                raise ValueError(
                    f"Adapter module `{name}` has A {tuple(lora_a.shape)} and B {tuple(lora_b.shape)}, but the "
                    f"backbone's linear needs A {want_a} and B {want_b}."
                )

    def to_peft_model(self, model: nn.Module, adapter_name: str = "default") -> PeftModel:
        """Wraps a matching backbone (the T5, or the decoder-only LM for a `CAUSAL_LM` adapter) in a `peft.PeftModel`
        carrying this adapter.

        The fusion (if any) is not part of PEFT's LoRA: the returned model applies the LoRA updates only.
        """
        self.check_compatible(model)
        peft_model = PeftModel(model, self.peft_config(), adapter_name=adapter_name)
        state = {k: v.to(model.device) for k, v in self.peft_state_dict().items()}
        result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name)
        if result.unexpected_keys:
            raise ValueError(f"Adapter keys not used by the model: {sorted(result.unexpected_keys)[:5]}")
        return peft_model

    def save_pretrained(self, save_directory: str | os.PathLike, *, model_card: ModelCard | str | None = None) -> None:
        """Writes a standard PEFT LoRA directory (atomically), plus the instruction states when fusion is on.

        `model_card`: the README to write; by default [`minimal_adapter_card`] (the Hub metadata PEFT needs and the
        instruction). The tagi-hf package composes a fuller card (provenance, adapted modules, loading snippet):
        `adapter.save_pretrained(path, model_card=tagi_hf.hub.adapter_model_card(adapter))`, as its
        `save_adapters`, `generate_adapters_to_disk` and pushes do.
        """
        card = str(model_card) if model_card is not None else minimal_adapter_card(self)
        with atomic_directory(save_directory) as tmp:
            self.peft_config().save_pretrained(tmp)
            save_file(self.peft_state_dict(), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            if self.has_fusion:
                states = {"instruction_states": self.instruction_states.detach().contiguous()}
                save_file(states, tmp / INSTRUCTION_STATES, metadata={"format": "pt"})
            (tmp / PROVENANCE).write_text(json.dumps(self._provenance(), indent=2, sort_keys=True) + "\n")
            (tmp / "README.md").write_text(card, encoding="utf-8", newline="")

    def push_to_hub(self, repo_id: str, **kwargs):
        """Pushes the adapter as a PEFT LoRA repository (card, provenance, one commit), as `PeftModel.push_to_hub`
        does: `tagi_hf.hub.push_adapter_to_hub(self, repo_id, **kwargs)`, which documents the arguments.

        The model folder never imports the Hub code: the tagi-hf package registers it ([`register_adapter_pusher`]).
        A process that loaded the model as remote code without the package can save adapters but not push them.
        """
        if _ADAPTER_PUSHER is None:
            raise ImportError(
                "Pushing a generated adapter needs the tagi-hf package (`pip install tagi-hf`, then "
                "`import tagi_hf`); `adapter.save_pretrained(path)` works without it."
            )
        return _ADAPTER_PUSHER(self, repo_id, **kwargs)

    def _provenance(self) -> dict:
        return {
            "instruction": self.instruction,
            "base_model_name_or_path": self.base_model_name_or_path,
            "fusion": self.has_fusion,
            "generator_config": self.generator_config,
            "generator_name_or_path": self.generator_name_or_path,
            "generator_revision": self.generator_revision,
        }

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> GeneratedAdapter:
        """Loads an adapter written by [`~GeneratedAdapter.save_pretrained`] (or any PEFT LoRA directory).

        A PEFT directory whose modules differ in scaling (`use_rslora`, `rank_pattern`, `alpha_pattern`) is loaded as
        the equivalent plain LoRA: each module's PEFT scaling is folded into its B and lower ranks are zero-padded to
        the largest, so every module's update `scaling * B @ A` is PEFT's (saving it again writes a plain LoRA
        directory with the same updates). DoRA and LoRA biases have no equivalent and are refused.

        A reload is bit-identical in use: every tensor is copied out of the memory-mapped file into memory of its own,
        aligned by torch's allocator like the tensors `generate_adapter` returns (copies too, not views of the batch).
        So on the same model and machine the loaded adapter gives exactly (`torch.equal`) the outputs of the generated
        one it was saved from; tensors over the mapped file start at arbitrary offsets, where some CPUs' kernels round
        differently. The loaded adapter no longer depends on the file, which may then be changed or deleted.
        """
        path = Path(path)
        config = LoraConfig.from_pretrained(path)
        state = _load_safetensors(path / ADAPTER_WEIGHTS)
        factors, lora_alpha = _uniform_scaling(_factors_from_peft(state, path), config, path)
        meta = json.loads((path / PROVENANCE).read_text()) if (path / PROVENANCE).exists() else {}
        states = _load_safetensors(path / INSTRUCTION_STATES)["instruction_states"] if meta.get("fusion") else None
        return cls(
            lora_factors=factors,
            lora_alpha=lora_alpha,
            instruction=meta.get("instruction"),
            base_model_name_or_path=config.base_model_name_or_path,
            instruction_states=states,
            generator_config=meta.get("generator_config", {}),
            generator_name_or_path=meta.get("generator_name_or_path"),
            generator_revision=meta.get("generator_revision"),
            task_type=config.task_type or "SEQ_2_SEQ_LM",
        )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file` (no pickle, no code), with an error naming the file when it is damaged; each
    tensor copied into fresh memory (see [`~GeneratedAdapter.from_pretrained`] for why)."""
    try:
        mapped = load_file(path)
    except SafetensorError as error:
        raise ValueError(f"`{path}` is not a valid safetensors file (truncated or corrupted?): {error}") from error
    return {name: fresh_cpu_copy(tensor) for name, tensor in mapped.items()}


_ADAPTER_PUSHER: Callable[..., Any] | None = None


def register_adapter_pusher(pusher: Callable[..., Any] | None) -> None:
    """Sets what [`GeneratedAdapter.push_to_hub`] calls (`tagi_hf` registers `tagi_hf.hub.push_adapter_to_hub` on
    import; `None` unsets it). The dependency points from the package to the model folder, never back."""
    global _ADAPTER_PUSHER
    _ADAPTER_PUSHER = pusher


def fresh_cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy in memory of its own, aligned by torch's allocator (never a view of a batch or a file)."""
    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def _factors_from_peft(state: dict[str, torch.Tensor], path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    names = sorted({k[len(_PEFT_PREFIX) : -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")})
    factors = {}
    for name in names:
        key_b = f"{_PEFT_PREFIX}{name}.lora_B.weight"
        if key_b not in state:
            raise ValueError(f"`{path / ADAPTER_WEIGHTS}` has lora_A but no lora_B for module `{name}`.")
        factors[name] = (state[f"{_PEFT_PREFIX}{name}.lora_A.weight"], state[key_b])
    if not factors:
        raise ValueError(f"`{path / ADAPTER_WEIGHTS}` holds no LoRA weights.")
    return factors


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's lookup in `rank_pattern` / `alpha_pattern`: the first key that matches the end of the module name at
    a dot boundary (a regular expression), else `default`."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _uniform_scaling(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]], config: LoraConfig, path: Path
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """`(factors, lora_alpha)` with one scaling `lora_alpha / r` for every module and the same updates as PEFT's
    per-module `alpha_m / r_m` (or `alpha_m / sqrt(r_m)` with `use_rslora`): B carries the ratio, and modules of a
    lower rank are zero-padded to `r` (which leaves `B @ A` unchanged). Untouched for a plain LoRA directory."""
    for flag in ("use_dora", "lora_bias"):
        if getattr(config, flag, False):
            raise ValueError(f"`{path / ADAPTER_CONFIG}` sets `{flag}`: only plain LoRA adapters can be loaded.")
    rank_pattern, alpha_pattern = config.rank_pattern or {}, config.alpha_pattern or {}
    rank = max(lora_a.shape[0] for lora_a, _ in factors.values())
    scaling = config.lora_alpha / rank
    uniform = {}
    for name, (lora_a, lora_b) in factors.items():
        module_rank = lora_a.shape[0]
        expected_rank = _pattern_value(rank_pattern, name, config.r)
        if module_rank != expected_rank:
            raise ValueError(
                f"`{path}`: module `{name}` has rank {module_rank} in the weights, but the config gives it rank "
                f"{expected_rank} (`r` / `rank_pattern`)."
            )
        alpha = _pattern_value(alpha_pattern, name, config.lora_alpha)
        module_scaling = alpha / math.sqrt(module_rank) if config.use_rslora else alpha / module_rank
        if module_scaling != scaling:
            lora_b = lora_b * (module_scaling / scaling)
        if module_rank < rank:
            lora_a = F.pad(lora_a, (0, 0, 0, rank - module_rank))
            lora_b = F.pad(lora_b, (0, rank - module_rank))
        uniform[name] = (lora_a, lora_b)
    return uniform, config.lora_alpha


def minimal_adapter_card(adapter: GeneratedAdapter) -> str:
    """The card [`GeneratedAdapter.save_pretrained`] writes unless given one: the Hub metadata PEFT needs (with the tag
    that links the adapter to its base model) and the instruction. Written here, in the model folder, so a process
    that loaded the model as remote code without the tagi-hf package writes it too."""
    from huggingface_hub import ModelCardData

    base = adapter.base_model_name_or_path or None
    tags = ["tagi", "lora", "generated-adapter", *([f"base_model:adapter:{base}"] if base else [])]
    data = ModelCardData(library_name="peft", base_model=base, tags=tags)
    instruction = (adapter.instruction or "(not recorded)").replace("\n", " ")
    fusion = (
        f"\nWith its instruction fusion (states in `{INSTRUCTION_STATES}`): plain PEFT applies the LoRA weights only "
        "and **drops the fusion**; `GeneratedAdapter.from_pretrained(path)` run in the generator keeps it.\n"
    )
    return (
        f"---\n{data.to_yaml()}\n---\n\n# LoRA adapter generated by TAGI\n\nGenerated from the instruction:\n\n"
        f"> {instruction}\n\nLoad it with `PeftModel.from_pretrained(base_model, path)`.\n"
        f"{fusion if adapter.has_fusion else ''}"
    )
