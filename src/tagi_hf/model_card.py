"""Model cards for generated adapters and generators, rendered from Jinja templates shipped in the package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from .adapter import GeneratedAdapter

TEMPLATES = Path(__file__).parent / "templates"
TAGI_TAGS = ["tagi", "lora", "hypernetwork", "instruction-learning"]


def adapter_model_card(adapter: GeneratedAdapter) -> ModelCard:
    """The card of a generated adapter: PEFT metadata linking it to its base model, the instruction, provenance."""
    base = adapter.base_model_name_or_path
    tags = [*TAGI_TAGS, "generated-adapter"]
    if base:
        tags.append(f"base_model:adapter:{base}")
    data = ModelCardData(library_name="peft", base_model=base, tags=tags, pipeline_tag="text2text-generation")
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "adapter_card.md"),
        instruction=adapter.instruction,
        base_model=base,
        rank=adapter.rank,
        lora_alpha=adapter.lora_alpha,
        num_modules=len(adapter.lora_factors),
        fusion=adapter.has_fusion,
        generator=adapter.generator_name_or_path,
        generator_revision=adapter.generator_revision,
    )
