"""Small probes of the synthetic testbed's capacity (issue 11): how fast does a small T5 fit the suite's train tasks?

Each probe trains one stage with the library's own functions and scores exact match on *unseen* instances of train
tasks (instances of the same tasks never trained on), overall and per operation, for a fixed seeded sample of tasks.

    python benchmarks/probes/testbed.py standin  --out /tmp/p/s1 --instances 500 --steps 6000 ...
    python benchmarks/probes/testbed.py baseline --init /tmp/p/s1 --out /tmp/p/b1 --steps 1000 ...
    python benchmarks/probes/testbed.py teachers --init /tmp/p/s1 --out /tmp/p/t1 --steps 2000 ...

One JSON line per probe is appended to `--log` (default `benchmarks/results/probes/testbed.jsonl`).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from tagi_hf.data import load_sni, synthetic_corpus, write_synthetic_suite
from tagi_hf.data.prompts import format_student_input
from tagi_hf.evaluation.fit import predict_with_teachers, summarise_predictions, unseen_train_rows
from tagi_hf.evaluation.runner import predict
from tagi_hf.recipes.standin import instance_texts, pretrain_standin, standin_config
from tagi_hf.recipes.synthetic import DemoSettings, demo_corpus, train_demo_tokenizer
from tagi_hf.teachers import TeacherBank

HELD = 20  # instances per task beyond the training ones, never trained on


def suite(path: Path, instances: int, seed: int = 0):
    if not (path / "splits").exists():
        write_synthetic_suite(path, seed=seed, instances_per_task=instances + HELD)
    return load_sni(path, max_train_instances_per_task=instances, seed=seed, splits=("train",))["train"]


def eval_t5(model, tokenizer, rows, student: bool = False, max_new_tokens: int = 32) -> dict:
    """In context (definition + input, Tk-Instruct format) or, with `student`, the input alone."""
    model.eval()
    if student:
        records = []
        for start in range(0, len(rows), 128):
            chunk = rows[start : start + 128]
            enc = tokenizer([format_student_input(r["input"]) for r in chunk], padding=True, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            records += [{"category": r["category"], "prediction": t.strip(), "references": r["outputs"]}
                        for r, t in zip(chunk, texts)]  # fmt: skip
    else:
        records = predict(model, tokenizer, rows, kind="t5", batch_size=64, max_new_tokens=max_new_tokens,
                          show_progress=False)  # fmt: skip
    return _short(summarise_predictions(records, tokenizer, max_new_tokens))


def _short(m: dict) -> dict:
    m = {k: round(v, 1) if isinstance(v, float) else v for k, v in m.items()}
    m["by_operation"] = {op: round(v["exact_match"], 1) for op, v in m["by_operation"].items()}
    return m


def standin_texts(train, seed: int, def_fraction: float, random_texts: int) -> list[str]:
    """The recipe's stand-in texts (`instance_texts`), plus `random_texts` random word lists."""
    texts = instance_texts(train, seed, definition_fraction=def_fraction)
    return texts + synthetic_corpus(seed, random_texts, instance_fraction=0.0)


