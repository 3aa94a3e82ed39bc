"""The stand-in for a pretrained T5 on the synthetic suite (no pretrained T5 weights can be had offline).

A small T5 is trained from scratch with a prefix-LM objective (the objective of T5-LM-adapt) on text the spec lets
it see: random word sequences of the suite's vocabulary (`synthetic_corpus`), and instances of **train** tasks
written in the prompt formats (`instance_texts`): with their definition in context (Tk-Instruct format) with
probability `definition_fraction`, else as the input alone. Instance texts are split at the start of the output with
probability `boundary_probability` (else at a random token), so the stand-in learns the formats and the copying and
reordering the operations share. It never sees a dev or test task, a held-out chain or a held-out word used as a
parameter. The recipe's default (`definition_fraction=1.0`) makes the stand-in T0-like: instruction-tuned on the
train tasks, the paper's T0 base rather than T5-LM-adapt (both are legitimate; the results say which was used). It
is the cheapest route to a backbone that fits its tasks on 2 CPU cores (probe log:
`benchmarks/results/probes/README.md`).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
)

from ..data import PrefixLMCollator
from ..training.checkpoints import last_complete_checkpoint, save_final_model


def standin_config(vocab_size: int, *, d_model: int = 128, num_layers: int = 3, num_heads: int = 4) -> T5Config:
    """A small T5 (LM-adapt flavour: gated GELU, untied head off as in v1.1 is not needed at this size)."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def pretrain_standin(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    *,
    config: T5Config | None = None,
    max_steps: int = 1000,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    boundary_probability: float = 0.0,
    save_steps: int | None = None,
) -> Path:
    """Trains the stand-in backbone and saves it (with the tokenizer) atomically to `output_dir`.

    `boundary_probability`: see [`PrefixLMCollator`] (texts from `instance_texts` split at their output).
    `save_steps`: a checkpoint (the newest one kept) every this many steps, in `.<output_dir name>-work` beside
    `output_dir`; a run stopped part-way resumes from it when called again. Default: a tenth of `max_steps`.
    """
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config or standin_config(len(tokenizer)))
    output_dir = Path(output_dir)
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir.parent / f".{output_dir.name}-work"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max_steps // 20,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=max(1, max_steps // 10),
        save_strategy="steps",
        save_steps=save_steps or max(1, max_steps // 10),
        save_total_limit=1,
        report_to="none",
        seed=seed,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        data_collator=PrefixLMCollator(tokenizer, seed=seed, boundary_probability=boundary_probability),
    )
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))
    save_final_model(trainer, output_dir, tokenizer=tokenizer)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    return output_dir


def instance_texts(rows: Dataset, seed: int = 0, *, definition_fraction: float = 0.5) -> list[str]:
    """Train instances as prefix-LM text: each row in the Tk-Instruct format (definition in context, with
    probability `definition_fraction`) or as the student's input alone, at random (seeded), followed by its first
    output. `definition_fraction=1.0` makes the stand-in T0-like (instruction-tuned)."""
    from ..data.prompts import format_instruction, format_student_input, format_teacher_input

    if not 0.0 <= definition_fraction <= 1.0:
        raise ValueError(f"`definition_fraction` must be in [0, 1], got {definition_fraction}.")
    rng, texts = random.Random(f"instance-texts:{seed}"), []
    for row in rows:
        if rng.random() < definition_fraction:
            prompt = format_teacher_input(format_instruction(row["definition"]), row["input"])
        else:
            prompt = format_student_input(row["input"])
        texts.append(prompt + row["outputs"][0])
    return texts
