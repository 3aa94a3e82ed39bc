"""The teacher bank on disk, and its one reader and writer: `teachers.json` + one PEFT LoRA directory per key.

`teachers.json` is `{"group_by": "task" | "category", "base_model_name_or_path": ..., "teachers": {key: subfolder}}`;
each subfolder is an ordinary PEFT LoRA directory plus `tagi_teacher.json` (key, group_by, num_instances, train_loss).
Training ([`train_lora_teachers`], [`train_lora_teachers_jointly`]), [`TeacherBank`] and the Hub push all go through
[`open_teacher_index`] / [`read_teacher_index`] / [`write_teacher_index`].
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from ..modeling.adapter import ADAPTER_CONFIG, GeneratedAdapter
from ..modeling.configuration_tagi import TagiConfig
from ..modeling.file_utils import atomic_write_text
from ..modeling.lora import LoraFactors, lora_targets

__all__ = [
    "GROUP_BY",
    "TEACHER_INDEX",
    "TEACHER_INFO",
    "TeacherBank",
    "open_teacher_index",
    "read_teacher_index",
    "teacher_dir_name",
    "teacher_target_modules",
    "write_teacher_index",
]

TEACHER_INDEX = "teachers.json"
TEACHER_INFO = "tagi_teacher.json"  # per adapter: key, group_by, num_instances, train_loss
GROUP_BY = ("task", "category")


def teacher_dir_name(key: str) -> str:
    """A directory name for a key; a key that needs changing (`Synthetic -> a>b`) gets a hash to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100]
    return key if safe == key else f"{safe or 'teacher'}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def read_teacher_index(path: str | os.PathLike) -> dict[str, Any]:
    """The index of the bank at `path`, checked: a `teachers` mapping whose subfolders lie inside the bank and hold
    a PEFT adapter. Raises `ValueError` naming the problem."""
    bank = Path(path)
    index_path = bank / TEACHER_INDEX
    if not index_path.is_file():
        raise ValueError(f"`{bank}` is not a teacher bank: `{TEACHER_INDEX}` is missing.")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if not isinstance(index.get("teachers"), dict) or not index["teachers"]:
        raise ValueError(f"`{index_path}` has no `teachers` mapping (key -> subfolder).")
    if index.get("group_by") not in GROUP_BY:
        raise ValueError(f"`{index_path}` has group_by={index.get('group_by')!r}; expected one of {GROUP_BY}.")
    for key, sub in index["teachers"].items():
        parts = PurePosixPath(str(sub)).parts
        if not parts or PurePosixPath(str(sub)).is_absolute() or ".." in parts:
            raise ValueError(f"`{index_path}`: teacher `{key}` has subfolder {sub!r}, which is not inside the bank.")
        if not (bank / sub / ADAPTER_CONFIG).is_file():
            raise ValueError(f"`{index_path}`: teacher `{key}` has no `{ADAPTER_CONFIG}` in `{bank / sub}`.")
    return index


def open_teacher_index(output_dir: str | os.PathLike, group_by: str, base_name: str | None) -> dict[str, Any]:
    """The index a training run adds to: a new empty one, or the existing one if its settings match this run's."""
    path = Path(output_dir) / TEACHER_INDEX
    if not path.exists():
        return {"group_by": group_by, "base_model_name_or_path": base_name, "teachers": {}}
    index = json.loads(path.read_text(encoding="utf-8"))
    for field, value in (("group_by", group_by), ("base_model_name_or_path", base_name)):
        if index.get(field) != value:
            raise ValueError(f"`{path}` has {field}={index.get(field)!r}, but this run asks for {value!r}.")
    return index


