"""How much of the logit teacher's distribution a top-k cache keeps, and what the lumped tail does to L_kl.

    python benchmarks/probes/teacher_topk.py [--out runs/benchmark] [--rows 512] [--student runs/benchmark/tagi]

On training rows of the benchmark's synthetic suite (the recipe's tokenizer and data under `--out`), with the
benchmark's in-context teacher (`baseline`, "Def") and a trained TAGI model as the student: per k, the teacher's
probability mass beyond its top k (mean and max over label tokens) and the relative difference between the top-k
L_kl ([`sparse_distillation_kl_loss`]) and the exact L_kl. Appends one JSON line per k to
`benchmarks/results/probes/teacher_topk.jsonl`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch
from transformers import T5ForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import BENCHMARK_SETTINGS  # noqa: E402

from tagi_hf import TagiModel  # noqa: E402
from tagi_hf.data import TagiDataCollator  # noqa: E402
from tagi_hf.recipes.synthetic import DemoSettings, SyntheticRecipe  # noqa: E402
from tagi_hf.training.losses import SparseTeacher, distillation_kl_loss, sparse_distillation_kl_loss  # noqa: E402

LOG = Path(__file__).resolve().parents[1] / "results" / "probes" / "teacher_topk.jsonl"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--student", default="runs/benchmark/tagi")
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    args = parser.parse_args()
    settings = dataclasses.replace(DemoSettings(out=args.out, **BENCHMARK_SETTINGS))
    recipe = SyntheticRecipe(settings)
    teacher = T5ForConditionalGeneration.from_pretrained(Path(args.out) / "baseline").eval()
    student = TagiModel.from_pretrained(args.student).eval()
    collator = TagiDataCollator(recipe.tokenizer, setting="def")
    rows = recipe.train.shuffle(seed=0).select(range(args.rows))
    stats = {k: {"tail": [], "sparse": 0.0} for k in args.ks}
    full_total, tokens = 0.0, 0
    for start in range(0, len(rows), 64):
        batch = collator([rows[i] for i in range(start, min(start + 64, len(rows)))])
        labels = batch["labels"]
        t_logits = teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"], labels=labels
        ).logits
        s_logits = student(**{k: v for k, v in batch.items() if k in STUDENT_KEYS}).logits
        n = int((labels != -100).sum())
        full_total += float(distillation_kl_loss(s_logits, t_logits, labels)) * n
        tokens += n
        probs = t_logits.softmax(-1)
        for k in args.ks:
            values, ids = t_logits.topk(k, dim=-1)
            teacher_k = SparseTeacher(ids, values, t_logits.logsumexp(-1))
            stats[k]["sparse"] += float(sparse_distillation_kl_loss(s_logits, teacher_k, labels)) * n
            tail = 1 - probs.gather(-1, ids).sum(-1)
            stats[k]["tail"].append(tail[labels != -100])
    full = full_total / tokens
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as log:
        for k, st in stats.items():
            tail = torch.cat(st["tail"])
            sparse = st["sparse"] / tokens
            row = {
                "k": k, "rows": args.rows, "label_tokens": tokens, "vocab": t_logits.shape[-1],
                "teacher_tail_mass_mean": float(tail.mean()), "teacher_tail_mass_max": float(tail.max()),
                "kl_full": full, "kl_topk": sparse, "kl_relative_difference": (full - sparse) / full,
                "student": args.student, "machine": platform.processor() or platform.machine(),
            }  # fmt: skip
            print(json.dumps(row))
            log.write(json.dumps(row) + "\n")


STUDENT_KEYS = ("input_ids", "attention_mask", "labels", "instruction_input_ids", "instruction_attention_mask")

if __name__ == "__main__":
    main()
