"""Configuration of a TAGI model: a frozen backbone (`text_config`: T5, or a decoder-only Llama / Qwen2 / Mistral LM)
plus the adapter generator and fusion."""

from __future__ import annotations

import os

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

FUSION_MODES = ("cross_attention", "none")
ATTENTION_KINDS = ("encoder_self", "decoder_self", "decoder_cross")  # T5's; a decoder-only LM has decoder_self only
ENCODER_DECODER_TYPES = ("t5",)
DECODER_ONLY_TYPES = ("llama", "qwen2", "mistral")  # same module names (model.layers.N.self_attn.{q,k,v,o}_proj)
PROJECTIONS = ("q", "k", "v", "o")
INSTRUCTION_ENCODERS = ("backbone", "separate")
POOLING_MODES = ("mean", "attention")


class TagiConfig(PretrainedConfig):
    r"""
    Configuration for [`TagiModel`] and [`TagiForCausalLM`]: a frozen backbone (T5, or a decoder-only Llama /
    SmolLM, Qwen2 or Mistral LM), the hypernetwork that turns an instruction into LoRA factors, and the instruction
    fusion of the paper (hierarchical cross-attention).

    Args:
        text_config (`PretrainedConfig` or `dict`, *optional*):
            The backbone's configuration: a `T5Config`, or a `LlamaConfig` / `Qwen2Config` / `MistralConfig` (full
            attention). Defaults to `T5Config()`. For T5, `decoder_start_token_id` is set to the pad id when missing
            (T5's convention; `generate` needs it).
        lora_rank (`int`, defaults to 8):
            Rank `r` of every generated LoRA update (paper: 32).
        lora_alpha (`float`, defaults to 16):
            LoRA scaling numerator; the update is `(lora_alpha / r) * B @ A`, as in PEFT.
        lora_target_modules (`list[str]`, defaults to `["q", "v"]`):
            Attention projections that receive a generated adapter (any of `q`, `k`, `v`, `o`). The paper uses q and v.
        lora_attention_kinds (`list[str]`, defaults to every attention the backbone has):
            Attention modules that receive adapters: T5's `encoder_self`, `decoder_self`, `decoder_cross`; a
            decoder-only LM has `decoder_self` only.
        fusion (`str`, defaults to `"cross_attention"`):
            `"cross_attention"` adds the paper's instruction fusion (Eq. 1): a zero-gated cross-attention to the
            instruction after every encoder layer and a gated decoder attention over `(I ; F_L)` (T5), or a
            zero-gated cross-attention to the instruction after every layer (decoder-only). `"none"` gives plain
            LoRA adapters that export exactly to PEFT.
        hypernet_hidden_size (`int`, defaults to 128):
            Width of the generator's trunk.
        hypernet_embedding_size (`int`, defaults to 64):
            Size of the learned (attention kind, layer) embedding that tells the shared trunk which attention module
            it is generating for (the projection, q / k / v / o, is told apart by its own pair of output heads).
        hypernet_dropout (`float`, defaults to 0.0):
            Dropout inside the generator trunk.
        max_instruction_length (`int`, defaults to 1024):
            Instructions longer than this many tokens are truncated (with one warning).
        instruction_encoder (`str`, defaults to `"separate"`):
            What reads the instruction. `"separate"`: a copy of the backbone's encoder (a decoder-only LM's decoder
            stack), initialised from its weights, that trains with the generator (HINT's choice); its states feed
            both the generator and the fusion. `"backbone"`: the frozen backbone's own encoder (decoder stack; the
            paper; no extra parameters). The default was chosen
            on the synthetic suite's dev split (see `benchmarks/results/probes/generator.md`).
        instruction_pooling (`str`, defaults to `"attention"`):
            How the instruction's token states become the generator's input. `"mean"`: one masked mean for every
            generated module (the paper). `"attention"`: a learned query per (attention kind, layer) attends over the
            tokens (masked), so each module reads what it needs; the queries start at zero, which is the mean.
        pooling_num_heads (`int`, *optional*):
            Heads of the attention pooling. Defaults to the backbone's number of attention heads.
        fusion_num_heads (`int`, *optional*):
            Heads of the fusion cross-attention. Defaults to the backbone's number of attention heads.
        base_model_name_or_path (`str`, *optional*):
            Name or path of the backbone checkpoint; written into exported PEFT adapters, and what a generator-only
            checkpoint loads its backbone from.
        backbone_kwargs (`dict`, *optional*):
            The keyword arguments the backbone was loaded with (`TagiPreTrainedModel.from_backbone`), e.g.
            `{"gguf_file": ...}`: a generator-only checkpoint loads its backbone with them.
        backbone_in_checkpoint (`bool`, defaults to `True`):
            Whether the saved weights hold the backbone. `False` for a generator-only checkpoint
            (`save_pretrained(path, save_backbone=False)`): `from_pretrained` loads the backbone named by
            `base_model_name_or_path` (with `backbone_kwargs`) and puts the saved parts around it.

    Example:

    ```python
    >>> from transformers import T5Config
    >>> from tagi_hf import TagiConfig
    >>> config = TagiConfig(text_config=T5Config(d_model=64, num_layers=2, num_heads=4, d_kv=16), lora_rank=4)
    >>> config.lora_scaling
    4.0
    ```
    """

    model_type = "tagi"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="t5")}

    text_config: dict | PretrainedConfig | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_target_modules: list[str] | tuple[str, ...] = ("q", "v")
    lora_attention_kinds: list[str] | tuple[str, ...] = ATTENTION_KINDS
    fusion: str = "cross_attention"
    hypernet_hidden_size: int = 128
    hypernet_embedding_size: int = 64
    hypernet_dropout: float = 0.0
    max_instruction_length: int = 1024
    instruction_encoder: str = "separate"
    instruction_pooling: str = "attention"
    pooling_num_heads: int | None = None
    fusion_num_heads: int | None = None
    base_model_name_or_path: str | None = None
    backbone_kwargs: dict | None = None
    backbone_in_checkpoint: bool = True
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        given = self.text_config
        attention = given._attn_implementation if isinstance(given, PretrainedConfig) else None
        super().__post_init__(**kwargs)
        if attention is not None and self.text_config._attn_implementation is None:
            # a loaded backbone's config shared with it: the composite's init resets its attention implementation
            self.text_config._attn_implementation = attention
        self.lora_target_modules = list(self.lora_target_modules)
        self.lora_attention_kinds = list(self.lora_attention_kinds)
        text = self.text_config
        _check_backbone(text)
        self.is_encoder_decoder = self.is_encoder_decoder_config(text)
        if self.is_encoder_decoder:
            if getattr(text, "decoder_start_token_id", None) is None:
                text.decoder_start_token_id = text.pad_token_id if text.pad_token_id is not None else 0
        elif self.lora_attention_kinds == list(ATTENTION_KINDS):  # the default: every attention there is
            self.lora_attention_kinds = ["decoder_self"]
        if self.fusion_num_heads is None:
            self.fusion_num_heads = self.num_attention_heads
        if self.pooling_num_heads is None:
            self.pooling_num_heads = self.num_attention_heads
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.lora_rank, int) or self.lora_rank <= 0:
            raise ValueError(f"`lora_rank` must be a positive integer, got {self.lora_rank!r}.")
        if self.lora_alpha <= 0:
            raise ValueError(f"`lora_alpha` must be positive, got {self.lora_alpha!r}.")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"`fusion` must be one of {FUSION_MODES}, got {self.fusion!r}.")
        for name, allowed in (("instruction_encoder", INSTRUCTION_ENCODERS), ("instruction_pooling", POOLING_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        _check_subset("lora_target_modules", self.lora_target_modules, PROJECTIONS)
        kinds = ATTENTION_KINDS if self.is_encoder_decoder else ("decoder_self",)
        _check_subset("lora_attention_kinds", self.lora_attention_kinds, kinds)
        if self.backbone_kwargs is not None and not isinstance(self.backbone_kwargs, dict):
            raise ValueError(f"`backbone_kwargs` must be a dict, got {type(self.backbone_kwargs).__name__}.")
        if self.max_instruction_length <= 0:
            raise ValueError(f"`max_instruction_length` must be positive, got {self.max_instruction_length!r}.")
        for name in ("fusion_num_heads", "pooling_num_heads"):
            if self.hidden_size % getattr(self, name) != 0:
                raise ValueError(f"`{name}` ({getattr(self, name)}) must divide d_model ({self.hidden_size}).")

    @staticmethod
    def is_encoder_decoder_config(config: PretrainedConfig | str | os.PathLike) -> bool:
        """Whether `config` describes a T5 backbone (`True`) or a decoder-only LM (`False`): a `TagiConfig`, a
        backbone's own config, or a directory / Hub id holding either. The one test of the backbone family made on a
        config (a model reads its class's `is_encoder_decoder`); other backbone types are refused, naming the
        supported ones.
        """
        if isinstance(config, (str, os.PathLike)):
            config = AutoConfig.from_pretrained(config)
        text = config.text_config if getattr(config, "model_type", None) == "tagi" else config
        _check_backbone_type(text)
        return text.model_type in ENCODER_DECODER_TYPES

    @property
    def is_decoder_only(self) -> bool:
        return not self.is_encoder_decoder

    @property
    def hidden_size(self) -> int:
        """The backbone's model width (T5's `d_model`, a decoder-only LM's `hidden_size`)."""
        return self.text_config.d_model if self.is_encoder_decoder else self.text_config.hidden_size

    @property
    def num_attention_heads(self) -> int:
        return self.text_config.num_heads if self.is_encoder_decoder else self.text_config.num_attention_heads

    @property
    def lora_scaling(self) -> float:
        """PEFT's LoRA scaling `lora_alpha / r`."""
        return self.lora_alpha / self.lora_rank

    # Generation reads these from the top-level config of an encoder-decoder model.
    @property
    def decoder_start_token_id(self) -> int | None:
        return getattr(self.text_config, "decoder_start_token_id", None)

    @property
    def pad_token_id(self) -> int | None:
        return self.text_config.pad_token_id

    @property
    def eos_token_id(self) -> int | list[int] | None:
        return self.text_config.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size


def _check_subset(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"`{name}` must be a non-empty subset of {allowed}, got {values!r}.")


def _check_backbone_type(text: PretrainedConfig) -> None:
    """Refuses backbone types whose module names the generated LoRA does not know, naming the supported ones."""
    supported = ENCODER_DECODER_TYPES + DECODER_ONLY_TYPES
    if text.model_type not in supported:
        raise ValueError(
            f"TAGI does not support `{text.model_type}` backbones; supported: {', '.join(supported)} "
            "(T5 as encoder-decoder; Llama / SmolLM, Qwen2 and Mistral as decoder-only LMs)."
        )


def _check_backbone(text: PretrainedConfig) -> None:
    """Refuses backbones whose attention the generated LoRA and the fusion do not cover, naming the supported ones."""
    _check_backbone_type(text)
    if getattr(text, "use_sliding_window", False) or (
        text.model_type == "mistral" and getattr(text, "sliding_window", None) is not None
    ):
        raise ValueError(
            f"`{text.model_type}` with sliding-window attention is not supported (the instruction fusion assumes full "
            "attention); set `sliding_window=None` / `use_sliding_window=False` if the checkpoint allows it."
        )
