"""The training subcommands of `tagi-hf`: demo, pretrain (stage 1), train (stage 2), train-teachers, train-baseline.

Registered by [`tagi_hf.cli.main.build_parser`]; see `tagi_hf.cli.main` for the `--config FILE.yaml` convention.
Their flags are built from dataclasses (see [`tagi_hf.cli.arguments`]): `pretrain` and `train` from the dataclasses
below, [`GeneratorArguments`] and every field of [`TagiTrainingArguments`] (`--lr_scheduler_type`,
`--weight_decay`, `--bf16`, ...), `demo` from [`DemoSettings`]. A new field there is a new flag.

```
tagi-hf demo --out runs/demo
tagi-hf train-baseline --backbone google/t5-base-lm-adapt --data-dir natural-instructions --out runs/tk
tagi-hf train-teachers --backbone google/t5-base-lm-adapt --data-dir natural-instructions --out runs/teachers
tagi-hf pretrain --backbone google/t5-base-lm-adapt --dataset allenai/c4 --dataset-config en --streaming --out runs/s1
tagi-hf train --model runs/s1 --data-dir natural-instructions --teacher runs/tk --teachers runs/teachers \
    --out runs/tagi
```
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..modeling.configuration_tagi import FUSION_MODES, INSTRUCTION_ENCODERS, POOLING_MODES
from ..recipes.synthetic import DemoSettings
from ..training.arguments import TagiTrainingArguments
from .arguments import Subcommand, check_positive, dataclass_from

BACKBONE_HELP = (
    "A T5 or decoder-only LM (Llama / SmolLM, Qwen2, Mistral) checkpoint (dir or Hub id) with its tokenizer."
)


# ------------------------------------------------------------------------------------------- the flags' dataclasses
@dataclass(kw_only=True)
class OutputArguments:
    out: str = field(metadata={"help": "Output directory (written atomically when training ends)."})


@dataclass(kw_only=True)
class DataArguments:
    data_dir: str = field(metadata={"help": "SNI-layout folder (tasks/, splits/default/)."})
    setting: str = field(default="def", metadata={"help": "Instruction setting: def or def+Kpos."})
    max_train_instances_per_task: int = field(
        default=100, metadata={"help": "Training instances per task (shuffled with --seed)."}
    )

    def __post_init__(self):
        check_positive("tagi-hf", max_train_instances_per_task=self.max_train_instances_per_task)


@dataclass(kw_only=True)
class StepArguments:
    """The optimisation flags of `train-baseline` and `train-teachers`, which build their own Trainer arguments."""

    max_steps: int = field(default=1000, metadata={"help": "Optimiser steps."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and sampling."})

    def __post_init__(self):
        check_positive("tagi-hf", max_steps=self.max_steps, batch_size=self.batch_size)


@dataclass(kw_only=True)
class BaselineArguments(OutputArguments, DataArguments, StepArguments):
    backbone: str = field(metadata={"help": BACKBONE_HELP})

    def __post_init__(self):
        DataArguments.__post_init__(self)
        StepArguments.__post_init__(self)


@dataclass(kw_only=True)
class TeachersArguments(BaselineArguments):
    group_by: Literal["task", "category"] = field(default="task", metadata={"help": "One teacher per ..."})
    rank: int = field(default=8, metadata={"help": "LoRA rank (alpha = 2 * rank, as the paper)."})

    def __post_init__(self):
        super().__post_init__()
        check_positive("tagi-hf train-teachers", rank=self.rank)


@dataclass(kw_only=True)
class GeneratorArguments:
    """The [`TagiConfig`] fields `pretrain` and `train` set: the adapters' rank and fusion (for a model built from
    `--backbone`) and the generator's instruction reader (default: TagiConfig's, or the `--model`'s)."""

    lora_rank: int = field(default=32, metadata={"help": "Rank of the generated adapters (with --backbone)."})
    fusion: Literal[FUSION_MODES] = field(default="cross_attention", metadata={"help": "Fusion (with --backbone)."})
    instruction_encoder: Literal[INSTRUCTION_ENCODERS] | None = field(
        default=None,
        metadata={
            "help": "What reads the instruction: the frozen backbone encoder, or a trainable copy of it (default: "
            "TagiConfig's, or the --model's)."
        },
    )
    instruction_pooling: Literal[POOLING_MODES] | None = field(
        default=None,
        metadata={
            "help": "Masked mean, or a learned query per generated module (default: TagiConfig's, or the --model's)."
        },
    )

    def __post_init__(self):
        check_positive("tagi-hf", lora_rank=self.lora_rank)

    def config(self) -> dict:
        """The generator's TagiConfig fields that were given."""
        fields = {"instruction_encoder": self.instruction_encoder, "instruction_pooling": self.instruction_pooling}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(kw_only=True)
