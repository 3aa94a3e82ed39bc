"""The model: everything `TagiModel.save_pretrained` ships as remote code.

Every module here imports only its siblings (and torch / transformers / peft / safetensors / huggingface_hub), so
the folder is exactly the remote-code bundle: `AutoModel.from_pretrained(path, trust_remote_code=True)` runs it
without the `tagi_hf` package. Training, teachers, evaluation, the Hub code and the recipes import from here; nothing
here imports them (`tests/test_layout.py` checks both).
"""

import os

from .adapter import GeneratedAdapter
from .configuration_tagi import TagiConfig
from .modeling_tagi import TagiModel
from .modeling_tagi_causal import TagiForCausalLM
from .task_state import TaskState, TaskStateCache


def tagi_class_for(config) -> type:
    """[`TagiModel`] for a T5 backbone, [`TagiForCausalLM`] for a decoder-only one (`config`: the backbone's config,
    a `TagiConfig`, or a path holding either)."""
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config)
    text = getattr(config, "text_config", None) if getattr(config, "model_type", None) == "tagi" else config
    return TagiModel if getattr(text or config, "is_encoder_decoder", False) else TagiForCausalLM


__all__ = [
    "GeneratedAdapter",
    "TagiConfig",
    "TagiForCausalLM",
    "TagiModel",
    "TaskState",
    "TaskStateCache",
    "tagi_class_for",
]
