"""Cost of TAGI against the instruction-in-context T5 (issue 4, "Cost"): FLOPs and wall time per task of 100
instances, adapter-generation throughput, and training step time / peak memory, at two kinds of shape.

    python benchmarks/cost.py [--quick] [--out benchmarks/results/cost.json] [--shapes NAME ...] [--device cpu|cuda]

Writes the raw numbers (machine, versions, seed, shapes, batch sizes, git commit) as JSON, after each shape, and prints
the Markdown tables of `cost_report.py`. Shapes and models: `cost_setup.py`; inference: `cost_inference.py`;
training: `cost_training.py`.

Repeats, chosen so the T5-base-sized shape stays affordable on a 2-core CPU (all recorded in the JSON):
- synthetic shapes (and every shape on CUDA): wall time = median of 5 round-robin repeats of a full task (quick: 3),
  after a warm-up (per-task work + one batch) per method; training: median of 5 steps after a warm-up step (quick 3);
- `sni-base-def2pos` on CPU: one timed task of 100 instances per method (quick: one batch of 25, extrapolated to
  100 and flagged), after a warm-up on 2 instances; training at batch 4 (quick 2), median of 2 steps (quick 1).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules when run as a script or imported

import cost_inference as inference  # noqa: E402
import cost_training as training  # noqa: E402
from cost_report import render_markdown  # noqa: E402
from cost_setup import (  # noqa: E402
    Shape,
    build_models,
    measure_synthetic_lengths,
    sni_base_shape,
    synthetic_shapes,
    task_inputs,  # noqa: E402
)

SHAPES = ("synthetic-def", "synthetic-def2pos", "sni-base-def2pos")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cost.json"


def run_settings(shape: Shape, *, quick: bool, device: str) -> dict:
    """Repeats and batch sizes of one shape (see the module docstring)."""
    cheap = shape.name.startswith("synthetic") or device.startswith("cuda")
    if cheap:
        return {
            "timing_repeats": 3 if quick else 5,
            "timed_instances": shape.instances_per_task,
            "warmup_instances": shape.inference_batch_size,
            "check_flops_linearity": True,
            "throughput_single": 16 if quick else 64,
            "throughput_repeats": 2 if quick else 3,
            "train_batch_size": shape.train_batch_size,
            "train_steps": 3 if quick else 5,
        }
    return {
        "timing_repeats": 1,
        "timed_instances": shape.inference_batch_size if quick else shape.instances_per_task,
        "warmup_instances": 2,
        "check_flops_linearity": not quick,
        "throughput_single": 4 if quick else 8,
        "throughput_repeats": 1,
        "train_batch_size": 2 if quick else 4,
        "train_steps": 1 if quick else 2,
    }


def _log(message: str) -> None:
    print(f"[cost {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_shape(shape: Shape, settings: dict, *, seed: int, device: str, threads: int) -> dict:
    start = time.perf_counter()
    load_start = os.getloadavg()
    models = build_models(shape, seed, device)
    inputs = task_inputs(shape, seed).to(device)
    methods = inference.build_methods(models, shape)
    n = shape.instances_per_task
    _log(f"{shape.name}: checks and FLOPs")
    checks = inference.equivalence_checks(models, methods, inputs, shape)
    flops = {
        name: inference.method_flops(m, inputs, n, check_linearity=settings["check_flops_linearity"])
        for name, m in methods.items()
    }
    instruction_pass = inference.instruction_encoder_flops(models, inputs)
    _log(f"{shape.name}: wall time")
    wall = inference.time_methods(
        methods,
        inputs,
        shape,
        repeats=settings["timing_repeats"],
        timed_instances=settings["timed_instances"],
        warmup_instances=settings["warmup_instances"],
        device=device,
    )
    _log(f"{shape.name}: adapter generation throughput")
    throughput = inference.adapter_throughput(
        models.tagi,
        shape,
        seed,
        single=settings["throughput_single"],
        batched=64,
        repeats=settings["throughput_repeats"],
        device=device,
    )
    del models, methods, inputs
    gc.collect()
    _log(f"{shape.name}: training steps")
    train = training.training_costs(
        shape,
        batch_size=settings["train_batch_size"],
        steps=settings["train_steps"],
        threads=threads,
        seed=seed,
        device=device,
    )
    result = {
        "shape": shape.to_dict(),
        "settings": settings,
        "checks": checks,
        "flops": flops,
        "instruction_encoder_pass_flops": instruction_pass,
        "wall_time": wall,
        "adapter_throughput": throughput,
        "training": train,
        "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
        "seconds": time.perf_counter() - start,
    }
    result["goals"] = goals(result)
    return result


def goals(result: dict) -> dict:
    """The issue's goals (stated for the SNI shape), computed for every shape."""
    flops, n = result["flops"], result["shape"]["instances_per_task"]
    in_context, floor = flops["in_context"]["per_task"], flops["floor"]["per_task"]
    least = floor + result["instruction_encoder_pass_flops"]  # floor + one encoder pass over the instruction
    train = result["training"]
    ft = train["multitask_ft"]["step_s"]
    speedup = result["adapter_throughput"]["speedup_per_adapter"]
    fusion = flops["tagi_fusion_api"]["per_task"] / in_context  # through the calls a user makes
    no_fusion = flops["tagi_no_fusion_api"]["per_task"] / least
    stage2 = train["tagi_stage2_encoder_cached"]["step_s"] / ft  # the default generator, teacher logits cached
    wall = result["wall_time"]
    wall_ratio = wall["tagi_fusion_api"]["task_s"] / wall["in_context"]["task_s"]
    return {
        "fusion_flops_vs_in_context": {
            "value": fusion,
            "task_state": flops["tagi_fusion"]["per_task"] / in_context,
            "merged": flops["tagi_fusion_merged"]["per_task"] / in_context,
            "floor": floor / in_context,
            "paper": 0.39,
            "target": "<= 0.35",
            "met": fusion <= 0.35,
        },
        "no_fusion_flops_vs_floor_plus_instruction_pass": {
            "value": no_fusion,
            "task_state": flops["tagi_no_fusion"]["per_task"] / least,
            "merged": flops["tagi_no_fusion_merged"]["per_task"] / least,
            "instances_per_task": n,
            "target": "<= 1.02",
            "met": no_fusion <= 1.02,
        },
        "fusion_wall_time_vs_in_context": {
            "value": wall_ratio,
            "task_state": wall["tagi_fusion"]["task_s"] / wall["in_context"]["task_s"],
            "target": "<= 1.0",
            "met": wall_ratio <= 1.0,
        },
        "adapter_generation_speedup_batch64_vs_1": {"value": speedup, "target": ">= 10", "met": speedup >= 10},
        "train_step_tagi_vs_multitask_ft": {
            "value": stage2,
            "live_teacher": train["tagi_stage2_encoder"]["step_s"] / ft,
            "paper_generator_cached": train["tagi_stage2_cached"]["step_s"] / ft,
            "paper_generator_live_teacher": train["tagi_stage2"]["step_s"] / ft,
            "teacher_logits_pass_once": train["teacher_logits_pass"]["step_s"] / ft,
            "l_pred_only": train["tagi_lpred"]["step_s"] / ft,
            "flops_value": (
                train["tagi_stage2_encoder_cached"]["forward_backward_flops"]
                / train["multitask_ft"]["forward_backward_flops"]
            ),
            "target": "<= 1.5",
            "met": stage2 <= 1.5,
        },
    }