def write_teacher_index(output_dir: str | os.PathLike, index: Mapping[str, Any]) -> None:
    """Writes `teachers.json` atomically (after each teacher, so an interrupted run keeps what it finished)."""
    atomic_write_text(Path(output_dir) / TEACHER_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")


def teacher_target_modules(config: PretrainedConfig, projections: Sequence[str] = ("q", "v")) -> list[str]:
    """
    Exact PEFT names of `projections` in every attention of a T5 (encoder self, decoder self, decoder cross): the
    modules the TAGI generator adapts, in [`lora_targets`] order.

    Example:

    ```python
    >>> from transformers import T5Config
    >>> teacher_target_modules(T5Config(num_layers=1, num_decoder_layers=1))[-1]
    'decoder.block.0.layer.1.EncDecAttention.v'
    ```
    """
    text_config = copy.deepcopy(config)  # TagiConfig may fill in `decoder_start_token_id`: leave the caller's alone
    kwargs = dict(fusion="none", fusion_num_heads=1, lora_target_modules=list(projections))
    tagi = TagiConfig(text_config=text_config, **kwargs)
    return [target.name for target in lora_targets(tagi)]


class TeacherBank:
    """
    The LoRA teachers written by [`train_lora_teachers`]: the weight updates `L_ins` aligns the generator with.

    Teachers are read lazily with `safetensors` (never pickle) and kept on the CPU (the `cache_size` last used).

    Example:

    ```python
    >>> bank = TeacherBank.from_directory("teachers")  # doctest: +SKIP
    >>> bank.check_compatible(tagi_model)  # doctest: +SKIP
    >>> factors = bank.lora_factors([bank.key_for(task, category)], device="cuda")  # doctest: +SKIP
    >>> factors["encoder.block.0.layer.0.SelfAttention.q"].A.shape  # (batch, r, d_in)  # doctest: +SKIP
    ```
    """

    def __init__(self, path: str | os.PathLike, index: Mapping[str, Any], *, cache_size: int | None = None):
        self.path = Path(path)
        self.group_by: str = index["group_by"]
        self.base_model_name_or_path: str | None = index.get("base_model_name_or_path")
        self._subdirs: dict[str, str] = dict(index["teachers"])
        self.cache_size = cache_size
        self._cache: OrderedDict[str, GeneratedAdapter] = OrderedDict()

    @classmethod
    def from_directory(cls, path: str | os.PathLike, *, cache_size: int | None = None) -> TeacherBank:
        """Opens the bank at `path` (a folder holding `teachers.json`)."""
        return cls(path, read_teacher_index(path), cache_size=cache_size)

    @property
    def keys(self) -> list[str]:
        return sorted(self._subdirs)

    def __contains__(self, key: object) -> bool:
        return key in self._subdirs

    def key_for(self, task: str, category: str) -> str:
        """The teacher key of an instance: its task or its category, after the bank's `group_by`."""
        return task if self.group_by == "task" else category

    def adapter_path(self, key: str) -> Path:
        """The PEFT adapter directory of one teacher."""
        if key not in self._subdirs:
            raise ValueError(f"No teacher adapter for {self.group_by} `{key}` in the teacher bank `{self.path}`.")
        return self.path / self._subdirs[key]

    def teacher(self, key: str) -> GeneratedAdapter:
        """One teacher: factors `{module: (A (r, d_in), B (d_out, r))}` and alpha, on the CPU (cached)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        adapter = GeneratedAdapter.from_pretrained(self.adapter_path(key))  # safetensors.torch.load_file inside
        self._cache[key] = adapter
        if self.cache_size is not None and len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return adapter

    def lora_factors(
        self,
        keys: Sequence[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        modules: Sequence[str] | None = None,
    ) -> dict[str, LoraFactors]:
        """
        The teachers of a batch, stacked per module: `{module: LoraFactors(A, B, scaling)}`.

        Args:
            keys (`Sequence[str]`): one teacher key per row (see [`~TeacherBank.key_for`]).
            device, dtype: where and in which dtype the factors are returned.
            modules (`Sequence[str]`, *optional*): modules to return; defaults to all of the first teacher's.

        Returns:
            `dict[str, LoraFactors]`: A `(batch, r, d_in)`, B `(batch, d_out, r)` and scaling `alpha / r` (a float,
            or a `(batch,)` tensor when the teachers' scalings differ). Teachers of lower rank are zero-padded to
            the largest rank, which leaves their update `B A` unchanged.
        """
        if not keys:
            raise ValueError("`keys` must name at least one teacher.")
        teachers = [self.teacher(key) for key in keys]
        rank = max(t.rank for t in teachers)
        scalings = [t.scaling for t in teachers]
        scaling = scalings[0] if len(set(scalings)) == 1 else torch.tensor(scalings, device=device, dtype=dtype)
        factors = {}
        for name in modules if modules is not None else teachers[0].target_modules:
            pairs = [self._module(t, key, name) for t, key in zip(teachers, keys)]
            lora_a = torch.stack([F.pad(a, (0, 0, 0, rank - a.shape[0])) for a, _ in pairs])  # (batch, r, d_in)
            lora_b = torch.stack([F.pad(b, (0, rank - b.shape[1])) for _, b in pairs])  # (batch, d_out, r)
            factors[name] = LoraFactors(lora_a.to(device, dtype), lora_b.to(device, dtype), scaling)
        return factors

    def _module(self, teacher: GeneratedAdapter, key: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in teacher.lora_factors:
            raise ValueError(f"Teacher `{key}` ({self.adapter_path(key)}) has no adapter for module `{name}`.")
        return teacher.lora_factors[name]

    def check_compatible(
        self, target: Mapping[str, tuple[int, int]] | nn.Module, keys: Sequence[str] | None = None
    ) -> None:
        """
        Raises `ValueError` unless every teacher adapts every target module, with the right shape.

        Args:
            target (`Mapping[str, tuple[int, int]]` or `nn.Module`): `{module: (d_out, d_in)}` of the modules the
                student adapts, or a model: a [`TagiModel`] (its generator's targets) or a T5 (q and v of every
                attention, [`teacher_target_modules`]).
            keys (`Sequence[str]`, *optional*): teachers to check; defaults to all.
        """
        shapes = target if isinstance(target, Mapping) else _target_shapes(target)
        for key in self.keys if keys is None else keys:
            teacher = self.teacher(key)
            for name, want in shapes.items():
                lora_a, lora_b = self._module(teacher, key, name)
                have = (lora_b.shape[0], lora_a.shape[1])
                if have != tuple(want):
                    raise ValueError(
                        f"Teacher `{key}` module `{name}` updates a weight of shape {have} (d_out, d_in), but the "
                        f"student's module has shape {tuple(want)}: was the teacher trained on another backbone?"
                    )


def _target_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """`{module: (d_out, d_in)}` of the modules a model's TAGI generator adapts."""
    if isinstance(getattr(model, "config", None), TagiConfig):
        return {t.name: (t.out_features, t.in_features) for t in lora_targets(model.config)}
    linears = {name: model.get_submodule(name) for name in teacher_target_modules(model.config)}
    return {name: (linear.out_features, linear.in_features) for name, linear in linears.items()}
