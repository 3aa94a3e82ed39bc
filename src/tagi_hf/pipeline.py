"""The whole TAGI recipe as functions: stage 1, stage 2, and the synthetic-suite demo that chains every stage.

Each stage writes its result directory atomically; a directory that exists is complete, so re-running a pipeline
skips finished stages (resume) and `overwrite=True` starts over.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5ForConditionalGeneration
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .data import TagiDataCollator, load_sni, synthetic_corpus, train_tokenizer, write_synthetic_suite
from .modeling_tagi import TagiModel
from .pretraining import PretrainingCollator
from .trainer import TagiTrainer
from .training_args import TagiTrainingArguments
from .utils import atomic_directory, atomic_write_text

logger = logging.get_logger(__name__)


def train_tagi(
    model: TagiModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | Path,
    args: TagiTrainingArguments,
    *,
    data_collator: Callable | None = None,
    teacher_model: T5ForConditionalGeneration | None = None,
    teacher_bank=None,
) -> Path:
    """Runs [`TagiTrainer`] (resuming from the last checkpoint in `args.output_dir`) and saves the final model and
    tokenizer atomically to `output_dir`. Stage 1 passes a [`PretrainingCollator`] and zero distillation weights."""
    model.train()
    trainer = TagiTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        teacher_model=teacher_model,
        teacher_bank=teacher_bank,
        data_collator=data_collator or TagiDataCollator(tokenizer),
    )
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return Path(output_dir)


@dataclass
class DemoSettings:
    """Quick settings of `tagi-hf demo` (minutes on 2 CPU cores). Every number here is a knob, not a result."""

    out: str = "runs/demo"
    seed: int = 0
    instances_per_task: int = 60
    eval_instances_per_task: int = 20
    vocab_size: int = 600
    d_model: int = 96
    num_layers: int = 2
    backbone_steps: int = 1200
    baseline_steps: int = 500
    teacher_steps: int = 400  # optimiser steps of the joint run that trains every task's teacher
    stage1_steps: int = 150
    stage2_steps: int = 600
    batch_size: int = 32
    lora_rank: int = 8
    fusion: str = "cross_attention"
    lambda_kl: float = 1.0
    lambda_ins: float = 0.1
    kl_temperature: float = 1.0
    learning_rate: float = 1e-3
    overwrite: bool = False


def _stage(path: Path, build: Callable[[Path], object]) -> Path:
    if path.exists():
        logger.warning(f"Stage output {path} exists: skipping (pass overwrite to redo).")
        return path
    build(path)
    return path


def _stage_args(s: DemoSettings, work: Path, steps: int, **kwargs) -> TagiTrainingArguments:
    return TagiTrainingArguments(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        warmup_steps=max(1, steps // 50),
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 10),
        save_strategy="steps",
        save_steps=max(1, steps // 4),
        save_total_limit=1,
        seed=s.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        kl_temperature=s.kl_temperature,
        **kwargs,
    )


def run_demo(s: DemoSettings) -> dict:
    """synth -> tokenizer -> stand-in backbone -> baseline (logit teacher) -> LoRA teachers -> stage 1 -> stage 2 ->
    evaluation on held-out tasks -> an adapter for a new instruction, saved, reloaded and run."""
    from .predict import evaluate_model
    from .standin import pretrain_standin, standin_config
    from .teachers import TeacherBank, train_multitask_baseline
    from .teachers_joint import train_lora_teachers_jointly

    out = Path(s.out)
    if s.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = _stage(
        out / "data", lambda p: write_synthetic_suite(p, seed=s.seed, instances_per_task=s.instances_per_task)
    )
    data = load_sni(data_dir, max_train_instances_per_task=s.instances_per_task, seed=s.seed, splits=("train",))
    corpus = synthetic_corpus(s.seed, 20000)
    tok_dir = _stage(out / "tokenizer", lambda p: _save_tokenizer(p, data["train"], corpus, s.vocab_size))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = standin_config(len(tokenizer), d_model=s.d_model, num_layers=s.num_layers)
    backbone = _stage(
        out / "backbone",
        lambda p: pretrain_standin(
            corpus, tokenizer, p, config=config, max_steps=s.backbone_steps, batch_size=s.batch_size, seed=s.seed
        ),
    )
    baseline = _stage(
        out / "baseline",
        lambda p: train_multitask_baseline(
            str(backbone),
            tokenizer,
            data["train"],
            p,
            max_steps=s.baseline_steps,
            learning_rate=s.learning_rate,
            per_device_train_batch_size=s.batch_size,
            seed=s.seed,
        ),
    )
    teachers = _stage(
        out / "teachers",
        lambda p: train_lora_teachers_jointly(  # 323 small tasks: one run for all (see teachers_joint.py)
            str(backbone),
            tokenizer,
            data["train"],
            p,
            rank=s.lora_rank,
            max_steps=s.teacher_steps,
            learning_rate=5e-3,
            batch_size=s.batch_size,
            seed=s.seed,
        ),
    )
    stage1 = _stage(
        out / "tagi-stage1",
        lambda p: train_tagi(
            TagiModel.from_backbone(str(backbone), lora_rank=s.lora_rank, lora_alpha=2 * s.lora_rank, fusion=s.fusion),
            tokenizer,
            Dataset.from_dict({"text": corpus}),
            p,
            _stage_args(s, out / ".work-stage1", s.stage1_steps, lambda_kl=0.0, lambda_ins=0.0),
            data_collator=PretrainingCollator(tokenizer, min_segment_length=3, seed=s.seed),
        ),
    )
    tagi = _stage(
        out / "tagi",
        lambda p: train_tagi(
            TagiModel.from_pretrained(stage1),
            tokenizer,
            data["train"],
            p,
            _stage_args(s, out / ".work-stage2", s.stage2_steps, lambda_kl=s.lambda_kl, lambda_ins=s.lambda_ins),
            teacher_model=T5ForConditionalGeneration.from_pretrained(baseline),
            teacher_bank=TeacherBank.from_directory(teachers) if s.lambda_ins > 0 else None,
        ),
    )
    results = {}
    for name, path in (("baseline (instruction in context)", baseline), ("TAGI", tagi)):
        results[name] = evaluate_model(
            str(path),
            str(data_dir),
            split="test",
            setting="def",
            max_instances_per_task=s.eval_instances_per_task,
            batch_size=64,
            max_new_tokens=32,
            output=str(out / f"metrics-{path.name}.json"),
        )
    summary = {"settings": asdict(s), "results": {k: _headline(v) for k, v in results.items()}}
    summary["adapter_demo"] = _adapter_demo(tagi, out / "adapter-demo")
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _save_tokenizer(path: Path, train: Dataset, corpus: list[str], vocab_size: int) -> None:
    texts = [*corpus, *train["definition"], *train["input"], *(o for outs in train["outputs"] for o in outs)]
    with atomic_directory(path) as tmp:
        train_tokenizer(texts, vocab_size=vocab_size).save_pretrained(tmp)


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("rougeL", "exact_match", "exact_match_strict", "n")}


DEMO_INSTRUCTION = (
    "In this task you are given a list of words separated by spaces. Reverse the order of the words. "
    "Then write every word in capital letters."
)  # a held-out chain (reverse>upper): never seen in training
DEMO_INPUTS = ("apple bird boat", "cat dog sun moon", "owl rose gold kite drum")


def _adapter_demo(model_dir: Path, adapter_dir: Path) -> dict:
    """Generates an adapter for an instruction outside the train split, saves it, reloads it and runs it."""
    from .adapter import GeneratedAdapter
    from .data.prompts import format_instruction, format_student_input
    from .data.synthetic import chain_output

    model = TagiModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.generate_adapter(format_instruction(DEMO_INSTRUCTION), tokenizer=tokenizer).save_pretrained(adapter_dir)
    adapter = GeneratedAdapter.from_pretrained(adapter_dir)
    enc = tokenizer([format_student_input(x) for x in DEMO_INPUTS], padding=True, return_tensors="pt")
    ids = model.generate(**enc, adapter=adapter, max_new_tokens=24)
    outputs = tokenizer.batch_decode(ids, skip_special_tokens=True)
    expected = [chain_output(["reverse", "upper"], x) for x in DEMO_INPUTS]
    rows = [{"input": i, "output": o.strip(), "expected": e} for i, o, e in zip(DEMO_INPUTS, outputs, expected)]
    return {"instruction": DEMO_INSTRUCTION, "adapter_dir": str(adapter_dir), "examples": rows}


def format_demo_table(summary: dict) -> str:
    """The demo's results as a Markdown table (ROUGE-L, EM, strict EM on the held-out test tasks)."""
    lines = ["| method | ROUGE-L | EM | strict EM | n |", "|---|---|---|---|---|"]
    for name, m in summary["results"].items():
        lines.append(
            f"| {name} | {m['rougeL']:.1f} | {m['exact_match']:.1f} | {m['exact_match_strict']:.1f} | {m['n']} |"
        )
    demo = summary["adapter_demo"]
    lines += ["", f"Generated adapter for an unseen instruction: {demo['instruction']}"]
    lines += [f"  {r['input']!r} -> {r['output']!r} (expected {r['expected']!r})" for r in demo["examples"]]
    return "\n".join(lines)
