"""TagiModel: a frozen T5 whose LoRA adapters (and instruction fusion) are generated from the task's instruction.

Forward pass, top to bottom (paper, Sec. 3):
1. the backbone's own encoder (no adapter), or a trainable copy of it (`instruction_encoder="separate"`), reads the
   instruction -> states `I`;
2. the generator pools `I` (masked mean, or a learned query per module) and maps it to LoRA factors for q/v of every
   attention module;
3. per-task state is computed once: the fusion's instruction keys/values (encoder) and the decoder
   cross-attention's instruction keys/values (through its adapted k/v);
4. the backbone runs on the instance input alone, with the adapters and fusion installed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from huggingface_hub import CommitInfo
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, T5ForConditionalGeneration
from transformers import initialization as init
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils import logging

from .adapter import GeneratedAdapter, fresh_cpu_copy, peft_task_type, require_hub_package
from .configuration_tagi import TagiConfig
from .fusion import DecoderFusionGates, FusionLayer, InstructionCrossAttention, encoder_fusion_hook, instruction_kv
from .generator import AdapterGenerator, AttentionPooling, masked_mean
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


@dataclass
class TagiSeq2SeqLMOutput(Seq2SeqLMOutput):
    """The backbone's outputs, plus the task state (generated factors) when `return_task_state=True`."""

    task_state: TaskState | None = None


class TagiPreTrainedModel(PreTrainedModel):
    config_class = TagiConfig
    config: TagiConfig
    base_model_prefix = "tagi"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["T5Block"]
    _supports_sdpa = True

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
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> TagiPreTrainedModel:
        """Loads a saved TAGI model; the backbone comes back frozen (loading would otherwise make it trainable).

        A model saved without a separate instruction encoder and loaded with `instruction_encoder="separate"` gets
        one copied from its backbone's instruction reader (a stage-1 model can start a stage 2 with the new generator).
        """
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

    @classmethod
    def from_backbone(
        cls, name_or_path: str, *, backbone_kwargs: dict | None = None, **config_kwargs
    ) -> TagiPreTrainedModel:
        """Builds a TAGI model (fresh generator and fusion) around a pretrained checkpoint (dir or Hub id), frozen.

        `backbone_kwargs` reach the backbone's `from_pretrained` (e.g. `{"gguf_file": ...}`, `{"dtype": ...}`).
        Example: `TagiModel.from_backbone("google/t5-base-lm-adapt", lora_rank=32)`.
        """
        backbone = cls._backbone_auto_class.from_pretrained(name_or_path, **(backbone_kwargs or {}))
        config_kwargs.setdefault("base_model_name_or_path", str(name_or_path))
        config = TagiConfig(text_config=backbone.config, **config_kwargs)
        return cls(config, backbone=backbone)

    def get_input_embeddings(self) -> nn.Module:  # FSDP2 (accelerate) and resizing look the embeddings up here
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def push_to_hub(self, repo_id: str, **kwargs) -> CommitInfo:
        """Pushes config, safetensors, remote code and a generated TAGI card in one commit (`import tagi_hf` then
        loads it with its Auto class; `trust_remote_code=True` without the package). Keywords: see
        [`tagi_hf.hub.push_model_to_hub`] (`token`, `private`, `revision`, `license`, `model_card`, `tokenizer`, ...).
        """
        return require_hub_package(f"{type(self).__name__}.push_to_hub").push_model_to_hub(self, repo_id, **kwargs)

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
            "task_type": peft_task_type(self.config),
        }
        # Copies, not views into the batch's tensors: each adapter owns aligned memory, laid out as a reloaded one.
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


