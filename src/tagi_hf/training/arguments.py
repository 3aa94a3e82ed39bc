"""Training arguments of the TAGI recipe: the Seq2Seq trainer's arguments plus the distillation terms."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments


@dataclass
class TagiTrainingArguments(Seq2SeqTrainingArguments):
    r"""
    [`Seq2SeqTrainingArguments`] for [`TagiTrainer`]. The loss is (paper, Sec. 3.2.4)
    `L = L_pred + lambda_kl * L_kl + lambda_ins * L_ins`; a weight of 0 disables its term (and its teacher).

    Example:

    ```python
    >>> from tagi_hf.training.arguments import TagiTrainingArguments
    >>> args = TagiTrainingArguments(output_dir="runs/x", lambda_kl=1.0, lambda_ins=0.0, kl_temperature=2.0)
    >>> args.remove_unused_columns
    False
    ```
    """

    lambda_kl: float = field(
        default=1.0,
        metadata={"help": "Weight of L_kl, KL(teacher || student) on label tokens (paper's lambda_1; 0 disables)."},
    )
    lambda_ins: float = field(
        default=1.0,
        metadata={
            "help": "Weight of L_ins, the alignment of generated and teacher LoRA updates (lambda_2; 0 disables)."
        },
    )
    kl_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature T of the distillation term (scaled by T^2)."}
    )
    ins_normalize: bool = field(
        default=True,
        metadata={
            "help": "Divide L_ins by the teacher updates' mean square, so it is scale-free (a relative error); "
            "False gives the plain mean squared error of the updates."
        },
    )
    instruction_encoder_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of a separate instruction encoder (`TagiConfig.instruction_encoder="
            "'separate'`); None: `learning_rate`. It starts from pretrained weights, so it usually wants a lower one."
        },
    )
    examples_per_task: int = field(
        default=0,
        metadata={
            "help": "Task-balanced batches: every batch holds `per_device_train_batch_size // examples_per_task` "
            "tasks drawn uniformly, with `examples_per_task` examples each (0: plain random batches)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns: the TAGI collator needs the instruction text."}
    )
    # Written as TrainingArguments writes it: HfArgumentParser reads `None | str | ...` as a string flag, and fails
    # on `str | list[str] | None`.
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to log to."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("lambda_kl", "lambda_ins"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.instruction_encoder_learning_rate is not None and self.instruction_encoder_learning_rate < 0:
            raise ValueError(
                f"`instruction_encoder_learning_rate` must be >= 0, got {self.instruction_encoder_learning_rate}."
            )
        if self.examples_per_task < 0 or self.examples_per_task > self.per_device_train_batch_size:
            raise ValueError(
                f"`examples_per_task` must be between 0 and `per_device_train_batch_size` "
                f"({self.per_device_train_batch_size}), got {self.examples_per_task}."
            )
        if self.kl_temperature <= 0:
            raise ValueError(f"`kl_temperature` must be > 0, got {self.kl_temperature}.")
