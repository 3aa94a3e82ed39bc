"""tagi-hf: Task Adapters Generation from Instructions (TAGI) for the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .adapter import GeneratedAdapter
from .configuration_tagi import TagiConfig
from .modeling_tagi import TagiModel, TaskState

__version__ = "0.1.0"

AutoConfig.register("tagi", TagiConfig, exist_ok=True)
AutoModel.register(TagiConfig, TagiModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(TagiConfig, TagiModel, exist_ok=True)
TagiConfig.register_for_auto_class()
TagiModel.register_for_auto_class("AutoModel")

__all__ = ["GeneratedAdapter", "TagiConfig", "TagiModel", "TaskState", "__version__"]