# ------------------------------------------------------------------------------------------------------ metadata
def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str, threads: int) -> dict:
    import peft
    import transformers

    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def build_shapes(names: list[str], seed: int) -> tuple[list[Shape], dict | None]:
    measured = measure_synthetic_lengths(seed) if any(n.startswith("synthetic") for n in names) else None
    pool = {s.name: s for s in synthetic_shapes(measured)} if measured else {}
    base = sni_base_shape()
    pool[base.name] = base
    return [pool[n] for n in names], measured


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; SNI-shape CPU timing from one batch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--device", default="cpu", help="cpu (the required numbers) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shapes, measured = build_shapes(args.shapes, args.seed)
    results = {
        "benchmark": "cost",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "machine": machine_info(args.device, args.threads),
        "seed": args.seed,
        "dtype": "float32",
        "decoding": "greedy, exactly output_tokens new tokens (min_new_tokens = max_new_tokens), HF default KV cache",
        "synthetic_lengths": measured,
        "shapes": {},
        "complete": False,
    }
    for shape in shapes:
        settings = run_settings(shape, quick=args.quick, device=args.device)
        _log(f"{shape.name}: {settings}")
        results["shapes"][shape.name] = run_shape(
            shape, settings, seed=args.seed, device=args.device, threads=args.threads
        )
        _write_json(args.out, results)
    results["complete"] = True
    results["runtime_s"] = time.perf_counter() - started
    _write_json(args.out, results)
    print(render_markdown(results))
    _log(f"done in {results['runtime_s']:.0f} s; wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
