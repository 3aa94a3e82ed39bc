"""tagi-hf: Task Adapters Generation from Instructions (TAGI) for the Hugging Face stack.

The tree: `modeling/` is the model (and exactly what `save_pretrained` ships as remote code); `data/` reads and
formats tasks; `training/`, `teachers/`, `evaluation/` and `hub/` use the model; `recipes/` chain them into the
synthetic-suite pipeline; `cli/` is `tagi-hf`.
"""

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from . import _compat
from .modeling import GeneratedAdapter, TagiConfig, TagiForCausalLM, TagiModel, TagiPreTrainedModel, TaskState
from .modeling.adapter import register_adapter_pusher

__version__ = "0.1.0"

AutoConfig.register("tagi", TagiConfig, exist_ok=True)
AutoModel.register(TagiConfig, TagiModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(TagiConfig, TagiModel, exist_ok=True)
TagiConfig.register_for_auto_class()
TagiModel.register_for_auto_class(TagiModel.auto_class_name)
AutoModelForCausalLM.register(TagiConfig, TagiForCausalLM, exist_ok=True)
TagiForCausalLM.register_for_auto_class(TagiForCausalLM.auto_class_name)
_compat.install()


def _push_adapter(adapter, repo_id, **kwargs):  # imported on first push: hub code is not needed to load a model
    return importlib.import_module("tagi_hf.hub").push_adapter_to_hub(adapter, repo_id, **kwargs)


register_adapter_pusher(_push_adapter)

# Imported on first use (they pull in `transformers.Trainer` and `datasets`): `from tagi_hf import TagiTrainer`.
_LAZY = {
    "TagiDataCollator": "tagi_hf.data",
    "TagiTrainer": "tagi_hf.training",
    "TagiTrainingArguments": "tagi_hf.training",
    "TeacherBank": "tagi_hf.teachers",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tagi_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "GeneratedAdapter",
    "TagiConfig",
    "TagiDataCollator",
    "TagiForCausalLM",
    "TagiModel",
    "TagiPreTrainedModel",
    "TagiTrainer",
    "TagiTrainingArguments",
    "TaskState",
    "TeacherBank",
    "__version__",
]
