"""Stage 0 of TAGI, the teachers: [`train_lora_teachers`] trains one PEFT LoRA per task (or category), the weight
updates `L_ins` aligns the generator with, read back by [`TeacherBank`]. The instruction-in-context baseline
(`L_kl`'s teacher) is in `baseline.py`.

A LoRA teacher reads the instance input *without* the instruction ([`format_student_input`]), like the student: an
adapter trained on one task already knows its task, so its update encodes what the student's generated adapter must
encode, not how to read an instruction the student never sees.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5ForConditionalGeneration,
    set_seed,
)
from transformers.utils import logging

from .adapter import ADAPTER_CONFIG, GeneratedAdapter
from .configuration_tagi import TagiConfig
from .data import TagiDataCollator
from .lora import lora_targets
from .losses import LoraFactors
from .utils import atomic_directory, atomic_write_text

logger = logging.get_logger(__name__)

__all__ = ["TEACHER_INDEX", "TeacherBank", "teacher_target_modules", "train_lora_teachers"]

TEACHER_INDEX = "teachers.json"
TEACHER_INFO = "tagi_teacher.json"  # per adapter: key, group_by, num_instances, train_loss
GROUP_BY = ("task", "category")

Backbone = str | os.PathLike | T5ForConditionalGeneration


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


def _dir_name(key: str) -> str:
    """A directory name for a key; a key that needs changing (`Synthetic -> a>b`) gets a hash to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100]
    return key if safe == key else f"{safe or 'teacher'}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _load_backbone(backbone: Backbone) -> tuple[T5ForConditionalGeneration, str | None]:
    """A private working copy of the backbone (the caller's model is never modified) and its name or path."""
    if isinstance(backbone, T5ForConditionalGeneration):
        return copy.deepcopy(backbone), backbone.name_or_path or None
    return T5ForConditionalGeneration.from_pretrained(backbone), os.fspath(backbone)


@dataclass
class _Seq2SeqCollator:
    """Keeps what a plain T5 forward reads from a [`TagiDataCollator`] batch: the student's or the teacher's source."""

    collator: TagiDataCollator
    source: str = "student"  # "student": instance alone; "teacher": instruction + instance

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(rows)
        prefix = "teacher_" if self.source == "teacher" else ""
        return {
            "input_ids": batch[f"{prefix}input_ids"],  # (batch, src_len)
            "attention_mask": batch[f"{prefix}attention_mask"],  # (batch, src_len)
            "labels": batch["labels"],  # (batch, tgt_len)
        }


