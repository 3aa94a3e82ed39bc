"""TagiForCausalLM: TAGI around a frozen decoder-only LM (Llama / SmolLM, Qwen2, Mistral).

Forward pass, top to bottom (the T5 model's, with one stack instead of two):
1. the backbone's own decoder stack (no adapter), or a trainable copy of it (`instruction_encoder="separate"`), reads
   the instruction -> states `I` (causal attention over the instruction, final norm applied);
2. the generator pools `I` and maps it to LoRA factors for q and v (k, o by config) of every layer;
3. per-task state is computed once: each fusion layer's instruction keys/values;
4. the backbone runs on the instance alone (prompt, then the output it continues with), with the adapters installed
   and, with fusion, a zero-gated cross-attention from its hidden states to `I` after every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .adapter import GeneratedAdapter
from .configuration_tagi import DECODER_ONLY_TYPES, TagiConfig
from .fusion import FusionLayer, encoder_fusion_hook
from .modeling_tagi_base import TagiPreTrainedModel
from .task_state import AdapterFactors, TaskState, TaskStateSlots


@dataclass
class TagiCausalLMOutput(CausalLMOutputWithPast):
    """The backbone's outputs, plus the task state (generated factors) when `return_task_state=True`."""

    task_state: TaskState | None = None


class TagiForCausalLM(TagiPreTrainedModel, GenerationMixin):
    r"""
    TAGI for a decoder-only LM: a hypernetwork reads a task's instruction and generates a LoRA adapter (plus,
    optionally, instruction fusion) for the frozen LM, which then reads the instance alone.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from tagi_hf import TagiConfig, TagiForCausalLM
    >>> text = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                    num_attention_heads=4, num_key_value_heads=2)
    >>> model = TagiForCausalLM(TagiConfig(text_config=text, lora_rank=4))
    >>> sorted({t.split(".")[-1] for t in model.generator_targets()})
    ['q_proj', 'v_proj']
    ```
    """

    accepts_loss_kwargs = False  # the loss is a per-batch mean: the Trainer must scale it for accumulation
    _no_split_modules = ["LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer"]
    is_encoder_decoder = False
    backbone_auto_class = AutoModelForCausalLM
    auto_class_name = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"

    def _check_backbone_kind(self, config: TagiConfig) -> None:
        if config.is_encoder_decoder:
            raise ValueError(
                f"TagiForCausalLM wraps decoder-only LMs ({', '.join(DECODER_ONLY_TYPES)}); for T5 use TagiModel."
            )

    def _new_backbone(self, text_config) -> PreTrainedModel:
        return AutoModelForCausalLM.from_config(text_config)

    def _backbone_instruction_reader(self) -> nn.Module:
        return self.backbone.model  # the decoder stack without the LM head

    def _layers(self) -> nn.ModuleList:
        return self.backbone.model.layers

    def _build_fusion(self) -> None:
        self.layer_fusion = None
        if self.config.fusion == "none":
            return
        text = self.config.text_config
        self.layer_fusion = nn.ModuleList(
            FusionLayer(text.hidden_size, self.config.fusion_num_heads, text.rms_norm_eps)
            for _ in range(text.num_hidden_layers)
        )
        for layer in self._layers():
            layer.tagi_fusion = None
            layer.register_forward_hook(encoder_fusion_hook)

    def _fusion_modules(self) -> list[nn.Module]:
        return [] if self.layer_fusion is None else [self.layer_fusion]

    def _task_state_dependencies(self) -> list[nn.Parameter]:
        return [] if self.layer_fusion is None else list(self.layer_fusion.parameters())

    def _build_task_state(self, factors: AdapterFactors, states: torch.Tensor, mask: torch.Tensor) -> TaskState:
        if self.layer_fusion is None:
            return TaskState(lora=factors)
        return TaskState(lora=factors, encoder_fusion=[f.project_instruction(states, mask) for f in self.layer_fusion])

    def _task_state_slots(self) -> TaskStateSlots:
        if self.layer_fusion is None:
            return TaskStateSlots(lora=self._lora_modules)
        return TaskStateSlots(lora=self._lora_modules, encoder_blocks=list(zip(self._layers(), self.layer_fusion)))

    def generator_targets(self) -> list[str]:
        """The backbone modules that receive a generated adapter (PEFT names)."""
        return list(self._lora_modules)

    # ------------------------------------------------------------------------------------------- forward pass
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        adapter: GeneratedAdapter | list[GeneratedAdapter] | None = None,
        instruction_input_ids: torch.LongTensor | None = None,
        instruction_attention_mask: torch.Tensor | None = None,
        task_state: TaskState | None = None,
        return_task_state: bool = False,
        **kwargs,
    ) -> TagiCausalLMOutput:
        r"""
        Runs the LM on the instance with the task's generated adapter (and fusion).

        Args:
            input_ids / attention_mask (`(batch, len)`): the instance alone (prompt and, when training, the output).
            labels (`(batch, len)`, *optional*): `input_ids` with -100 everywhere but the output tokens; gives
                `loss` (shifted inside, as causal LMs do).
            adapter / instruction_input_ids / instruction_attention_mask / task_state / return_task_state: as in
                [`TagiModel.forward`].
        """
        task_state = self._given_or_prepared(
            task_state, adapter, instruction_input_ids, instruction_attention_mask, input_ids
        )
        with self._forward_state(task_state):
            outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        return TagiCausalLMOutput(**outputs, task_state=task_state if return_task_state else None)
