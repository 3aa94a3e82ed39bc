"""TagiPreTrainedModel: what [`TagiModel`] (T5) and [`TagiForCausalLM`] (decoder-only LMs) share.

The instruction side (encode the instruction, generate the LoRA factors, build the per-task state), adapters in and
out, `generate`, loading and the trainable parts. A subclass declares its backbone family once, in class attributes
(`is_encoder_decoder`, `backbone_auto_class`, `auto_class_name`, `peft_task_type`), and provides the
family's hooks (backbone, instruction reader, fusion, task-state slots) and its `forward`. Code outside the model
reads those attributes (and [`TagiConfig.is_encoder_decoder_config`] for a config) instead of deciding "T5 or
decoder-only" itself.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import logging

from .adapter import GeneratedAdapter, fresh_cpu_copy
from .configuration_tagi import TagiConfig
from .fusion import DecoderFusionGates, FusionLayer
from .generator import AdapterGenerator, AttentionPooling, masked_mean
from .generator_only import (
    generator_only_state_dict,
    load_generator_only,
    names_its_backbone,
    recordable_backbone_kwargs,
)
from .instructions import check_tokenizer, tokenize_instructions, truncate_instruction_ids
from .lora import install_lora_layers, lora_targets
from .task_state import (
    AdapterFactors,
    TaskState,
    TaskStateCache,
    TaskStateSlots,
    adapter_instruction_states,
    checkpointing_disabled,
    tensor_fingerprint,
    use_task_state,
)

logger = logging.get_logger(__name__)


class TagiPreTrainedModel(PreTrainedModel):
    r"""
    The base of [`TagiModel`] (T5) and [`TagiForCausalLM`] (decoder-only LMs): the type to name for "a TAGI model of
    either family". Not built itself; the family classes are.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from tagi_hf import TagiConfig, TagiForCausalLM, TagiPreTrainedModel
    >>> text = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                    num_attention_heads=4, num_key_value_heads=2)
    >>> model = TagiForCausalLM(TagiConfig(text_config=text, lora_rank=4))
    >>> isinstance(model, TagiPreTrainedModel), model.is_encoder_decoder, model.peft_task_type
    (True, False, 'CAUSAL_LM')

    ```
    """

    config_class = TagiConfig
    config: TagiConfig
    base_model_prefix = "tagi"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    # The backbone family, declared once by each subclass: the rest of the package reads these.
    is_encoder_decoder: ClassVar[bool]  # T5 (`TagiModel`) or a decoder-only LM (`TagiForCausalLM`)
    backbone_auto_class: ClassVar[Any]  # loads a backbone checkpoint of the family (`from_backbone`, teachers)
    auto_class_name: ClassVar[str]  # the transformers Auto class a saved model of the family loads with
    peft_task_type: ClassVar[str]  # PEFT's task type of the adapters it generates (`SEQ_2_SEQ_LM`, `CAUSAL_LM`)

    def _init_weights(self, module: nn.Module) -> None:
        """TAGI's own modules by type (children are initialised before their parent, so these override the defaults
        given to their linears); everything else as transformers does."""
        if isinstance(module, FusionLayer):
            init.zeros_(module.gate)  # tanh(0) = 0: the backbone is the starting point
            for proj in (module.q, module.k, module.v, module.o):
                init.normal_(proj.weight, mean=0.0, std=proj.in_features**-0.5)
        elif isinstance(module, DecoderFusionGates):
            init.zeros_(module.weight)
        elif isinstance(module, AttentionPooling):
            init.zeros_(module.query)  # every slot starts as the masked mean
            init.normal_(module.key.weight, mean=0.0, std=module.key.in_features**-0.5)
        elif isinstance(module, AdapterGenerator):
            for head in module.heads_a.values():  # A entries ~ N(0, 1/d_in): the scale PEFT's Kaiming init gives A
                d_in = head.out_features // module.rank
                init.normal_(head.weight, mean=0.0, std=(head.in_features * d_in) ** -0.5)
                init.zeros_(head.bias)
            for head in module.heads_b.values():  # B = 0: the generated update starts at exactly zero
                init.zeros_(head.weight)
                init.zeros_(head.bias)
        else:
            super()._init_weights(module)

    def __init__(self, config: TagiConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self._check_backbone_kind(config)
        # Task states of recently used adapters (see `TaskStateCache`; `model.task_state_cache.max_size = 0` turns
        # it off). Each entry holds the fusion's instruction keys/values: about 2 x layers x length x d_model floats.
        self.task_state_cache = TaskStateCache(max_size=8)
        self.backbone = backbone if backbone is not None else self._new_backbone(config.text_config)
        self.instruction_encoder = None
        if config.instruction_encoder == "separate":  # copied before the backbone gets LoRA layers and fusion hooks
            self.instruction_encoder = copy.deepcopy(self._backbone_instruction_reader())
        targets = lora_targets(config)
        install_lora_layers(self.backbone, targets, config.lora_scaling)
        self._lora_modules = {t.name: self.backbone.get_submodule(t.name) for t in targets}
        self.generator = AdapterGenerator(config, targets)
        self._build_fusion()
        self.generation_config = self.backbone.generation_config
        self.post_init()
        if self.instruction_encoder is not None:  # starts as the backbone's reader (`post_init` may re-draw it)
            self.instruction_encoder.load_state_dict(self._backbone_instruction_reader().state_dict())
        self.backbone.requires_grad_(False)  # frozen by default; see `set_trainable`

    # What a backbone family provides (`TagiModel`: T5; `TagiForCausalLM`: decoder-only LMs).
    def _check_backbone_kind(self, config: TagiConfig) -> None:
        """Refuses a config of the other family, naming the class that wraps it."""
        raise NotImplementedError

    def _new_backbone(self, text_config) -> PreTrainedModel:
        raise NotImplementedError

    def _backbone_instruction_reader(self) -> nn.Module:
        """The backbone's stack that reads instructions (without adapter) when there is no separate encoder."""
        raise NotImplementedError

    def _build_fusion(self) -> None:
        raise NotImplementedError

    def _fusion_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _task_state_dependencies(self) -> list[nn.Parameter]:
        """The model weights an adapter's task state is computed from (fusion projections, ...)."""
        raise NotImplementedError

    def _build_task_state(self, factors: AdapterFactors, states: torch.Tensor, mask: torch.Tensor) -> TaskState:
        raise NotImplementedError

    def _task_state_slots(self) -> TaskStateSlots:
        """Where [`use_task_state`] puts this model's task states."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *args,
        backbone_name_or_path: str | os.PathLike | None = None,
        backbone_kwargs: dict | None = None,
        **kwargs,
    ) -> TagiPreTrainedModel:
        """Loads a saved TAGI model; the backbone comes back frozen (loading would otherwise make it trainable).

        A model saved without a separate instruction encoder and loaded with `instruction_encoder="separate"` gets
        one copied from its backbone's instruction reader (a stage-1 model can start a stage 2 with the new generator).

        A generator-only checkpoint (`save_pretrained(path, save_backbone=False)`) names its backbone instead of
        holding it: the backbone is loaded from `config.base_model_name_or_path` with `config.backbone_kwargs`, or
        from `backbone_name_or_path` (e.g. a local copy) with `backbone_kwargs` merged over the saved ones (e.g.
        `{"gguf_file": ...}`), checked against the saved config, and the saved parts are put around it.
        """
        if names_its_backbone(pretrained_model_name_or_path, kwargs):
            return load_generator_only(
                cls, pretrained_model_name_or_path, args, kwargs, backbone_name_or_path, backbone_kwargs
            )
        if backbone_name_or_path is not None or backbone_kwargs is not None:
            raise ValueError(
                f"`{pretrained_model_name_or_path}` holds its backbone: `backbone_name_or_path` and `backbone_kwargs` "
                "apply to generator-only checkpoints (saved with `save_backbone=False`)."
            )
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:  # its own message names no file
            raise ValueError(
                f"The weights of `{pretrained_model_name_or_path}` (model*.safetensors) are not a valid safetensors "
                f"file (truncated or corrupted?): {error}"
            ) from error
        if model.instruction_encoder is not None and any(
            key.startswith("instruction_encoder.") for key in info["missing_keys"]
        ):
            logger.info("No saved instruction encoder: it starts as a copy of the backbone's encoder.")
            model.instruction_encoder.load_state_dict(model._backbone_instruction_reader().state_dict())
        model.set_trainable()
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, save_backbone: bool = True, **kwargs) -> None:
        """Saves the model as transformers does (config, safetensors weights, the remote-code bundle).

        `save_backbone=False` writes a generator-only checkpoint: the generator, fusion and instruction encoder, and
        a config naming the frozen backbone (`base_model_name_or_path`, loaded with `backbone_kwargs`), as a PEFT
        adapter names its base model; [`~TagiPreTrainedModel.from_pretrained`] loads the backbone and puts them back
        together.
        """
        if not save_backbone:
            if kwargs.get("state_dict") is not None:
                raise TypeError("`save_backbone=False` chooses the weights itself: pass no `state_dict`.")
            kwargs["state_dict"] = generator_only_state_dict(self)
        before = self.config.backbone_in_checkpoint
        self.config.backbone_in_checkpoint = save_backbone
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.backbone_in_checkpoint = before

    @classmethod
    def from_backbone(
        cls, name_or_path: str, *, backbone_kwargs: dict | None = None, **config_kwargs
    ) -> TagiPreTrainedModel:
        """Builds a TAGI model (fresh generator and fusion) around a pretrained checkpoint (dir or Hub id), frozen.

        `backbone_kwargs` reach the backbone's `from_pretrained` (e.g. `{"gguf_file": ...}`, `{"dtype": ...}`) and
        are recorded in the config (`backbone_kwargs`), so a generator-only checkpoint loads the backbone the same way.
        Example: `TagiModel.from_backbone("google/t5-base-lm-adapt", lora_rank=32)`.
        """
        backbone = cls.backbone_auto_class.from_pretrained(name_or_path, **(backbone_kwargs or {}))
        config_kwargs.setdefault("base_model_name_or_path", str(name_or_path))
        config_kwargs.setdefault("backbone_kwargs", recordable_backbone_kwargs(backbone_kwargs))
        config = TagiConfig(text_config=backbone.config, **config_kwargs)
        return cls(config, backbone=backbone)

    def get_input_embeddings(self) -> nn.Module:  # FSDP2 (accelerate) and resizing look the embeddings up here
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    # ----------------------------------------------------------------------------------------------- parameters
    def set_trainable(
        self, *, generator: bool = True, fusion: bool = True, backbone: bool = False, instruction_encoder: bool = True
    ) -> None:
        """Chooses explicitly which parts train. The paper trains the generator and the fusion only;
        `instruction_encoder` applies to the separate instruction encoder (`instruction_encoder="separate"`)."""
        self.generator.requires_grad_(generator)
        for part in self._fusion_modules():
            part.requires_grad_(fusion)
        self.backbone.requires_grad_(backbone)
        if self.instruction_encoder is not None:
            self.instruction_encoder.requires_grad_(instruction_encoder)

    def trainable_parameters_report(self) -> dict[str, int]:
        """Number of trainable parameters per part (`generator`, `fusion`, `instruction_encoder`, `backbone`) and
        in total."""
        parts = {"generator": [self.generator], "fusion": self._fusion_modules()}
        parts["instruction_encoder"] = [self.instruction_encoder]
        parts["backbone"] = [self.backbone]
        report = {
            name: sum(p.numel() for m in mods if m is not None for p in m.parameters() if p.requires_grad)
            for name, mods in parts.items()
        }
        report["total"] = sum(report.values())
        return report

    def num_trainable_parameters(self) -> int:
        return self.trainable_parameters_report()["total"]

    # ---------------------------------------------------------------------------------------- instruction side
    def encode_instructions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the instruction encoder (the backbone's reader without adapter, or the separate one) on instructions.

        Returns states `(tasks, len, d_model)`, masked-mean pooled vectors `(tasks, d_model)` and the mask.
        """
        limit, eos = self.config.max_instruction_length, self.config.text_config.eos_token_id
        input_ids, attention_mask = truncate_instruction_ids(input_ids, attention_mask, limit, eos)
        encoder = self.instruction_encoder
        if encoder is None:
            encoder = self._backbone_instruction_reader()
        trainable = any(p.requires_grad for p in encoder.parameters())
        # Activation checkpointing would re-run these blocks during backward with the task state installed; a
        # frozen encoder needs no graph here at all, a trainable one is run without checkpointing.
        with (
            use_task_state(self._task_state_slots(), None),  # the instruction is read without adapter or fusion
            torch.set_grad_enabled(torch.is_grad_enabled() and trainable),
            checkpointing_disabled(encoder),
        ):
            states = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states, masked_mean(states, attention_mask), attention_mask

    def task_state_from_instructions(
        self, instruction_input_ids: torch.Tensor, instruction_attention_mask: torch.Tensor | None = None
    ) -> TaskState:
        """Generates the adapters of a batch of instructions (one row per example; repeated rows computed once)."""
        if instruction_attention_mask is None:
            instruction_attention_mask = torch.ones_like(instruction_input_ids)
        rows = torch.cat([instruction_input_ids, instruction_attention_mask.to(instruction_input_ids.dtype)], 1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        width = instruction_input_ids.shape[1]
        states, _, mask = self.encode_instructions(unique[:, :width], unique[:, width:])
        state = self._build_task_state(self.generator(states, mask), states, mask)
        return state if unique.shape[0] == 1 else state.select(inverse)

    def task_state_from_adapters(self, adapters: Sequence[GeneratedAdapter]) -> TaskState:
        """Stacks saved/generated adapters (one per example, or one for the whole batch) into a task state.

        Each distinct adapter's state is computed once and kept in the model's [`TaskStateCache`]
        (`model.task_state_cache`), so later calls with the same adapter do no instruction-side work; rows that share
        an adapter share its state.
        """
        unique = list({id(a): a for a in adapters}.values())
        states = [self._adapter_task_state(a) for a in unique]
        if len(unique) == 1:
            return states[0]  # one row, broadcast over the batch by the layers
        position = {id(a): i for i, a in enumerate(unique)}
        index = torch.tensor([position[id(a)] for a in adapters], device=self.device)
        return TaskState.concat(states).select(index)

    def _adapter_task_state(self, adapter: GeneratedAdapter) -> TaskState:
        """One adapter's state (a leading task dimension of 1), from the cache when model and adapter are unchanged."""
        if not isinstance(adapter, GeneratedAdapter):
            raise TypeError(f"`adapter` must be a GeneratedAdapter or a list of them, got {type(adapter).__name__}.")
        dependencies = self._task_state_dependencies()
        # A state built with gradients (trainable fusion) carries a graph that one backward frees: never reused.
        cacheable = not (torch.is_grad_enabled() and any(p.requires_grad for p in dependencies))
        fingerprint = None
        if cacheable:
            tensors = [t for pair in adapter.lora_factors.values() for t in pair]
            if adapter.instruction_states is not None:
                tensors.append(adapter.instruction_states)
            fingerprint = (
                tensor_fingerprint(dependencies),
                tensor_fingerprint(tensors),
                str(self.device),
                torch.is_inference_mode_enabled(),  # inference tensors cannot be used where autograd records
            )
            state = self.task_state_cache.get(adapter, fingerprint)
            if state is not None:
                return state
        adapter.check_compatible(self.backbone)
        names = list(self._lora_modules)
        if sorted(adapter.lora_factors) != sorted(names):
            missing = sorted(set(names) ^ set(adapter.lora_factors))
            raise ValueError(f"Adapter modules do not match this model's targets; differing: {missing[:4]}.")
        cast = dict(device=self.device, dtype=self.dtype)  # an adapter saved in float32 serves a bf16 model too
        factors = {n: tuple(adapter.lora_factors[n][i][None].to(**cast) for i in (0, 1)) for n in names}
        ratio = adapter.scaling / self.config.lora_scaling  # the layers apply the model's alpha / r; B takes the rest
        if ratio != 1:
            factors = {n: (lora_a, lora_b * ratio) for n, (lora_a, lora_b) in factors.items()}
        if self.config.fusion == "none":
            state = TaskState(lora=factors)
        else:
            state = self._build_task_state(factors, *adapter_instruction_states(adapter, **cast))
        if cacheable:
            self.task_state_cache.put(adapter, fingerprint, state)
        return state

    def _apply(self, fn, *args, **kwargs):
        """`to`, `cuda`, `half`, ...: cached task states belong to the old weights."""
        result = super()._apply(fn, *args, **kwargs)
        if getattr(self, "task_state_cache", None) is not None:
            self.task_state_cache.clear()
        return result

    def prepare_task_state(
        self,
        *,
        adapter: GeneratedAdapter | Sequence[GeneratedAdapter] | None = None,
        instruction_input_ids: torch.Tensor | None = None,
        instruction_attention_mask: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> TaskState:
        """The task state from either adapters or instruction ids (exactly one of them)."""
        if (adapter is None) == (instruction_input_ids is None):
            raise ValueError("Pass exactly one of `adapter` or `instruction_input_ids` to a TagiModel.")
        if adapter is None:
            return self.task_state_from_instructions(instruction_input_ids, instruction_attention_mask)
        adapters = [adapter] if isinstance(adapter, GeneratedAdapter) else list(adapter)
        if batch_size is not None and len(adapters) not in (1, batch_size):
            raise ValueError(f"`adapter` holds {len(adapters)} adapters for a batch of {batch_size} examples.")
        return self.task_state_from_adapters(adapters)

    # -------------------------------------------------------------------------------------------- adapters out
    @torch.no_grad()
    def generate_adapter(
        self, instructions: str | Sequence[str], tokenizer, *, batch_size: int = 64, allow_empty: bool = False
    ) -> GeneratedAdapter | list[GeneratedAdapter]:
        """Turns instruction text into [`GeneratedAdapter`]s (a generator forward per batch); `""` if `allow_empty`."""
        single = isinstance(instructions, str)
        texts = [instructions] if single else list(instructions)
        check_tokenizer(tokenizer, self.config.text_config.vocab_size)
        adapters, limit = [], self.config.max_instruction_length
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            ids, mask = tokenize_instructions(tokenizer, chunk, limit, self.device, allow_empty=allow_empty)
            adapters.extend(self._adapters_from_ids(chunk, ids, mask))
        return adapters[0] if single else adapters

    def _adapters_from_ids(self, texts: list[str], ids: torch.Tensor, mask: torch.Tensor) -> list[GeneratedAdapter]:
        states, _, mask = self.encode_instructions(ids, mask)
        factors = self.generator(states, mask)
        lengths = mask.sum(1).tolist()
        generator_config = self.config.to_diff_dict()
        generator_config.pop("text_config", None)
        provenance = {
            "lora_alpha": self.config.lora_alpha,
            "base_model_name_or_path": self.config.base_model_name_or_path,
            "generator_config": generator_config,
            "generator_name_or_path": self.config.name_or_path or None,
            "task_type": self.peft_task_type,
        }
        return [
            GeneratedAdapter(
                lora_factors={n: (fresh_cpu_copy(a[i]), fresh_cpu_copy(b[i])) for n, (a, b) in factors.items()},
                instruction=text,
                instruction_states=None if self.config.fusion == "none" else fresh_cpu_copy(states[i, : lengths[i]]),
                **provenance,
            )
            for i, text in enumerate(texts)
        ]

    # ------------------------------------------------------------------------------------------ calls with a state
    def _given_or_prepared(
        self, task_state, adapter, instruction_input_ids, instruction_attention_mask, input_ids
    ) -> TaskState:
        """`task_state` if given, else [`~TagiPreTrainedModel.prepare_task_state`] for the call's batch."""
        if task_state is not None:
            return task_state
        return self.prepare_task_state(
            adapter=adapter,
            instruction_input_ids=instruction_input_ids,
            instruction_attention_mask=instruction_attention_mask,
            batch_size=input_ids.shape[0] if input_ids is not None else None,
        )

    def _forward_state(self, task_state: TaskState):
        """[`use_task_state`] for a forward. Activation checkpointing re-runs blocks during backward: the state then
        stays until the next call."""
        keep = self.is_activation_checkpointing and torch.is_grad_enabled()
        return use_task_state(self._task_state_slots(), task_state, keep=keep)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        adapter: GeneratedAdapter | Sequence[GeneratedAdapter] | None = None,
        instruction_input_ids: torch.LongTensor | None = None,
        instruction_attention_mask: torch.Tensor | None = None,
        task_state: TaskState | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generates with the task's adapter and fusion installed for every step (greedy, beams, sampling).

        Per-example state is expanded to beams / `num_return_sequences` inside the layers. A decoder-only model
        returns prompt + new tokens, as causal LMs do: left-pad a batch of prompts (`tokenizer.padding_side = "left"`).
        """
        generate_kwargs.pop("labels", None)  # Seq2SeqTrainer passes the batch's labels along
        task_state = self._given_or_prepared(
            task_state, adapter, instruction_input_ids, instruction_attention_mask, input_ids
        )
        with use_task_state(self._task_state_slots(), task_state):
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
