"""Probes of the adapter generator (issue 12): does a change make TAGI fit its train tasks better, generalise better
to the dev tasks, and depend more on the instruction?

Every probe trains stage 2 on the benchmark's built stages (`quality.py` BENCHMARK_SETTINGS under `--recipe-out`:
stand-in backbone, in-context FT as logit teacher, LoRA teachers, stage 1) with one generator setting, then scores:
- `fit`: the selection rows (`SyntheticRecipe.fit_rows("selection")`): unseen instances of a seeded sample of train
  tasks, disjoint from the fit rows the benchmark reports (own instruction, and another task's: `fit_shuffled`);
- `dev`: the dev tasks (whole tasks held out of meta-training; where settings are chosen), own and shuffled.
The test split is never looked at here. New generator parts start from the stage-1 model: the separate instruction
encoder as a copy of the backbone's encoder, the attention-pooling queries at zero (= the masked mean).

    python benchmarks/probes/generator.py --name g1 --steps 1000 --threads 1 \
        --set instruction_encoder=separate instruction_pooling=attention --args instruction_encoder_learning_rate=3e-4

One JSON line per probe is appended to `--log` (default `benchmarks/results/probes/generator.jsonl`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import T5ForConditionalGeneration

from tagi_hf.data import TagiDataCollator
from tagi_hf.modeling.modeling_tagi import TagiModel
from tagi_hf.recipes.synthetic import DemoSettings, SyntheticRecipe, _stage_args
from tagi_hf.teachers import TeacherBank
from tagi_hf.training.run import train_tagi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import BENCHMARK_SETTINGS  # noqa: E402


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _pairs(items: list[str]) -> dict:
    return {k: _value(v) for k, _, v in (item.partition("=") for item in items)}


def _short(m: dict) -> dict:
    keep = {k: round(m[k], 1) for k in ("rougeL", "exact_match") if k in m}
    return keep | {"ran_to_limit": m.get("ran_to_limit", 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--recipe-out", default="runs/benchmark")
    p.add_argument("--work", default="/tmp/p")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=None, help="stage-2 learning rate (default: the settings')")
    p.add_argument("--set", nargs="*", default=[], help="TagiConfig fields (KEY=VALUE)")
    p.add_argument("--args", nargs="*", default=[], help="TagiTrainingArguments fields (KEY=VALUE)")
    p.add_argument("--no-stage1", action="store_true", help="start from a fresh generator")
    p.add_argument("--fit-tasks", type=int, default=60)
    p.add_argument("--per-task", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--log", default="benchmarks/results/probes/generator.jsonl")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    s = DemoSettings(out=a.recipe_out, **BENCHMARK_SETTINGS)
    if a.lr is not None:
        s = dataclasses.replace(s, learning_rate=a.lr)
    recipe = SyntheticRecipe(s)  # built with the benchmark's rows, so the selection rows follow its fit rows
    s = recipe.s = dataclasses.replace(s, eval_instances_per_task=a.per_task, fit_tasks=a.fit_tasks)
    config, args = _pairs(a.set), _pairs(a.args)
    out, start = Path(a.work) / a.name, time.time()
    if not (out / "config.json").exists():
        r = s.lora_rank
        if a.no_stage1:
            model = TagiModel.from_backbone(str(recipe.backbone()), lora_rank=r, lora_alpha=2 * r, **config)
        else:
            model = TagiModel.from_pretrained(recipe.stage1(s.fusion), **config)
        kl, ins = args.pop("lambda_kl", s.lambda_kl), args.pop("lambda_ins", s.lambda_ins)
        train_args = _stage_args(s, Path(a.work) / f".work-{a.name}", a.steps, lambda_kl=kl, lambda_ins=ins, **args)
        train_tagi(
            model, recipe.tokenizer, recipe.train, out, train_args,
            data_collator=TagiDataCollator(recipe.tokenizer, setting="def"),
            teacher_model=T5ForConditionalGeneration.from_pretrained(recipe.baseline()) if kl > 0 else None,
            teacher_bank=TeacherBank.from_directory(recipe.teachers()) if ins > 0 else None,
        )  # fmt: skip
    train_seconds = time.time() - start
    log = json.loads((out / "training_log.json").read_text())
    losses = [e for e in log if "loss_pred" in e]
    result = {
        "name": a.name, "steps": a.steps, "lr": s.learning_rate, "config": config, "args": args, "note": a.note,
        "stage1": not a.no_stage1, "train_seconds": round(train_seconds, 1),
        "first_logged": {k: round(v, 3) for k, v in losses[0].items() if k.startswith("loss")},
        "last_logged": {k: round(v, 3) for k, v in losses[-1].items() if k.startswith("loss")},
    }  # fmt: skip
    recipe.out = Path(a.work) / f"eval-{a.name}"  # evaluation files of the probe go beside it, not into the recipe
    (recipe.out / "eval").mkdir(parents=True, exist_ok=True)
    for mode in ("own", "shuffled"):
        suffix = "" if mode == "own" else "_shuffled"
        result["fit" + suffix] = _short(recipe.evaluate_fit(out, instruction_mode=mode, sample="selection"))
        result["dev" + suffix] = _short(recipe.evaluate(out, split="dev", instruction_mode=mode))
    result["seconds"] = round(time.time() - start, 1)
    result["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    result["commit"] = result["commit"].strip()
    print(json.dumps(result))
    with open(a.log, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
