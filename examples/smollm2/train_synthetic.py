"""TAGI on a real pretrained LM: SmolLM2-135M-Instruct, frozen, on the synthetic suite.

The one pretrained LM obtainable here (`make install-smollm2`). The script trains TAGI's generator (and fusion) on a
sample of the suite's train tasks, with the student reading each instance alone, then scores, on held-out test tasks
and on unseen instances of the train tasks, three ways of using the same frozen LM:

- `in_context_zero_shot`: the instruction in the prompt, no training (what the LM does out of the box);
- `tagi`: no instruction in the prompt; an adapter generated once per task from its instruction;
- `no_adapter`: neither (the floor: what the LM does with the instance alone).

It also times the per-task and per-instance cost of each. Every stage caches its output under `--out` (a rerun
skips finished stages). Results: `--results` (JSON; machine named) and `--report` re-renders the README section
from it.

```bash
make install-smollm2
python examples/smollm2/train_synthetic.py --out runs/smollm2            # ~CPU budget: see --steps and README
python examples/smollm2/train_synthetic.py --report                      # README section from the JSON
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import time
from pathlib import Path

import torch

from tagi_hf import TagiForCausalLM
from tagi_hf.data import TagiCausalDataCollator, load_sni
from tagi_hf.data.synthetic import write_synthetic_suite
from tagi_hf.evaluation import compute_metrics, predict, prompt_ids
from tagi_hf.evaluation.instruction_modes import task_instructions
from tagi_hf.modeling.file_utils import atomic_write_text
from tagi_hf.recipes.smollm2 import load_smollm2
from tagi_hf.training import TagiTrainer, TagiTrainingArguments
from tagi_hf.training.checkpoints import save_final_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "smollm2.json"
README = ROOT / "README.md"
MARKERS = ("<!-- smollm2:start -->", "<!-- smollm2:end -->")
METHODS = ("no_adapter", "in_context_zero_shot", "tagi")


@dataclasses.dataclass
class Settings:
    train_tasks: int = 96
    instances_per_task: int = 24  # written per task; train uses `train_instances`, the rest are unseen instances
    train_instances: int = 16
    eval_test_tasks: int = 24
    eval_train_tasks: int = 24
    eval_instances: int = 4
    steps: int = 300
    batch_size: int = 8
    examples_per_task: int = 2
    learning_rate: float = 1e-3
    lambda_kl: float = 0.0
    fusion: str = "cross_attention"
    instruction_encoder: str = "backbone"
    lora_rank: int = 8
    max_new_tokens: int = 20
    seed: int = 0


# ------------------------------------------------------------------------------------------------------- stages
def build_data(out: Path, settings: Settings):
    data_dir = out / "data"
    if not (data_dir / "splits").is_dir():
        write_synthetic_suite(data_dir, seed=settings.seed, instances_per_task=settings.instances_per_task)
    data = load_sni(
        data_dir, splits=("train", "test"), max_train_instances_per_task=None, max_test_instances_per_task=None
    )
    rng = random.Random(settings.seed)
    train_tasks = sorted(set(data["train"]["task"]))
    chosen = sorted(rng.sample(train_tasks, min(settings.train_tasks, len(train_tasks))))
    by_task: dict[str, list[dict]] = {}
    for row in data["train"]:
        by_task.setdefault(row["task"], []).append(row)
    train_rows, unseen_rows = [], []
    for task in chosen:
        rows = by_task[task]
        train_rows += rows[: settings.train_instances]
        if task in chosen[: settings.eval_train_tasks]:
            unseen_rows += rows[settings.train_instances :][: settings.eval_instances]
    test_by_task: dict[str, list[dict]] = {}
    for row in data["test"]:
        test_by_task.setdefault(row["task"], []).append(row)
    test_tasks = sorted(rng.sample(sorted(test_by_task), min(settings.eval_test_tasks, len(test_by_task))))
    test_rows = [row for task in test_tasks for row in test_by_task[task][: settings.eval_instances]]
    return train_rows, {"test": test_rows, "unseen_train": unseen_rows}


def train_tagi(out: Path, settings: Settings, train_rows: list[dict]) -> Path:
    final = out / "tagi"
    if (final / "config.json").is_file():
        return final
    from datasets import Dataset

    folder, backbone_kwargs, tokenizer = load_smollm2()
    torch.manual_seed(settings.seed)
    model = TagiForCausalLM.from_backbone(
        folder,
        backbone_kwargs=backbone_kwargs,
        base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        fusion=settings.fusion,
        instruction_encoder=settings.instruction_encoder,
        lora_rank=settings.lora_rank,
        lora_alpha=2.0 * settings.lora_rank,
    )
    tokenizer.padding_side = "right"
    args = TagiTrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lambda_kl=settings.lambda_kl,
        lambda_ins=0.0,
        examples_per_task=settings.examples_per_task,
        save_strategy="steps",
        save_steps=max(1, settings.steps // 4),
        save_total_limit=1,
        logging_steps=max(1, settings.steps // 20),
        seed=settings.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = TagiTrainer(
        model=model,
        args=args,
        teacher_model=model.backbone if settings.lambda_kl > 0 else None,  # the same LM, instruction in context
        train_dataset=Dataset.from_list(train_rows),
        data_collator=TagiCausalDataCollator(
            tokenizer, teacher_inputs=settings.lambda_kl > 0, max_input_length=96, max_target_length=32
        ),
    )
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    save_final_model(trainer, final)
    cost = {"seconds": time.time() - started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    atomic_write_text(final / "train_seconds.json", json.dumps(cost))
    return final


# How each method reads a task: (`predict`'s model kind, instruction mode). The plain rows run the frozen LM itself.
METHOD_MODES = {
    "no_adapter": ("causal_lm", "empty"),  # the instance alone
    "in_context_zero_shot": ("causal_lm", "own"),  # the instruction ("Def") in the prompt
    "tagi": ("tagi", "own"),  # the instance alone, with the adapter generated from the instruction
}
MAX_SOURCE_LENGTH = 96  # tokens kept of an instance input


@torch.no_grad()
def evaluate(method: str, rows: list[dict], tokenizer, model, max_new_tokens: int = 20, batch_size: int = 8) -> dict:
    """Greedy generation for `rows` with one of METHODS, decoded by `evaluation.runner.predict` (the package's one
    decoding path); returns metrics, timings and a few examples. TAGI's adapters are generated here, once per task,
    to time that step apart (`seconds_per_task_once`), and handed to `predict`."""
    kind, mode = METHOD_MODES[method]
    instructions = task_instructions(rows, instruction_mode=mode)
    adapters, per_task_seconds, started = None, 0.0, time.time()
    if kind == "tagi":
        tasks = list(instructions)
        adapters = dict(zip(tasks, model.generate_adapter([instructions[t] for t in tasks], tokenizer=tokenizer)))
        per_task_seconds = (time.time() - started) / len(tasks)
    records = predict(
        model if kind == "tagi" else model.backbone,
        tokenizer,
        rows,
        kind=kind,
        instruction_mode=mode,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_source_length=MAX_SOURCE_LENGTH,
        adapters=adapters,
        generate_kwargs={"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id},
        show_progress=False,
    )
    seconds = time.time() - started
    prompt_tokens = sum(  # what `predict` fed: TAGI reads its instruction through the adapter, not the prompt
        len(
            prompt_ids(
                tokenizer,
                "" if kind == "tagi" else instructions[r["task"]],
                r["input"],
                max_source_length=MAX_SOURCE_LENGTH,
            )
        )
        for r in rows
    )
    predictions = [record["prediction"] for record in records]
    metrics = compute_metrics(predictions, [r["outputs"] for r in rows], [r["task"] for r in rows])
    return {
        "rougeL": metrics["rougeL"],
        "exact_match": metrics["exact_match"],
        "n": len(rows),
        "num_tasks": len(instructions),
        "seconds_per_instance": (seconds - per_task_seconds * len(instructions)) / len(rows),
        "seconds_per_task_once": per_task_seconds,
        "prompt_tokens_per_instance": prompt_tokens / len(rows),
        "examples": [
            {"task": r["task"], "input": r["input"], "expected": r["outputs"][0], "prediction": p}
            for r, p in list(zip(rows, predictions))[:5]
        ],
    }


# ------------------------------------------------------------------------------------------------------- report
def render(results: dict) -> str:
    rate = results["settings"]["learning_rate"]
    lines = [
        f"Measured by `python examples/smollm2/train_synthetic.py --learning-rate {rate:g}` "
        f"on {results['machine'].replace('1 threads', '1 torch thread')} "
        f"({results['settings']['steps']} steps, batch {results['settings']['batch_size']}, "
        f"{results['settings']['train_tasks']} train tasks x {results['settings']['train_instances']} instances, "
        f"fusion `{results['settings']['fusion']}`, instruction read by the frozen LM, "
        f"λ_kl {results['settings']['lambda_kl']}; training took {results['train_seconds'] / 60:.1f} min, "
        f"finished {results.get('train_finished') or 'on a date not recorded'}). "
        "SmolLM2-135M-Instruct stays frozen in every row; scores are exact match / ROUGE-L (%).",
        "",
        "| method | held-out test tasks (EM / RL) | unseen train-task instances (EM / RL) | prompt tokens / instance "
        "| per-instance s | per-task s (once) |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        test, fit = results["test"][method], results["unseen_train"][method]
        lines.append(
            f"| `{method}` | {test['exact_match']:.1f} / {test['rougeL']:.1f} | {fit['exact_match']:.1f} / "
            f"{fit['rougeL']:.1f} | {test['prompt_tokens_per_instance']:.0f} | {test['seconds_per_instance']:.3f} "
            f"| {test['seconds_per_task_once']:.3f} |"
        )
    return "\n".join(lines)


def write_readme_section(results: dict) -> None:
    text = README.read_text(encoding="utf-8")
    start, end = (text.index(marker) for marker in MARKERS)
    new = text[: start + len(MARKERS[0])] + "\n" + render(results) + "\n" + text[end:]
    atomic_write_text(README, new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/smollm2")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--report", action="store_true", help="Only re-render the README section from --results.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--no-readme", action="store_true", help="Do not update the README section (smoke runs).")
    for field in dataclasses.fields(Settings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    if args.report:
        write_readme_section(json.loads(Path(args.results).read_text()))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_rows, eval_rows = build_data(out, settings)
    final = train_tagi(out, settings, train_rows)
    folder, backbone_kwargs, tokenizer = load_smollm2()
    model = TagiForCausalLM.from_pretrained(final).eval()
    results = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "settings": dataclasses.asdict(settings),
        "train_seconds": json.loads((final / "train_seconds.json").read_text())["seconds"],
        "train_finished": json.loads((final / "train_seconds.json").read_text()).get("finished"),
        "training_log": [e for e in json.loads((final / "training_log.json").read_text()) if "loss" in e],
    }
    for split, rows in eval_rows.items():
        results[split] = {}
        for method in METHODS:
            cache = out / f"eval-{split}-{method}.json"
            if not cache.is_file():
                scored = evaluate(
                    method,
                    rows,
                    tokenizer,
                    model,
                    max_new_tokens=settings.max_new_tokens,
                    batch_size=settings.batch_size,
                )
                cache.write_text(json.dumps(scored, indent=1))
            results[split][method] = json.loads(cache.read_text())
            print(split, method, {k: results[split][method][k] for k in ("exact_match", "rougeL", "n")}, flush=True)
    atomic_write_text(args.results, json.dumps(results, indent=1) + "\n")
    if not args.no_readme:
        write_readme_section(results)


if __name__ == "__main__":
    main()
