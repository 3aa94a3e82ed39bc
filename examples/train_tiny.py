"""Train a tiny TagiModel with TagiTrainer for a few steps: the smallest end-to-end run, on one process or many.

```
python examples/train_tiny.py --out runs/tiny
accelerate launch --num_processes 2 --cpu examples/train_tiny.py --out runs/tiny-ddp
torchrun --nproc_per_node 2 examples/train_tiny.py --out runs/tiny-ddp          # gloo on CPU, nccl on GPUs
accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_tiny.py --out runs/tiny-ddp --bf16
```

Everything is built in code (a word-level tokenizer, a 2-layer T5 of width 32, three word tasks), so it runs offline
in seconds. `--global-batch-size` is split evenly over the processes: one process and N processes see the same
examples in every optimiser step, and their loss trajectories agree (see `tests/test_scale_out.py`). Only rank 0
writes: `losses.json` (the loss of every step), the checkpoints and `final/` (except `rng_state_<rank>.pth`, each
process's random state in each checkpoint, which an exact resume needs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, set_seed

from tagi_hf import TagiConfig, TagiModel
from tagi_hf.data import TagiDataCollator
from tagi_hf.training.arguments import TagiTrainingArguments
from tagi_hf.training.checkpoints import save_final_model
from tagi_hf.training.trainer import TagiTrainer

WORDS = "apple bird boat book cake car cat cloud coin cup desk dog door drum egg fish flag frog gold hat".split()
TASKS = {  # task name -> (definition, operation on the list of words)
    "reverse": ("Reverse the order of the words.", lambda w: w[::-1]),
    "sort": ("Sort the words in alphabetical order.", sorted),
    "first_two": ("Keep only the first two words.", lambda w: w[:2]),
}


def build_rows(per_task: int = 16, seed: int = 0) -> list[dict]:
    """SNI-style rows (`task`, `definition`, `input`, `outputs`, ...) of the three word tasks."""
    rng = random.Random(seed)
    rows = []
    for task, (definition, operation) in TASKS.items():
        for i in range(per_task):
            words = rng.sample(WORDS, rng.randint(3, 6))
            rows.append(
                {"id": f"{task}-{i}", "task": task, "category": task, "definition": definition,
                 "positive_examples": [], "input": " ".join(words), "outputs": [" ".join(operation(words))]}
            )  # fmt: skip
    return rows


def build_tokenizer(rows: list[dict]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the rows' words (T5 conventions: pad 0, eos 1, unk 2, `</s>` appended)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for row in rows:
        text = " ".join([row["definition"], row["input"], *row["outputs"], "Definition: Input: Output:"])
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_model(vocab_size: int, seed: int = 0, fusion: str = "cross_attention") -> TagiModel:
    """A tiny TagiModel (random backbone, no dropout, so every process computes the same function)."""
    set_seed(seed)
    text = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                    num_decoder_layers=2, dropout_rate=0.0, decoder_start_token_id=0)  # fmt: skip
    return TagiModel(TagiConfig(text_config=text, lora_rank=4, fusion=fusion, base_model_name_or_path="tiny-t5"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Run directory (checkpoints, losses.json, final/).")
    parser.add_argument("--max-steps", type=int, default=6, help="Optimiser steps.")
    parser.add_argument("--global-batch-size", type=int, default=8, help="Examples per step, all processes together.")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="Micro-batches per step.")
    parser.add_argument("--save-steps", type=int, default=3, help="Checkpoint every N steps.")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Learning rate (constant).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model, the data and the data order.")
    parser.add_argument("--fusion", choices=("cross_attention", "none"), default="cross_attention")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CPU autocast or GPU).")
    parser.add_argument(
        "--float64", action="store_true", help="Train in float64: to compare runs whose sums run in other orders."
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Activation checkpointing.")
    args = parser.parse_args(argv)
    if args.bf16 and args.float64:
        parser.error("`--bf16` and `--float64` exclude each other: pick one precision.")
    return args


def training_args(args: argparse.Namespace, world_size: int) -> TagiTrainingArguments:
    per_step = world_size * args.gradient_accumulation_steps
    if args.global_batch_size % per_step:
        raise ValueError(f"`--global-batch-size` {args.global_batch_size} is not divisible by {per_step}.")
    return TagiTrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=args.global_batch_size // per_step,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="steps", save_steps=args.save_steps,
        seed=args.seed, data_seed=args.seed, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        lambda_kl=0.0, lambda_ins=0.0, disable_tqdm=True, dataloader_num_workers=0, ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    """Trains and returns the log history (rank 0 also writes it to `<out>/losses.json`)."""
    args = parse_args(argv)
    rows = build_rows(seed=args.seed)
    tokenizer = build_tokenizer(rows)
    model = build_model(len(tokenizer), seed=args.seed, fusion=args.fusion).train()
    if args.float64:
        model.double()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    trainer = TagiTrainer(
        model=model,
        args=training_args(args, world_size),
        train_dataset=Dataset.from_list(rows),
        data_collator=TagiDataCollator(tokenizer, teacher_inputs=False),
    )
    trainer.train()
    save_final_model(trainer, Path(args.out) / "final", tokenizer=tokenizer)  # every rank calls it; rank 0 writes
    history = trainer.state.log_history
    if trainer.is_world_process_zero():
        log = {"world_size": trainer.accelerator.num_processes, "log_history": history}
        (Path(args.out) / "losses.json").write_text(json.dumps(log, indent=1) + "\n")
    return history


if __name__ == "__main__":
    main()
