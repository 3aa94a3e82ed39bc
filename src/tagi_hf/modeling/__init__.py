"""The model: everything `TagiModel.save_pretrained` ships as remote code.

Every module here imports only its siblings (and torch / transformers / peft / safetensors / huggingface_hub), so
the folder is exactly the remote-code bundle: `AutoModel.from_pretrained(path, trust_remote_code=True)` runs it
without the `tagi_hf` package. Training, teachers, evaluation, the Hub code and the recipes import from here; nothing
here imports them (`tests/test_layout.py` checks both).
"""

from torch import nn

from .adapter import GeneratedAdapter
from .configuration_tagi import TagiConfig
from .modeling_tagi import TagiModel
from .modeling_tagi_base import TagiPreTrainedModel
from .modeling_tagi_causal import TagiForCausalLM
from .task_state import TaskState, TaskStateCache


def tagi_class_for(config) -> type[TagiPreTrainedModel]:
    """[`TagiModel`] for a T5 backbone, [`TagiForCausalLM`] for a decoder-only one (`config`: the backbone's config,
    a `TagiConfig`, a model, or a path holding either). Its class attributes (`backbone_auto_class`,
    `auto_class_name`, `peft_task_type`, ...) are what differs between the two families."""
    config = config.config if isinstance(config, nn.Module) else config
    return TagiModel if TagiConfig.is_encoder_decoder_config(config) else TagiForCausalLM


__all__ = [
    "GeneratedAdapter",
    "TagiConfig",
    "TagiForCausalLM",
    "TagiModel",
    "TagiPreTrainedModel",
    "TaskState",
    "TaskStateCache",
    "tagi_class_for",
]
