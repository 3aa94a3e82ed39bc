"""Model cards for everything TAGI publishes, rendered from Jinja templates shipped in the package.

Metadata goes through `huggingface_hub.ModelCardData`, prose through `templates/*.md` (rendered as
`ModelCard.from_template` renders them, each template compiled once per process):

- [`generator_model_card`]: a trained [`TagiModel`] or [`TagiForCausalLM`] (`library_name: transformers`);
- [`adapter_model_card`] / [`adapters_model_card`]: one generated adapter / a repo of many (`library_name: peft`,
  `base_model`, and the tag `base_model:adapter:<base id>` that links an adapter to its base on the Hub);
- [`teacher_model_card`] / [`teachers_model_card`]: instance-trained LoRA teachers (one / a whole bank).

A card never states a number it was not given: no license, score or training detail is invented.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData

from ..modeling import TagiForCausalLM, TagiModel

if TYPE_CHECKING:
    from ..modeling.adapter import GeneratedAdapter
    from ..modeling.modeling_tagi_base import TagiPreTrainedModel

TEMPLATES = Path(__file__).parent / "templates"
TAGI_TAGS = ["tagi", "lora", "hypernetwork", "instruction-learning"]
TEACHER_TAGS = ["tagi", "lora", "teacher-adapter", "instance-training"]
PAPER = "Liao et al., *From Instance Training to Instruction Learning: Task Adapters Generation from Instructions*"
PAPER_URL = "https://arxiv.org/abs/2406.12382"
_KIND_NAMES = {
    r"encoder\.block\.\d+\.layer\.0\.SelfAttention": "encoder self-attention",
    r"decoder\.block\.\d+\.layer\.0\.SelfAttention": "decoder self-attention",
    r"decoder\.block\.\d+\.layer\.1\.EncDecAttention": "decoder cross-attention",
}


def _card_data(
    library_name: str, base: str | list[str] | None, tags: Sequence[str], license: str | None
) -> ModelCardData:
    """Metadata shared by every card: the adapter tag of each base model is added for PEFT repos."""
    bases = [base] if isinstance(base, str) else list(base or [])
    tags = list(dict.fromkeys(tags))
    if library_name == "peft":
        tags += [f"base_model:adapter:{b}" for b in bases]
    base_model = bases[0] if len(bases) == 1 else (bases or None)
    return ModelCardData(library_name=library_name, base_model=base_model, tags=tags, license=license)


@functools.cache
def _template(name: str) -> jinja2.Template:
    """A template compiled once per process (compiling dominated writing thousands of adapter cards)."""
    return jinja2.Template((TEMPLATES / name).read_text(encoding="utf-8"))


def _render(template: str, data: ModelCardData, **kwargs: Any) -> ModelCard:
    """`ModelCard.from_template(data, template, **kwargs)`, from a template compiled once."""
    variables = {**data.to_dict(), "paper": PAPER, "paper_url": PAPER_URL, **kwargs}
    return ModelCard(_template(template).render(card_data=data.to_yaml(), **variables))


def modules_summary(module_names: Sequence[str]) -> str:
    """Readable list of adapted projections, e.g. `"encoder self-attention (q, v); decoder ... (q, v)"`."""
    found: dict[str, set[str]] = {}
    for name in module_names:
        prefix, _, projection = name.rpartition(".")
        kind = next((label for pattern, label in _KIND_NAMES.items() if re.fullmatch(pattern, prefix)), prefix)
        found.setdefault(kind, set()).add(projection)
    return "; ".join(f"{kind} ({', '.join(sorted(projections))})" for kind, projections in found.items())


def _auto_class(task_type: str | None) -> str:
    """The transformers Auto class a PEFT adapter's base loads with: that of the family whose adapters have
    `task_type` (T5's when it is not recorded)."""
    family = TagiForCausalLM if task_type == TagiForCausalLM.peft_task_type else TagiModel
    return family.backbone_auto_class.__name__


def _one_line(text: str | None, width: int = 100) -> str:
    """An instruction squeezed into a Markdown table cell."""
    flat = " ".join((text or "").split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


def adapter_model_card(
    adapter: GeneratedAdapter,
    *,
    repo_id: str | None = None,
    subfolder: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card of one generated adapter: PEFT metadata linking it to its base, the instruction, provenance.

    `repo_id` / `subfolder` fill the loading snippet (a placeholder is shown without them).
    """
    base = adapter.base_model_name_or_path or None
    data = _card_data("peft", base, [*TAGI_TAGS, "generated-adapter"], license)
    return _render(
        "adapter_card.md",
        data,
        instruction=adapter.instruction,
        base_model=base,
        repo=repo_id,
        subfolder=subfolder,
        rank=adapter.rank,
        lora_alpha=adapter.lora_alpha,
        num_modules=len(adapter.lora_factors),
        modules=modules_summary(adapter.target_modules),
        fusion=adapter.has_fusion,
        generator=adapter.generator_name_or_path,
        generator_revision=adapter.generator_revision,
        auto_class=_auto_class(adapter.task_type),
    )


def adapters_model_card(
    adapters: Mapping[str, GeneratedAdapter], *, repo_id: str | None = None, license: str | None = None
) -> ModelCard:
    """The top card of a repo holding many generated adapters, one per subfolder (`{subfolder: adapter}`)."""
    bases = sorted({a.base_model_name_or_path for a in adapters.values() if a.base_model_name_or_path})
    generators = sorted({(a.generator_name_or_path or "", a.generator_revision or "") for a in adapters.values()})
    rows = [{"name": name, "instruction": _one_line(a.instruction)} for name, a in adapters.items()]
    data = _card_data("peft", bases, [*TAGI_TAGS, "generated-adapter"], license)
    return _render(
        "adapters_card.md",
        data,
        repo=repo_id,
        rows=rows,
        base_models=bases,
        generators=[{"name": name, "revision": revision} for name, revision in generators],
        fusion=any(a.has_fusion for a in adapters.values()),
        first=next(iter(adapters)),
        auto_class=_auto_class(next(iter(adapters.values())).task_type),
    )


def generator_model_card(
    model: TagiPreTrainedModel,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card of a trained TAGI generator (a [`TagiModel`] or [`TagiForCausalLM`] checkpoint with its remote
    code)."""
    config = model.config
    base = config.base_model_name_or_path or None
    count = lambda part: sum(p.numel() for p in part.parameters()) if part is not None else 0  # noqa: E731
    text = config.text_config
    data = _card_data("transformers", base, [*TAGI_TAGS, "adapter-generator", text.model_type, *tags], license)
    fusion = [getattr(model, name, None) for name in ("encoder_fusion", "decoder_gates", "layer_fusion")]
    return _render(
        "generator_card.md",
        data,
        repo=repo_id,
        base_model=base,
        config=config,
        text=config.text_config,
        generator_parameters=count(model.generator),
        fusion_parameters=sum(count(part) for part in fusion),
        instruction_encoder_parameters=count(model.instruction_encoder),
        backbone_parameters=count(model.backbone),
        auto_class=model.auto_class_name,
    )


def teacher_model_card(
    key: str,
    adapter_config: Mapping[str, Any],
    *,
    group_by: str | None = None,
    repo_id: str | None = None,
    subfolder: str | None = None,
    license: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of one instance-trained LoRA teacher (its PEFT `adapter_config.json` as a dict).

    `info` is the teacher's `tagi_teacher.json`, if any: `num_instances` and `train_loss` are shown as recorded.
    """
    base = adapter_config.get("base_model_name_or_path") or None
    return _render(
        "teacher_card.md",
        _card_data("peft", base, TEACHER_TAGS, license),
        key=key,
        group_by=group_by or "task",
        base_model=base,
        repo=repo_id,
        subfolder=subfolder,
        rank=adapter_config.get("r"),
        lora_alpha=adapter_config.get("lora_alpha"),
        target_modules=adapter_config.get("target_modules"),
        info=dict(info or {}),
        auto_class=_auto_class(adapter_config.get("task_type")),
    )


def teachers_model_card(
    index: Mapping[str, Any],
    adapter_configs: Mapping[str, Mapping[str, Any]],
    *,
    repo_id: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The top card of a teacher bank: `index` is its `teachers.json`, `adapter_configs` `{key: adapter config}`."""
    bases = sorted({c.get("base_model_name_or_path") for c in adapter_configs.values()} - {None, ""})
    teachers = [{"key": key, "subfolder": sub} for key, sub in index["teachers"].items()]
    return _render(
        "teachers_card.md",
        _card_data("peft", bases, TEACHER_TAGS, license),
        repo=repo_id,
        group_by=index.get("group_by") or "task",
        base_models=bases,
        teachers=teachers,
        ranks=sorted({c.get("r") for c in adapter_configs.values()} - {None}),
        auto_class=_auto_class(next(iter(adapter_configs.values()), {}).get("task_type")),
    )