def probe_config(a: argparse.Namespace, vocab_size: int):
    """The stand-in's architecture, with the probe's FFN kind and width."""
    config = standin_config(vocab_size, d_model=a.d_model, num_layers=a.layers, num_heads=a.heads)
    config.d_ff = a.d_ff or config.d_ff
    config.feed_forward_proj = a.ffn
    config.is_gated_act, config.dense_act_fn = a.ffn == "gated-gelu", "gelu_new" if a.ffn == "gated-gelu" else "relu"
    return config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["standin", "baseline", "teachers", "eval"])
    p.add_argument("--out", required=True)
    p.add_argument("--init", help="model folder to start from (baseline, teachers, eval); `scratch`: random weights")
    p.add_argument("--ffn", choices=["gated-gelu", "relu"], default="gated-gelu", help="standin / scratch FFN kind")
    p.add_argument("--d-ff", type=int, default=0, help="standin / scratch FFN width (0: the stand-in's 2 x d_model)")
    p.add_argument("--work", default="/tmp/p")
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--def-fraction", type=float, default=1.0, help="standin: share of texts with the definition")
    p.add_argument("--boundary", type=float, default=0.9, help="standin: texts split at the output")
    p.add_argument("--random-texts", type=int, default=4000)
    p.add_argument("--save-every", type=int, default=0, help="baseline: keep a checkpoint every this many steps")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--eval-tasks", type=int, default=80)
    p.add_argument("--eval-per-task", type=int, default=8)
    p.add_argument("--only-eval-tasks", action="store_true", help="train on the scored tasks only (fewer, longer)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--log", default="benchmarks/results/probes/testbed.jsonl")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work)
    train = suite(work / f"suite-{a.instances}", a.instances)
    tok_dir = work / "tokenizer"
    if not tok_dir.exists():
        small = load_sni(work / f"suite-{a.instances}", max_train_instances_per_task=60, seed=0, splits=("train",))
        train_demo_tokenizer(small["train"], demo_corpus(DemoSettings()), 600).save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    rows = unseen_train_rows(work / f"suite-{a.instances}", max_train_instances_per_task=a.instances, seed=0,
                             per_task=a.eval_per_task, num_tasks=a.eval_tasks)  # fmt: skip
    if a.only_eval_tasks:
        scored = {row["task"] for row in rows}
        train = train.filter(lambda row: row["task"] in scored)
    out = Path(a.out)
    start = time.time()
    result: dict = {}
    if a.stage == "standin":
        torch.manual_seed(0)
        config = probe_config(a, len(tokenizer))
        texts = standin_texts(train, 0, a.def_fraction, a.random_texts)
        pretrain_standin(texts, tokenizer, out, config=config, max_steps=a.steps, batch_size=a.batch,
                         learning_rate=a.lr, boundary_probability=a.boundary)  # fmt: skip
        model = T5ForConditionalGeneration.from_pretrained(out)
        result["params"] = sum(p.numel() for p in model.parameters())
    elif a.stage == "baseline":
        from tagi_hf.teachers.baseline import train_multitask_baseline

        schedule = dict(lr_scheduler_type="cosine", warmup_steps=a.steps // 20)
        if a.save_every:  # kept beside `out` (the work folder goes at the end); score them with `eval`
            schedule.update(output_dir=str(out.parent / f"{out.name}-checkpoints"), save_strategy="steps",
                            save_steps=a.save_every, save_total_limit=None, save_only_model=True)  # fmt: skip
        if a.init == "scratch":  # random weights of the probe's architecture, saved for the trainer to load
            torch.manual_seed(0)
            a.init = str(out.parent / f".{out.name}-init")
            T5ForConditionalGeneration(probe_config(a, len(tokenizer))).save_pretrained(a.init)
            tokenizer.save_pretrained(a.init)
        train_multitask_baseline(a.init, tokenizer, train, out, max_steps=a.steps, learning_rate=a.lr,
                                 per_device_train_batch_size=a.batch, seed=0, training_kwargs=schedule)  # fmt: skip
        model = T5ForConditionalGeneration.from_pretrained(out)
    elif a.stage == "teachers":
        from tagi_hf.teachers.joint import train_lora_teachers_jointly

        train_lora_teachers_jointly(a.init, tokenizer, train, out, rank=a.rank, max_steps=a.steps,
                                    learning_rate=a.lr, batch_size=a.batch, seed=0)  # fmt: skip
        model = None
    else:
        model = T5ForConditionalGeneration.from_pretrained(a.init)
    result["train_seconds"] = round(time.time() - start, 1)
    if model is not None:
        result["incontext_unseen"] = eval_t5(model, tokenizer, rows)
        result["student_unseen"] = eval_t5(model, tokenizer, rows, student=True)
    else:
        base = T5ForConditionalGeneration.from_pretrained(a.init)
        records = predict_with_teachers(base, TeacherBank.from_directory(out), tokenizer, rows)
        result["teachers_unseen"] = _short(summarise_predictions(records, tokenizer, 32))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    entry = {"stage": a.stage, "args": {k: v for k, v in vars(a).items() if k not in ("log",)}, **result,
             "seconds": round(time.time() - start, 1), "threads": torch.get_num_threads(),
             "machine": f"{platform.machine()} {platform.processor()}", "commit": commit}  # fmt: skip
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    with open(a.log, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