class TagiModel(TagiPreTrainedModel, GenerationMixin):
    r"""
    TAGI: a hypernetwork reads a task's instruction and generates a LoRA adapter (plus instruction fusion) for a
    frozen T5, so an unseen task needs no training data and no per-task training.

    Example:

    ```python
    >>> from transformers import T5Config
    >>> from tagi_hf import TagiConfig, TagiModel
    >>> text = T5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)
    >>> model = TagiModel(TagiConfig(text_config=text, lora_rank=4))
    >>> model.num_trainable_parameters() < model.num_parameters()
    True
    ```
    """

    accepts_loss_kwargs = False  # the loss is a per-batch mean: the Trainer must scale it for accumulation
    _backbone_auto_class = T5ForConditionalGeneration

    def _check_backbone_kind(self, config: TagiConfig) -> None:
        if not config.is_encoder_decoder:
            raise ValueError(
                f"TagiModel wraps T5; `{config.text_config.model_type}` is decoder-only: use TagiForCausalLM."
            )

    def _new_backbone(self, text_config) -> PreTrainedModel:
        return T5ForConditionalGeneration(text_config)

    def _backbone_instruction_reader(self) -> nn.Module:
        return self.backbone.encoder

    def _fusion_modules(self) -> list[nn.Module]:
        return [m for m in (self.encoder_fusion, self.decoder_gates) if m is not None]

    def _build_fusion(self) -> None:
        self.encoder_fusion = self.decoder_gates = None
        if self.config.fusion == "none":
            return
        text = self.config.text_config
        self.encoder_fusion = nn.ModuleList(
            FusionLayer(text.d_model, self.config.fusion_num_heads, text.layer_norm_epsilon)
            for _ in range(text.num_layers)
        )
        self.decoder_gates = DecoderFusionGates(text.num_decoder_layers)
        for block in self.backbone.encoder.block:
            block.tagi_fusion = None
            block.register_forward_hook(encoder_fusion_hook)
        for block in self.backbone.decoder.block:
            block.layer[1].EncDecAttention.__class__ = InstructionCrossAttention

    def _task_state_dependencies(self) -> list[nn.Parameter]:
        """The model weights an adapter's task state is computed from (fusion projections, decoder k/v)."""
        if self.encoder_fusion is None:
            return []
        params = list(self.encoder_fusion.parameters())
        for block in self.backbone.decoder.block:
            params.extend(block.layer[1].EncDecAttention.parameters())
        return params

    def _build_task_state(self, factors: AdapterFactors, states: torch.Tensor, mask: torch.Tensor) -> TaskState:
        if self.encoder_fusion is None:
            return TaskState(lora=factors)
        encoder_fusion = [layer.project_instruction(states, mask) for layer in self.encoder_fusion]
        with use_task_state(self._task_state_slots(), TaskState(lora=factors)):  # `I`'s k/v use the adapter
            decoder_fusion = [
                instruction_kv(block.layer[1].EncDecAttention, states, mask) for block in self.backbone.decoder.block
            ]
        return TaskState(lora=factors, encoder_fusion=encoder_fusion, decoder_fusion=decoder_fusion)

    def _task_state_slots(self) -> TaskStateSlots:
        """Where [`use_task_state`] puts this model's task states."""
        if self.encoder_fusion is None:
            return TaskStateSlots(lora=self._lora_modules)
        return TaskStateSlots(
            lora=self._lora_modules,
            encoder_blocks=list(zip(self.backbone.encoder.block, self.encoder_fusion)),
            cross_attentions=[block.layer[1].EncDecAttention for block in self.backbone.decoder.block],
            gates=self.decoder_gates.weight,
        )

    # ------------------------------------------------------------------------------------------- forward pass
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        adapter: GeneratedAdapter | Sequence[GeneratedAdapter] | None = None,
        instruction_input_ids: torch.LongTensor | None = None,
        instruction_attention_mask: torch.Tensor | None = None,
        task_state: TaskState | None = None,
        return_task_state: bool = False,
        **kwargs,
    ) -> TagiSeq2SeqLMOutput:
        r"""
        Runs the backbone on the instance input with the task's generated adapter and fusion.

        Args:
            input_ids / attention_mask (`(batch, src_len)`): the instance input alone (no instruction text).
            labels (`(batch, tgt_len)`, *optional*): targets, -100 ignored; gives `loss`.
            adapter (`GeneratedAdapter` or list of them): one for the batch, or one per example.
            instruction_input_ids / instruction_attention_mask (`(batch, ins_len)`): the instruction of each example;
                the adapters are generated on the fly (gradients reach the generator).
            task_state (`TaskState`, *optional*): precomputed with [`~TagiModel.prepare_task_state`].
            return_task_state (`bool`): also return the generated factors (for the parameter-alignment loss).
        """
        task_state = self._given_or_prepared(
            task_state, adapter, instruction_input_ids, instruction_attention_mask, input_ids
        )
        with self._forward_state(task_state):
            outputs = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                **kwargs,
            )
        return TagiSeq2SeqLMOutput(**outputs, task_state=task_state if return_task_state else None)