class PretrainArguments(OutputArguments):
    backbone: str = field(metadata={"help": BACKBONE_HELP})
    text_file: str | None = field(default=None, metadata={"help": "Local text: one document per line."})
    dataset: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset with a `text` column (e.g. allenai/c4)."}
    )
    synthetic_corpus: int | None = field(default=None, metadata={"help": "N texts of the synthetic suite's corpus."})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name (e.g. en; '' for none)."}
    )
    data_files: str | None = field(default=None, metadata={"help": "Files for a file-based --dataset (text, json)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    max_length: int = field(default=1024, metadata={"help": "Tokens per text before a|b|c split."})

    def __post_init__(self):
        sources = [name for name in ("text_file", "dataset", "synthetic_corpus") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(
                "`tagi-hf pretrain` needs exactly one of `--text-file`, `--dataset`, `--synthetic-corpus`"
                + (f"; got {', '.join('--' + s.replace('_', '-') for s in sources)}." if sources else ".")
            )
        check_positive("tagi-hf pretrain", synthetic_corpus=self.synthetic_corpus, max_length=self.max_length)


@dataclass(kw_only=True)
class TrainArguments(OutputArguments, DataArguments):
    model: str | None = field(
        default=None, metadata={"help": "A TagiModel directory, e.g. the stage-1 checkpoint of `tagi-hf pretrain`."}
    )
    backbone: str | None = field(default=None, metadata={"help": "Start from scratch (no stage 1): " + BACKBONE_HELP})
    teacher: str | None = field(
        default=None, metadata={"help": "Logit teacher for L_kl (`tagi-hf train-baseline` output)."}
    )
    teachers: str | None = field(
        default=None, metadata={"help": "LoRA teacher bank for L_ins (`tagi-hf train-teachers` output)."}
    )
    teacher_logits_top_k: int = field(
        default=0,
        metadata={
            "help": "Run the --teacher once per training example before training and keep its top-k logits per "
            "label token (in <out>-teacher-logits/, reused by a rerun) instead of running it at every step; 0: the "
            "live teacher."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if (self.model is None) == (self.backbone is None):
            raise ValueError("`tagi-hf train` needs exactly one of `--model` (a TagiModel) and `--backbone`.")
        if self.teacher_logits_top_k < 0:
            raise ValueError(f"`--teacher-logits-top-k` must be >= 0, got {self.teacher_logits_top_k}.")


# The flags of `TagiTrainingArguments` under their earlier, shorter names.
TRAINER_ALIASES = {
    "--batch-size": "per_device_train_batch_size",
    "--work-dir": "output_dir",
    "--warmup-ratio": "warmup_steps",  # a value below 1 is a share of the steps
}
# What `pretrain` and `train` change of `TagiTrainingArguments`' defaults (the paper's: warm-up 2 %).
TRAINER_DEFAULTS = {"warmup_steps": 0.02, "save_steps": 500, "logging_steps": 50, "save_total_limit": 2}


def _training_args(args: argparse.Namespace, **overrides) -> TagiTrainingArguments:
    """The run's `TagiTrainingArguments`: checkpoints in `--work-dir` (default `<out>.work`); the CPU when there
    is no GPU (not MPS)."""
    import torch

    work_dir = args.output_dir or f"{args.out.rstrip('/')}.work"
    use_cpu = args.use_cpu or not torch.cuda.is_available()
    training = dataclass_from(args, TagiTrainingArguments, output_dir=work_dir, use_cpu=use_cpu, **overrides)
    check_positive(
        f"tagi-hf {args.command}",
        max_steps=training.max_steps,
        batch_size=training.per_device_train_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
    )
    return training


def _train_split(data: DataArguments, seed: int):
    from ..data import load_sni

    splits = load_sni(
        data.data_dir, max_train_instances_per_task=data.max_train_instances_per_task, seed=seed, splits=("train",)
    )
    return splits["train"]


# ---------------------------------------------------------------------------------------------------------- demo
def _run_demo(args: argparse.Namespace) -> int:
    from ..recipes.synthetic import format_demo_table, run_demo

    summary = run_demo(dataclass_from(args, DemoSettings))
    print(format_demo_table(summary))
    print(f"\nAll artefacts under {args.out}; numbers in {args.out}/metrics.json")
    return 0


# ------------------------------------------------------------------------------------------------ train-baseline
def _run_baseline(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..teachers.baseline import train_multitask_baseline

    a = dataclass_from(args, BaselineArguments)
    path = train_multitask_baseline(
        a.backbone,
        AutoTokenizer.from_pretrained(a.backbone),
        _train_split(a, a.seed),
        a.out,
        setting=a.setting,
        max_steps=a.max_steps,
        learning_rate=a.learning_rate,
        per_device_train_batch_size=a.batch_size,
        seed=a.seed,
    )
    print(f"Wrote the instruction-in-context baseline to {path}")
    return 0


# ------------------------------------------------------------------------------------------------ train-teachers
def _run_teachers(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..teachers.lora_teachers import train_lora_teachers

    a = dataclass_from(args, TeachersArguments)
    bank = train_lora_teachers(
        a.backbone,
        AutoTokenizer.from_pretrained(a.backbone),
        _train_split(a, a.seed),
        a.out,
        group_by=a.group_by,
        rank=a.rank,
        max_steps=a.max_steps,
        learning_rate=a.learning_rate,
        per_device_train_batch_size=a.batch_size,
        seed=a.seed,
    )
    print(f"Wrote {len(bank.keys)} LoRA teachers to {a.out}")
    return 0


# ------------------------------------------------------------------------------------------------------ pretrain
def _pretraining_texts(a: PretrainArguments, seed: int):
    from datasets import Dataset, load_dataset

    if a.text_file:
        return load_dataset("text", data_files=a.text_file, split="train")
    if a.synthetic_corpus:
        from ..data import synthetic_corpus

        return Dataset.from_dict({"text": synthetic_corpus(seed, a.synthetic_corpus)})
    return load_dataset(
        a.dataset, a.dataset_config or None, data_files=a.data_files, split="train", streaming=a.streaming
    )


def _run_pretrain(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, set_seed

    from ..data import PretrainingCollator
    from ..modeling import TagiModel, tagi_class_for
    from ..training.run import train_tagi

    a, generator = dataclass_from(args, PretrainArguments), dataclass_from(args, GeneratorArguments)
    training = _training_args(args)
    if training.lambda_kl or training.lambda_ins:
        raise ValueError(
            "`tagi-hf pretrain` trains without distillation: leave `--lambda-kl` and `--lambda-ins` at 0."
        )
    tokenizer = AutoTokenizer.from_pretrained(a.backbone)
    set_seed(training.seed)  # the generator's initial weights are drawn here, before the Trainer seeds
    tagi_class = tagi_class_for(a.backbone)
    if tagi_class is not TagiModel:
        raise ValueError(
            "`tagi-hf pretrain` (stage 1, a|b|c segments) is written for T5 backbones; train a decoder-only TAGI "
            "from `--backbone` with `tagi-hf train`."
        )
    model = tagi_class.from_backbone(
        a.backbone,
        lora_rank=generator.lora_rank,
        lora_alpha=2 * generator.lora_rank,
        fusion=generator.fusion,
        **generator.config(),
    )
    collator = PretrainingCollator(tokenizer, max_length=a.max_length, seed=training.seed)
    train_tagi(model, tokenizer, _pretraining_texts(a, training.seed), a.out, training, data_collator=collator)
    print(f"Wrote the stage-1 checkpoint to {a.out}")
    return 0


# --------------------------------------------------------------------------------------------------------- train
def _run_train(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, set_seed

    from ..data import collator_for
    from ..modeling import tagi_class_for
    from ..teachers.lora_teachers import TeacherBank
    from ..teachers.seq2seq import load_backbone
    from ..training.run import train_tagi
    from ..training.teacher_logits import teacher_or_cache

    a, generator = dataclass_from(args, TrainArguments), dataclass_from(args, GeneratorArguments)
    training = _training_args(args)
    if training.lambda_kl > 0 and a.teacher is None:
        raise ValueError("`--lambda-kl` > 0 needs `--teacher` (or pass --lambda-kl 0).")
    if training.lambda_ins > 0 and a.teachers is None:
        raise ValueError("`--lambda-ins` > 0 needs `--teachers` (or pass --lambda-ins 0).")
    source = a.model or a.backbone
    tokenizer = AutoTokenizer.from_pretrained(source)
    set_seed(training.seed)  # new generator weights are drawn here, before the Trainer seeds
    tagi_class = tagi_class_for(source)  # TagiModel (T5) or TagiForCausalLM (Llama, Qwen2, Mistral)
    if a.model:  # generator flags given here change the saved model's (new parts start from the backbone)
        model = tagi_class.from_pretrained(a.model, **generator.config())
    else:
        model = tagi_class.from_backbone(
            a.backbone,
            lora_rank=generator.lora_rank,
            lora_alpha=2 * generator.lora_rank,
            fusion=generator.fusion,
            **generator.config(),
        )
    collator = collator_for(tokenizer, model.config, setting=a.setting)
    train = _train_split(a, training.seed)
    teacher = load_backbone(a.teacher)[0] if training.lambda_kl > 0 else None  # T5 or LM, after its config
    cache = Path(a.out).with_name(Path(a.out).name + "-teacher-logits")
    train, teacher = teacher_or_cache(
        teacher,
        train,
        collator,
        cache,
        top_k=a.teacher_logits_top_k,
        temperature=training.kl_temperature,
        batch_size=training.per_device_train_batch_size,
    )
    train_tagi(
        model,
        tokenizer,
        train,
        a.out,
        training,
        data_collator=collator,
        teacher_model=teacher,
        teacher_bank=TeacherBank.from_directory(a.teachers) if training.lambda_ins > 0 else None,
    )
    print(f"Wrote the trained TagiModel to {a.out}")
    return 0


TRAINING_SUBCOMMANDS = [
    Subcommand(
        "demo", "Run the whole TAGI pipeline on the synthetic suite.", None, _run_demo, arguments=(DemoSettings,)
    ),
    Subcommand(
        "train-baseline",
        "Instruction-in-context multi-task fine-tuning (Tk-Instruct role, logit teacher).",
        None,
        _run_baseline,
        arguments=(BaselineArguments,),
    ),
    Subcommand(
        "train-teachers",
        "Per-task (or per-category) LoRA teachers with PEFT.",
        None,
        _run_teachers,
        arguments=(TeachersArguments,),
        defaults={"max_steps": 100, "learning_rate": 1e-4},
    ),
    Subcommand(
        "pretrain",
        "Stage 1: hypernetwork pretraining on text split a|b|c.",
        None,
        _run_pretrain,
        arguments=(PretrainArguments, GeneratorArguments, TagiTrainingArguments),
        defaults={**TRAINER_DEFAULTS, "max_steps": 50000, "learning_rate": 1e-3, "lambda_kl": 0.0, "lambda_ins": 0.0},
        aliases=TRAINER_ALIASES,
    ),
    Subcommand(
        "train",
        "Stage 2: TagiTrainer with L_pred + L_kl + L_ins.",
        None,
        _run_train,
        arguments=(TrainArguments, GeneratorArguments, TagiTrainingArguments),
        defaults={**TRAINER_DEFAULTS, "max_steps": 20000, "learning_rate": 1e-4},
        aliases=TRAINER_ALIASES,
    ),
]
