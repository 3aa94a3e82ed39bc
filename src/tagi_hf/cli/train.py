"""The training subcommands of `tagi-hf`: demo, pretrain (stage 1), train (stage 2), train-teachers, train-baseline.

Registered by [`tagi_hf.cli.main.build_parser`]; see `tagi_hf.cli.main` for the `--config FILE.yaml` convention.

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
import dataclasses
from pathlib import Path

from .arguments import Subcommand, positive_int

BACKBONE_HELP = (
    "A T5 or decoder-only LM (Llama / SmolLM, Qwen2, Mistral) checkpoint (dir or Hub id) with its tokenizer."
)


def _add_common(parser: argparse.ArgumentParser, *, steps: int, lr: float, batch: int) -> None:
    parser.add_argument("--out", required=True, help="Output directory (written atomically when training ends).")
    parser.add_argument("--max-steps", type=positive_int, default=steps, help="Optimiser steps.")
    parser.add_argument("--learning-rate", type=float, default=lr, help="Peak learning rate.")
    parser.add_argument("--batch-size", type=positive_int, default=batch, help="Per-device batch size.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of initialisation, data order and sampling.")


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="SNI-layout folder (tasks/, splits/default/).")
    parser.add_argument("--setting", default="def", help="Instruction setting: def or def+Kpos.")
    parser.add_argument("--max-train-instances-per-task", type=positive_int, default=100,
                        help="Training instances per task (shuffled with --seed).")  # fmt: skip


def _train_split(args: argparse.Namespace):
    from ..data import load_sni

    return load_sni(args.data_dir, max_train_instances_per_task=args.max_train_instances_per_task, seed=args.seed,
                    splits=("train",))["train"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- demo
def _add_demo(parser: argparse.ArgumentParser) -> None:
    from ..recipes.synthetic import DemoSettings

    for field in dataclasses.fields(DemoSettings):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=f"{field.name} (start over when set).")
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=field.default, help=f"Demo setting `{field.name}`.")


def _run_demo(args: argparse.Namespace) -> int:
    from ..recipes.synthetic import DemoSettings, format_demo_table, run_demo

    names = {f.name for f in dataclasses.fields(DemoSettings)}
    summary = run_demo(DemoSettings(**{k: v for k, v in vars(args).items() if k in names}))
    print(format_demo_table(summary))
    print(f"\nAll artefacts under {args.out}; numbers in {args.out}/metrics.json")
    return 0


# ------------------------------------------------------------------------------------------------ train-baseline
def _add_baseline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    _add_data(parser)
    _add_common(parser, steps=1000, lr=5e-5, batch=8)


def _run_baseline(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..teachers.baseline import train_multitask_baseline

    path = train_multitask_baseline(
        args.backbone, AutoTokenizer.from_pretrained(args.backbone), _train_split(args), args.out,
        setting=args.setting, max_steps=args.max_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    print(f"Wrote the instruction-in-context baseline to {path}")
    return 0


# ------------------------------------------------------------------------------------------------ train-teachers
def _add_teachers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    _add_data(parser)
    _add_common(parser, steps=100, lr=1e-4, batch=8)
    parser.add_argument("--group-by", choices=("task", "category"), default="task", help="One teacher per ...")
    parser.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (alpha = 2 * rank, as the paper).")


def _run_teachers(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..teachers.lora_teachers import train_lora_teachers

    bank = train_lora_teachers(
        args.backbone, AutoTokenizer.from_pretrained(args.backbone), _train_split(args), args.out,
        group_by=args.group_by, rank=args.rank, max_steps=args.max_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    print(f"Wrote {len(bank.keys)} LoRA teachers to {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------------ pretrain
def _add_pretrain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-file", help="Local text: one document per line.")
    source.add_argument("--dataset", help="A `datasets` dataset with a `text` column (e.g. allenai/c4).")
    source.add_argument("--synthetic-corpus", type=positive_int, help="N texts of the synthetic suite's corpus.")
    parser.add_argument("--dataset-config", default=None, help="Dataset configuration name (e.g. en; '' for none).")
    parser.add_argument("--data-files", default=None, help="Files for a file-based --dataset (text, json, ...).")
    parser.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=False,
                        help="Stream the dataset instead of downloading it.")  # fmt: skip
    parser.add_argument("--max-length", type=positive_int, default=1024, help="Tokens per text before a|b|c split.")
    parser.add_argument("--lora-rank", type=positive_int, default=32, help="Rank of the generated adapters.")
    parser.add_argument("--fusion", choices=("cross_attention", "none"), default="cross_attention")
    _add_generator(parser)
    _add_common(parser, steps=50000, lr=1e-3, batch=8)
    _add_engine(parser)


def _pretraining_texts(args: argparse.Namespace):
    from datasets import Dataset, load_dataset

    if args.text_file:
        return load_dataset("text", data_files=args.text_file, split="train")
    if args.synthetic_corpus:
        from ..data import synthetic_corpus

        return Dataset.from_dict({"text": synthetic_corpus(args.seed, args.synthetic_corpus)})
    return load_dataset(args.dataset, args.dataset_config or None, data_files=args.data_files, split="train",
                        streaming=args.streaming)  # fmt: skip


def _run_pretrain(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, set_seed

    from ..data import PretrainingCollator
    from ..modeling import TagiModel, tagi_class_for
    from ..training.run import train_tagi

    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    set_seed(args.seed)  # the generator's initial weights are drawn here, before the Trainer seeds
    tagi_class = tagi_class_for(args.backbone)
    if tagi_class is not TagiModel:
        raise ValueError(
            "`tagi-hf pretrain` (stage 1, a|b|c segments) is written for T5 backbones; train a decoder-only TAGI "
            "from `--backbone` with `tagi-hf train`."
        )
    model = tagi_class.from_backbone(args.backbone, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                     fusion=args.fusion, **_generator_config(args))  # fmt: skip
    collator = PretrainingCollator(tokenizer, max_length=args.max_length, seed=args.seed)
    train_tagi(model, tokenizer, _pretraining_texts(args), args.out, _training_args(args, 0.0, 0.0),
               data_collator=collator)  # fmt: skip
    print(f"Wrote the stage-1 checkpoint to {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------------- train
def _add_train(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", help="A TagiModel directory, e.g. the stage-1 checkpoint of `tagi-hf pretrain`.")
    start.add_argument("--backbone", help="Start from scratch (no stage 1): " + BACKBONE_HELP)
    _add_data(parser)
    parser.add_argument("--teacher", default=None, help="Logit teacher for L_kl (`tagi-hf train-baseline` output).")
    parser.add_argument("--teachers", default=None, help="LoRA teacher bank for L_ins (`tagi-hf train-teachers`).")
    parser.add_argument("--lambda-kl", type=float, default=1.0, help="Weight of L_kl (0 disables).")
    parser.add_argument("--lambda-ins", type=float, default=1.0, help="Weight of L_ins (0 disables).")
    parser.add_argument("--kl-temperature", type=float, default=1.0, help="Distillation temperature T.")
    parser.add_argument("--teacher-logits-top-k", type=int, default=0,
                        help="Run the --teacher once per training example before training and keep its top-k logits "
                             "per label token (in <out>-teacher-logits/, reused by a rerun) instead of running it at "
                             "every step; 0: the live teacher.")  # fmt: skip
    parser.add_argument("--lora-rank", type=positive_int, default=32, help="With --backbone: adapter rank.")
    parser.add_argument("--fusion", choices=("cross_attention", "none"), default="cross_attention",
                        help="With --backbone: the fusion mode.")  # fmt: skip
    _add_generator(parser)
    parser.add_argument("--instruction-encoder-learning-rate", type=float, default=None,
                        help="Peak rate of a separate instruction encoder (default: --learning-rate).")  # fmt: skip
    parser.add_argument(
        "--examples-per-task",
        type=int,
        default=0,
        help="Task-balanced batches: this many examples per task in a batch (0: random batches).",
    )
    _add_common(parser, steps=20000, lr=1e-4, batch=8)
    _add_engine(parser)


def _run_train(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, set_seed

    from ..data import collator_for
    from ..modeling import tagi_class_for
    from ..training.run import train_tagi
    from ..teachers.lora_teachers import TeacherBank
    from ..teachers.seq2seq import load_backbone
    from ..training.teacher_logits import teacher_or_cache

    if args.lambda_kl > 0 and args.teacher is None:
        raise ValueError("`--lambda-kl` > 0 needs `--teacher` (or pass --lambda-kl 0).")
    if args.lambda_ins > 0 and args.teachers is None:
        raise ValueError("`--lambda-ins` > 0 needs `--teachers` (or pass --lambda-ins 0).")
    source = args.model or args.backbone
    tokenizer = AutoTokenizer.from_pretrained(source)
    set_seed(args.seed)  # new generator weights are drawn here, before the Trainer seeds
    tagi_class = tagi_class_for(source)  # TagiModel (T5) or TagiForCausalLM (Llama, Qwen2, Mistral)
    if args.model:  # generator flags given here change the saved model's (new parts start from the backbone)
        model = tagi_class.from_pretrained(args.model, **_generator_config(args))
    else:
        model = tagi_class.from_backbone(args.backbone, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                        fusion=args.fusion, **_generator_config(args))  # fmt: skip
    if args.teacher_logits_top_k < 0:
        raise ValueError(f"`--teacher-logits-top-k` must be >= 0, got {args.teacher_logits_top_k}.")
    collator = collator_for(tokenizer, model.config, setting=args.setting)
    train = _train_split(args)
    teacher = load_backbone(args.teacher)[0] if args.lambda_kl > 0 else None  # T5 or LM, after its config
    cache = Path(args.out).with_name(Path(args.out).name + "-teacher-logits")
    train, teacher = teacher_or_cache(teacher, train, collator, cache, top_k=args.teacher_logits_top_k,
                                      temperature=args.kl_temperature, batch_size=args.batch_size)  # fmt: skip
    train_tagi(
        model,
        tokenizer,
        train,
        args.out,
        _training_args(args, args.lambda_kl, args.lambda_ins),
        data_collator=collator,
        teacher_model=teacher,
        teacher_bank=TeacherBank.from_directory(args.teachers) if args.lambda_ins > 0 else None,
    )
    print(f"Wrote the trained TagiModel to {args.out}")
    return 0


# ------------------------------------------------------------------------------------------- shared generator
def _add_generator(parser: argparse.ArgumentParser) -> None:
    from ..modeling.configuration_tagi import INSTRUCTION_ENCODERS, POOLING_MODES

    parser.add_argument("--instruction-encoder", choices=INSTRUCTION_ENCODERS, default=None,
                        help="What reads the instruction: the frozen backbone encoder, or a trainable copy of it "
                             "(default: TagiConfig's, or the --model's).")  # fmt: skip
    parser.add_argument("--instruction-pooling", choices=POOLING_MODES, default=None,
                        help="Masked mean, or a learned query per generated module (default: TagiConfig's, or the "
                             "--model's).")  # fmt: skip


def _generator_config(args: argparse.Namespace) -> dict:
    return {
        k: getattr(args, k) for k in ("instruction_encoder", "instruction_pooling") if getattr(args, k) is not None
    }


# ---------------------------------------------------------------------------------------------- shared engine
def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gradient-accumulation-steps", type=positive_int, default=1, help="Micro-batches per step.")
    parser.add_argument("--warmup-ratio", type=float, default=0.02, help="Warm-up share of the steps (paper: 2%%).")
    parser.add_argument("--save-steps", type=positive_int, default=500, help="Checkpoint every N steps (resume).")
    parser.add_argument("--logging-steps", type=positive_int, default=50, help="Log every N steps.")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False, help="bf16 mixed precision.")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Activation checkpointing.")
    parser.add_argument("--work-dir", default=None, help="Checkpoints folder (default: <out>.work).")


def _training_args(args: argparse.Namespace, lambda_kl: float, lambda_ins: float):
    import torch

    from ..training.arguments import TagiTrainingArguments

    return TagiTrainingArguments(
        output_dir=args.work_dir or f"{args.out.rstrip('/')}.work", max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate, warmup_steps=max(1, int(args.warmup_ratio * args.max_steps)),
        save_steps=args.save_steps, save_total_limit=2, logging_steps=args.logging_steps, seed=args.seed,
        bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing, lambda_kl=lambda_kl,
        lambda_ins=lambda_ins, kl_temperature=getattr(args, "kl_temperature", 1.0),
        instruction_encoder_learning_rate=getattr(args, "instruction_encoder_learning_rate", None),
        examples_per_task=getattr(args, "examples_per_task", 0), use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip


TRAINING_SUBCOMMANDS = [
    Subcommand("demo", "Run the whole TAGI pipeline on the synthetic suite.", _add_demo, _run_demo),
    Subcommand("train-baseline", "Instruction-in-context multi-task fine-tuning (Tk-Instruct role, logit teacher).",
               _add_baseline, _run_baseline),
    Subcommand("train-teachers", "Per-task (or per-category) LoRA teachers with PEFT.", _add_teachers, _run_teachers),
    Subcommand("pretrain", "Stage 1: hypernetwork pretraining on text split a|b|c.", _add_pretrain, _run_pretrain),
    Subcommand("train", "Stage 2: TagiTrainer with L_pred + L_kl + L_ins.", _add_train, _run_train),
]  # fmt: skip
