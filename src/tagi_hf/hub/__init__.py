"""The Hub side: pushes and pulls, model cards (Jinja templates), folders of many adapters."""

from .cards import adapter_model_card, adapters_model_card, generator_model_card, teacher_model_card
from .collections import ADAPTERS_INDEX, generate_adapters_to_disk, load_adapters, named_adapters, save_adapters
from .push import (
    HubUploadError,
    generate_and_push,
    push_adapter_to_hub,
    push_adapters_to_hub,
    push_generated,
    push_model_to_hub,
    push_teachers_to_hub,
)

__all__ = [
    "ADAPTERS_INDEX",
    "HubUploadError",
    "adapter_model_card",
    "adapters_model_card",
    "generate_adapters_to_disk",
    "generate_and_push",
    "generator_model_card",
    "load_adapters",
    "named_adapters",
    "push_adapter_to_hub",
    "push_adapters_to_hub",
    "push_generated",
    "push_model_to_hub",
    "push_teachers_to_hub",
    "save_adapters",
    "teacher_model_card",
]