def _training_args(output_dir: str | Path, extra: Mapping[str, Any] | None, **kwargs) -> Seq2SeqTrainingArguments:
    defaults = dict(output_dir=os.fspath(output_dir), report_to=[], use_cpu=not torch.cuda.is_available())
    defaults.update(save_strategy="no", logging_steps=max(1, kwargs["max_steps"] // 10), data_seed=kwargs["seed"])
    defaults["remove_unused_columns"] = False  # the collator reads the raw text columns
    return Seq2SeqTrainingArguments(**{**defaults, **kwargs, **(extra or {})})


def _train(model: nn.Module, args: Seq2SeqTrainingArguments, dataset: Dataset, collator, **train_kwargs) -> float:
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    # T5's forward takes **kwargs, so Trainer would assume it scales its loss for gradient accumulation; it does not.
    trainer.model_accepts_loss_kwargs = False
    return trainer.train(**train_kwargs).training_loss


def _train_teacher(model, lora_config: LoraConfig, dataset: Dataset, collator, path: Path, info: dict, **args):
    """Trains one teacher on `model`, saves it to `path` atomically, and returns `model` without its LoRA layers."""
    set_seed(args["seed"])  # the LoRA init depends on the seed only, not on the teachers trained before
    peft_model = get_peft_model(model, copy.deepcopy(lora_config))
    with tempfile.TemporaryDirectory() as scratch:
        info["train_loss"] = _train(peft_model, _training_args(scratch, **args), dataset, collator)
    with atomic_directory(path) as tmp:
        peft_model.save_pretrained(tmp)
        (tmp / TEACHER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info(f"Saved teacher `{info['key']}` (train loss {info['train_loss']:.4f}) to {path}.")
    return peft_model.unload()  # the bare backbone again: the next teacher starts from it, untouched


def _group_indices(dataset: Dataset, group_by: str) -> dict[str, list[int]]:
    groups = defaultdict(list)
    for index, key in enumerate(dataset[group_by]):
        groups[key].append(index)
    return dict(groups)


def _read_index(output_dir: Path, group_by: str, base_name: str | None) -> dict[str, Any]:
    path = output_dir / TEACHER_INDEX
    if not path.exists():
        return {"group_by": group_by, "base_model_name_or_path": base_name, "teachers": {}}
    index = json.loads(path.read_text())
    for field, value in (("group_by", group_by), ("base_model_name_or_path", base_name)):
        if index.get(field) != value:
            raise ValueError(f"`{path}` has {field}={index.get(field)!r}, but this run asks for {value!r}.")
    return index


def train_lora_teachers(
    backbone: Backbone,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    *,
    group_by: str = "task",
    rank: int = 8,
    lora_alpha: float | None = None,
    target_modules: list[str] | None = None,
    max_steps: int = 100,
    learning_rate: float = 1e-4,
    per_device_train_batch_size: int = 8,
    seed: int = 42,
    max_input_length: int = 512,
    max_target_length: int = 128,
    keys: list[str] | None = None,
    base_model_name_or_path: str | None = None,
    training_kwargs: Mapping[str, Any] | None = None,
) -> TeacherBank:
    """
    Train one LoRA teacher per task (or category) of `train_dataset` and save each as a PEFT adapter directory.

    Each teacher is `get_peft_model` on a private working copy of the backbone, trained with `Seq2SeqTrainer` on its
    group's instances (input without the instruction, see the module docstring), saved atomically to
    `output_dir/<key>/` and taken off again with `unload()`: teachers never see each other's weights and the caller's
    backbone is never touched. `output_dir/teachers.json` indexes them. Keys already saved are skipped, so a rerun
    continues where a previous run stopped (with the settings those teachers were trained with).

    Args:
        backbone (`str`, `os.PathLike` or [`~transformers.T5ForConditionalGeneration`]): the frozen backbone.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): its tokenizer.
        train_dataset (`datasets.Dataset`): rows of [`load_sni`] (`task`, `category`, `input`, `outputs`, ...).
        output_dir (`str` or `os.PathLike`): where the adapters and `teachers.json` go.
        group_by (`str`, defaults to `"task"`): `"task"` (one teacher per task) or `"category"`.
        rank (`int`, defaults to 8): LoRA rank `r` (paper: 32, like the generated adapters).
        lora_alpha (`float`, *optional*): LoRA alpha; defaults to `2 * rank` as in the paper.
        target_modules (`list[str]`, *optional*): exact PEFT names; defaults to [`teacher_target_modules`].
        max_steps, learning_rate, per_device_train_batch_size, seed: per teacher (paper: 10k, 1e-4, 8x2).
        max_input_length, max_target_length (`int`): tokens kept of an input and of a target.
        keys (`list[str]`, *optional*): train only these tasks (or categories).
        base_model_name_or_path (`str`, *optional*): written into the adapters; defaults to the backbone's path.
        training_kwargs (`Mapping`, *optional*): extra [`~transformers.Seq2SeqTrainingArguments`] (`bf16`, ...).

    Returns:
        [`TeacherBank`]: the bank at `output_dir`.

    Example:

    ```python
    >>> bank = train_lora_teachers("t5-base", tokenizer, data["train"], "teachers", rank=32)  # doctest: +SKIP
    ```
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"`group_by` must be one of {GROUP_BY}, got {group_by!r}.")
    groups = _group_indices(train_dataset, group_by)
    unknown = [key for key in keys or () if key not in groups]
    if unknown:
        raise ValueError(f"No training instances for {group_by} `{unknown[0]}` (unknown keys: {unknown}).")
    model, name = _load_backbone(backbone)
    name = base_model_name_or_path or name
    model.name_or_path = name or ""  # our copy: get_peft_model writes this name into every adapter config
    output_dir = Path(output_dir)
    index = _read_index(output_dir, group_by, name)
    targets = target_modules or teacher_target_modules(model.config)
    alpha = 2 * rank if lora_alpha is None else lora_alpha
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, task_type="SEQ_2_SEQ_LM")
    lengths = dict(max_input_length=max_input_length, max_target_length=max_target_length)
    collator = _Seq2SeqCollator(TagiDataCollator(tokenizer, teacher_inputs=False, **lengths))
    args = dict(extra=training_kwargs, max_steps=max_steps, learning_rate=learning_rate, seed=seed)
    args["per_device_train_batch_size"] = per_device_train_batch_size
    todo = keys if keys is not None else sorted(groups)
    for number, key in enumerate(todo, 1):
        path = output_dir / _dir_name(key)
        if (path / ADAPTER_CONFIG).exists():
            logger.info(f"Teacher {number}/{len(todo)} `{key}` exists, skipping.")
        else:
            logger.info(f"Training teacher {number}/{len(todo)} `{key}` on {len(groups[key])} instances.")
            info = {"key": key, "group_by": group_by, "num_instances": len(groups[key])}
            model = _train_teacher(model, lora_config, train_dataset.select(groups[key]), collator, path, info, **args)
        index["teachers"][key] = path.name
        atomic_write_text(output_dir / TEACHER_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return TeacherBank.from_directory(output_dir)


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
        index_path = Path(path) / TEACHER_INDEX
        if not index_path.exists():
            raise ValueError(f"`{path}` is not a teacher bank: `{TEACHER_INDEX}` is missing.")
        return cls(path, json.loads(index_path.read_text()), cache_size=cache_size)

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
