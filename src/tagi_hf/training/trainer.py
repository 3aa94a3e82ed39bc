"""TagiTrainer: the Seq2SeqTrainer with TAGI's distillation losses (paper, Sec. 3.2.4).

`L = L_pred + lambda_kl * L_kl + lambda_ins * L_ins`:
- `L_pred`: cross-entropy of the student (backbone + generated adapter + fusion; input without instruction);
- `L_kl`: KL(teacher || student) at temperature T (times T^2) over label tokens, the teacher (an instruction-in-context
  model) reading instruction + input;
- `L_ins`: alignment of the generated updates `(alpha / r) B A` with the task teacher LoRA's, per module.
Each term is logged separately.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer

from ..data import IGNORE_INDEX
from ..data.sampling import TaskBalancedSampler
from ..modeling.lora import LoraFactors
from .arguments import TagiTrainingArguments
from .checkpoints import resolve_resume_checkpoint
from .losses import (
    SparseTeacher,
    adapter_alignment_loss,
    distillation_kl_loss,
    prediction_loss,
    sparse_distillation_kl_loss,
)
from .teacher_logits import SPARSE_TEACHER_COLUMNS

# Batch keys the collator adds for the losses; the model itself never sees them.
TEACHER_KEYS = (
    "task_keys",
    "task_categories",
    "teacher_input_ids",
    "teacher_attention_mask",
    "teacher_labels",  # decoder-only: where the output lies in the teacher's sequence
    "teacher_logits",
    *SPARSE_TEACHER_COLUMNS,
)


class TagiTrainer(Seq2SeqTrainer):
    r"""
    Trains a TAGI model's generator and fusion with label, logit and parameter distillation.

    Args:
        model ([`TagiPreTrainedModel`]): the student ([`TagiModel`] or [`TagiForCausalLM`]).
        args ([`TagiTrainingArguments`]): training arguments, with `lambda_kl`, `lambda_ins`, `kl_temperature`.
        teacher_model (`PreTrainedModel`, *optional*): the logit teacher (instruction in its input); needed when
            `lambda_kl > 0` unless batches carry precomputed `teacher_logits`. Kept frozen, in eval mode.
        teacher_bank ([`TeacherBank`], *optional*): per-task LoRA teachers; needed when `lambda_ins > 0`.
        **kwargs: anything [`Seq2SeqTrainer`] takes (`train_dataset`, `data_collator`, `callbacks`, ...).

    Example:

    ```python
    >>> trainer = TagiTrainer(model=model, args=args, teacher_model=tk_instruct, teacher_bank=bank,
    ...                       train_dataset=data["train"], data_collator=TagiDataCollator(tokenizer))  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    _tag_names = ["tagi", "hypernetwork", "lora"]
    loss_is_scaled_for_ga = True  # compute_loss normalises by the tokens of the whole accumulated batch

    def __init__(
        self,
        model,
        args: TagiTrainingArguments,
        teacher_model: PreTrainedModel | None = None,
        teacher_bank=None,
        **kwargs,
    ):
        if not isinstance(args, TagiTrainingArguments):
            raise ValueError("`args` must be a TagiTrainingArguments.")
        if args.lambda_ins > 0 and teacher_bank is None:
            raise ValueError("`lambda_ins` > 0 needs a `teacher_bank` of per-task LoRA teachers.")
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = True  # so the Trainer counts the label tokens of the accumulated batch
        self.teacher_model = None if teacher_model is None else self._prepare_teacher(teacher_model)
        self.teacher_bank = teacher_bank
        if teacher_bank is not None:
            teacher_bank.check_compatible(self.accelerator.unwrap_model(model).backbone)
        self._loss_terms: dict[str, list[float]] = defaultdict(list)

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """The frozen L_kl teacher, placed as accelerate expects a model used only in evaluation mode: under FSDP
        sharded like the student (`prepare_model(evaluation_mode=True)`: wrapped, never DDP-wrapped); under DeepSpeed
        an inference engine (ZeRO-3 shards it, stages 0-2 keep a full copy: they shard only optimizer state and
        gradients, which a frozen model has none of); otherwise moved to the device."""
        teacher.requires_grad_(False)
        if self.is_deepspeed_enabled:
            teacher = _deepspeed_inference_engine(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        else:
            teacher = teacher.to(self.args.device)
        return teacher.eval()

    # ------------------------------------------------------------------------------------------------- losses
    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        extras = {key: inputs.pop(key) for key in TEACHER_KEYS if key in inputs}
        labels = inputs["labels"]
        outputs = model(**inputs, return_task_state=self.args.lambda_ins > 0)
        tokens = (labels != IGNORE_INDEX).sum()
        logits = outputs.logits
        causal = not self.accelerator.unwrap_model(model).is_encoder_decoder  # the family its class declares
        if causal:  # position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        terms = {"loss_pred": prediction_loss(logits, labels)}
        if self.args.lambda_kl > 0 and "teacher_topk_ids" in extras:  # cached once (tagi_hf.training.teacher_logits)
            if causal:
                raise ValueError("Cached teacher logits are for T5 backbones; train a decoder-only TAGI live.")
            terms["loss_kl"] = sparse_distillation_kl_loss(
                logits, self._sparse_teacher(extras), labels, self.args.kl_temperature
            )
        elif self.args.lambda_kl > 0:
            teacher_logits = extras.get("teacher_logits")
            if teacher_logits is None:
                teacher_logits = self._teacher_logits(extras, labels)
                if causal:
                    teacher_logits = _aligned_teacher_logits(teacher_logits, extras["teacher_labels"], labels)
            terms["loss_kl"] = distillation_kl_loss(logits, teacher_logits, labels, self.args.kl_temperature)
        if self.args.lambda_ins > 0:
            student = _student_factors(outputs.task_state.lora, self._scaling(model))
            terms["loss_ins"] = adapter_alignment_loss(
                student, self._teacher_factors(extras, student), relative=self.args.ins_normalize
            )
        token_loss = terms["loss_pred"] + self.args.lambda_kl * terms.get("loss_kl", 0.0)
        loss = token_loss * self._token_weight(tokens.to(token_loss.dtype), num_items_in_batch)
        loss = loss + self.args.lambda_ins * terms.get("loss_ins", 0.0) / self._micro_batches(num_items_in_batch)
        if model.training:
            self._stop_if_not_finite(loss, terms)
            for name, value in terms.items():
                self._loss_terms[name].append(value.detach().float().item())
        return (loss, outputs) if return_outputs else loss

    def _stop_if_not_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Stops at the first non-finite loss, before its gradients reach the weights or a checkpoint. Processes
        agree first, so none is left waiting in a collective."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() == 0:
            return
        values = ", ".join(f"{name}={value.item():.4g}" for name, value in terms.items())
        raise FloatingPointError(
            f"Non-finite training loss at step {self.state.global_step + 1} ({values} on this process): training "
            f"stopped before the step changed any weight. Checkpoints in `{self.args.output_dir}` hold earlier steps; "
            "resume from the last one with a lower learning rate, or use bf16 rather than fp16."
        )

    def _token_weight(self, tokens: torch.Tensor, num_items_in_batch) -> torch.Tensor | float:
        """Token-mean terms weighted by this micro-batch's share of the label tokens of the whole accumulated
        (with `average_tokens_across_devices`, all-process) batch: exact under gradient accumulation and DDP."""
        if num_items_in_batch is None or not self.model.training:
            return 1.0
        world = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        total = torch.as_tensor(num_items_in_batch, device=tokens.device, dtype=tokens.dtype).clamp(min=1)
        return tokens * world / total  # in the loss's dtype: a float32 ratio would blur float64 checks

    def _micro_batches(self, num_items_in_batch) -> int:
        """Per-example terms are micro-batch means: divide by the accumulation steps to average them."""
        if num_items_in_batch is None or not self.model.training:
            return 1
        return self.current_gradient_accumulation_steps

    @torch.no_grad()
    def _teacher_logits(self, extras: dict, labels: torch.Tensor) -> torch.Tensor:
        if self.teacher_model is None:
            raise ValueError("`lambda_kl` > 0 needs a `teacher_model` or precomputed `teacher_logits` in the batch.")
        if "teacher_input_ids" not in extras:
            raise ValueError(
                "The batch has no `teacher_input_ids`; build it with `TagiDataCollator(teacher_inputs=True)`."
            )
        # T5 decodes the labels; a decoder-only teacher reads its own sequence (`teacher_labels` mark the output)
        targets = {} if "teacher_labels" in extras else {"labels": labels}
        return self.teacher_model(
            input_ids=extras["teacher_input_ids"], attention_mask=extras["teacher_attention_mask"], **targets
        ).logits

    def _sparse_teacher(self, extras: dict) -> SparseTeacher:
        cached = extras["teacher_temperature"]
        if not torch.all(cached == self.args.kl_temperature):
            raise ValueError(
                f"The cached teacher logits were made at temperature {cached.unique().tolist()}, training uses "
                f"`kl_temperature`={self.args.kl_temperature}: cache them again at this temperature."
            )
        return SparseTeacher(
            extras["teacher_topk_ids"], extras["teacher_topk_logits"], extras["teacher_log_normalizer"]
        )

    def _scaling(self, model: nn.Module) -> float:
        return self.accelerator.unwrap_model(model).config.lora_scaling

    def _teacher_factors(self, extras: dict, student: dict[str, LoraFactors]) -> dict[str, LoraFactors]:
        tasks = extras.get("task_keys")
        if tasks is None:
            raise ValueError("The batch has no `task_keys`; the parameter alignment needs each example's task.")
        categories = extras.get("task_categories") or [""] * len(tasks)
        keys = [self.teacher_bank.key_for(task, category) for task, category in zip(tasks, categories)]
        like = next(iter(student.values())).A
        teacher = self.teacher_bank.lora_factors(keys, device=like.device, dtype=like.dtype)
        return {name: teacher[name] for name in student}

    # ------------------------------------------------------------------------------------------ batches, optimiser
    def _get_train_sampler(self, train_dataset=None):
        """Task-balanced batches when `args.examples_per_task` > 0 (the dataset needs a `task` column)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.examples_per_task == 0:
            return super()._get_train_sampler(train_dataset)
        if "task" not in getattr(dataset, "column_names", ()):
            raise ValueError("`examples_per_task` > 0 needs a `task` column in the training dataset.")
        return TaskBalancedSampler(
            dataset["task"], self.args.per_device_train_batch_size, self.args.examples_per_task, seed=self.args.seed
        )

    def create_optimizer(self, model=None):
        """The Trainer's optimiser, with the separate instruction encoder's parameters in groups of their own at
        `args.instruction_encoder_learning_rate` (when set)."""
        optimizer = super().create_optimizer(model)
        encoder = getattr(self.accelerator.unwrap_model(self.model), "instruction_encoder", None)
        lr = self.args.instruction_encoder_learning_rate
        if encoder is None or lr is None or self.optimizer_cls_and_kwargs is not None:
            return optimizer
        mine = {id(p) for p in encoder.parameters()}
        split = []
        for group in optimizer.param_groups:  # before the first step: no optimiser state to move
            ours = [p for p in group["params"] if id(p) in mine]
            group["params"] = [p for p in group["params"] if id(p) not in mine]
            if ours:
                split.append({**{k: v for k, v in group.items() if k != "params"}, "params": ours, "lr": lr})
        for group in split:
            optimizer.add_param_group(group)
        return optimizer

    # ------------------------------------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._loss_terms:  # a training log: add each term, averaged since the last one
            for name, values in self._loss_terms.items():
                logs[name] = self._mean_over_processes(sum(values) / len(values))
            self._loss_terms.clear()
        super().log(logs, *args, **kwargs)

    def _mean_over_processes(self, value: float) -> float:
        """Every process logs at the same steps: average its terms like Trainer averages `loss`."""
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(torch.tensor(value, device=self.args.device), reduction="mean").item()

    # ------------------------------------------------------------------------------------------- saving, resuming
    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`, resuming where [`tagi_hf.training.checkpoints.resolve_resume_checkpoint`] says: a
        checkpoint cut short by a crash is skipped for the newest complete one, and `"if-any"` ([`RESUME_IF_ANY`])
        resumes from the newest complete checkpoint in `args.output_dir` when there is one, else starts fresh."""
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(checkpoint, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        token, self.args.hub_token = self.args.hub_token, None  # `training_args.bin` pickles the arguments
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token

    # ---------------------------------------------------------------------------------------------- evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if prediction_loss_only:
            loss = self.compute_loss(model, dict(inputs)).detach()
            return loss, None, None
        inputs = {key: value for key, value in inputs.items() if key not in TEACHER_KEYS}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)


def _aligned_teacher_logits(
    teacher_logits: torch.Tensor, teacher_labels: torch.Tensor, student_labels: torch.Tensor
) -> torch.Tensor:
    """A decoder-only teacher's logits moved onto the student's output positions. Both sequences end with the same
    output tokens after different prompts: the k-th predicted output token of a row is the k-th in both.

    teacher_logits `(batch, teacher_len, vocab)` (unshifted), teacher_labels `(batch, teacher_len)`, student_labels
    `(batch, len - 1)` (already shifted) -> `(batch, len - 1, vocab)`, zeros off the output positions."""
    logits, targets = teacher_logits[:, :-1], teacher_labels[:, 1:]
    keep_t, keep_s = targets != IGNORE_INDEX, student_labels != IGNORE_INDEX
    if not torch.equal(keep_t.sum(1), keep_s.sum(1)) or not torch.equal(targets[keep_t], student_labels[keep_s]):
        raise ValueError("The teacher's output tokens differ from the student's: build both with one collator.")
    aligned = logits.new_zeros(*student_labels.shape, logits.shape[-1])
    aligned[keep_s] = logits[keep_t]
    return aligned


def _student_factors(lora: dict[str, tuple[torch.Tensor, torch.Tensor]], scaling: float) -> dict[str, LoraFactors]:
    return {name: LoraFactors(a, b, scaling) for name, (a, b) in lora.items()}


def _deepspeed_inference_engine(model: nn.Module, accelerator) -> nn.Module:
    """`model` as a DeepSpeed engine without optimizer, with the training run's precision and ZeRO-3 sharding."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    if config.get("zero_optimization", {}).get("stage", 0) != 3:
        config["zero_optimization"] = {"stage": 0}
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine
