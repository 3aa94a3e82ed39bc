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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationMixin, PreTrainedModel, T5ForConditionalGeneration
from transformers.modeling_outputs import Seq2SeqLMOutput

from .adapter import GeneratedAdapter
from .configuration_tagi import TagiConfig
from .fusion import DecoderFusionGates, FusionLayer, InstructionCrossAttention, encoder_fusion_hook, instruction_kv
from .modeling_tagi_base import TagiPreTrainedModel
from .task_state import AdapterFactors, TaskState, TaskStateSlots, use_task_state


@dataclass
class TagiSeq2SeqLMOutput(Seq2SeqLMOutput):
    """The backbone's outputs, plus the task state (generated factors) when `return_task_state=True`."""

    task_state: TaskState | None = None


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
    _no_split_modules = ["T5Block"]
    is_encoder_decoder = True
    backbone_auto_class = AutoModelForSeq2SeqLM
    auto_class_name = "AutoModel"
    peft_task_type = "SEQ_2_SEQ_LM"

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
