"""Markdown tables (and an optional chart) from the JSON written by `benchmarks/cost.py`.

    python benchmarks/cost_report.py benchmarks/results/cost.json [more.json ...] [--png cost.png]

`render_markdown(results)` returns the tables of one results file; `plot_cost(results_list, path)` draws relative
FLOPs and wall time per method (one bar group per shape and device).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHOD_LABELS = {
    "in_context": "T5, instruction in context",
    "tagi_fusion": "TAGI (fusion, LoRA on the fly)",
    "tagi_fusion_merged": "TAGI (fusion, LoRA merged)",
    "tagi_no_fusion": "TAGI w/o fusion (LoRA on the fly)",
    "tagi_no_fusion_merged": "TAGI w/o fusion (LoRA merged via PEFT)",
    "tagi_fusion_api": "TAGI (fusion), public API: `generate_adapter` + `generate(adapter=)`",
    "tagi_no_fusion_api": "TAGI w/o fusion, public API",
    "floor": "floor: bare T5, input alone",
}
TRAIN_LABELS = {
    "multitask_ft": "multi-task FT (in context, full T5)",
    "tagi_stage2": "TAGI stage 2 (L_pred + L_kl + L_ins), paper's generator",
    "tagi_stage2_encoder": "TAGI stage 2, trainable instruction encoder (default)",
    "tagi_stage2_cached": "TAGI stage 2, paper's generator, teacher logits cached (top-64)",
    "tagi_stage2_encoder_cached": "TAGI stage 2, trainable instruction encoder, teacher logits cached (top-64)",
    "teacher_logits_pass": "teacher-logit cache: teacher forward, once per example (not per epoch)",
    "tagi_lpred": "TAGI, L_pred only",
}
GOAL_LABELS = {
    "fusion_flops_vs_in_context": "TAGI (fusion) FLOPs / in-context FLOPs, public API",
    "no_fusion_flops_vs_floor_plus_instruction_pass": (
        "TAGI w/o fusion FLOPs / (floor + 1 instruction read), public API"
    ),
    "fusion_wall_time_vs_in_context": "TAGI (fusion) wall time / in-context wall time, public API",
    "adapter_generation_speedup_batch64_vs_1": "adapters/s at batch 64 / at batch 1",
    "train_step_tagi_vs_multitask_ft": "TAGI stage-2 step time / multi-task FT step time (teacher logits cached)",
}


def _g(flops: float) -> str:
    return f"{flops / 1e9:,.3f}" if flops < 1e10 else f"{flops / 1e9:,.1f}"


def _device(results: dict) -> str:
    machine = results["machine"]
    if machine["device"].startswith("cuda"):
        return f"{machine.get('gpu', 'GPU')} (fp32)"
    return f"CPU {machine['cpu_model']}, {machine['torch_threads']} threads (fp32)"


def _shape_line(shape: dict) -> str:
    text = shape["text_config"]
    return (
        f"instruction {shape['instruction_tokens']}, input {shape['input_tokens']}, in-context "
        f"{shape['in_context_tokens']}, output {shape['output_tokens']} tokens; d_model {text['d_model']}, "
        f"{text['num_layers']}+{text['num_decoder_layers']} layers, vocab {text['vocab_size']}, LoRA rank "
        f"{shape['lora_rank']}"
    )


def inference_table(name: str, shape_result: dict, device: str) -> list[str]:
    shape, flops, wall = shape_result["shape"], shape_result["flops"], shape_result["wall_time"]
    settings = shape_result["settings"]
    n, batch = shape["instances_per_task"], shape["inference_batch_size"]
    ref_flops, ref_time = flops["in_context"]["per_task"], wall["in_context"]["task_s"]
    extrapolated = any(w["extrapolated"] for w in wall.values())
    lines = [
        f"**{name}**: {shape['description']} ({_shape_line(shape)}). Task of {n} instances, batch {batch}, greedy "
        f"decoding of exactly {shape['output_tokens']} tokens with KV cache; wall time on {device}, median of "
        f"{settings['timing_repeats']} run(s){' (extrapolated from one batch)' if extrapolated else ''}.",
        "",
        "| method | GFLOPs / instance (per-task work amortised) | x in-context FLOPs | per-task work, GFLOPs "
        "(once) | wall s / task | x in-context time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, label in METHOD_LABELS.items():
        if method not in flops:  # results from before the method was measured
            continue
        f, w = flops[method], wall[method]
        lines.append(
            f"| {label} | {_g(f['per_instance'])} | {f['per_task'] / ref_flops:.3f} | {_g(f['per_task_work'])} | "
            f"{w['task_s']:.2f} | {w['task_s'] / ref_time:.3f} |"
        )
    return lines


def goals_table(results: dict) -> list[str]:
    """One row per goal, one column per shape: the value (met or missed), and with a precomputed `task_state=` where
    the goal is measured through the public API."""
    names = list(results["shapes"])
    lines = ["| goal (stated for the SNI shape) | target | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---:|" * len(names))
    for key, label in GOAL_LABELS.items():
        goals = [results["shapes"][name]["goals"].get(key) for name in names]
        if any(goal is None for goal in goals):  # results from before the goal was measured
            continue
        cells = []
        for goal in goals:
            cell = f"{goal['value']:.3f} ({'met' if goal['met'] else 'missed'})"
            cell += f"; task_state=: {goal['task_state']:.3f}" if "task_state" in goal else ""
            cell += f"; live teacher: {goal['live_teacher']:.3f}" if "live_teacher" in goal else ""
            cells.append(cell)
        lines.append(f"| {label} | {goals[0]['target']} | " + " | ".join(cells) + " |")
    return lines


def throughput_table(results: dict) -> list[str]:
    lines = ["| shape | adapters/s, batch 1 | adapters/s, batch 64 | speedup per adapter |", "|---|---:|---:|---:|"]
    for name, shape_result in results["shapes"].items():
        t = shape_result["adapter_throughput"]
        batched = t[f"batch_{t['batched_size']}_adapters_per_s"]
        single, speedup = t["batch_1_adapters_per_s"], t["speedup_per_adapter"]
        lines.append(f"| {name} | {single:.2f} | {batched:.2f} | {speedup:.1f}x |")
    return lines


def training_table(results: dict) -> list[str]:
    memory_key = "peak_gpu_memory_mb" if results["machine"]["device"].startswith("cuda") else "peak_rss_mb"
    memory = "peak GPU memory, MB" if memory_key == "peak_gpu_memory_mb" else "peak RSS, MB"
    lines = [
        f"| shape | method | batch | step s | x FT time | fwd+bwd GFLOPs | x FT FLOPs | {memory} | trainable params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, shape_result in results["shapes"].items():
        train = shape_result["training"]
        ft = train["multitask_ft"]
        for method, label in TRAIN_LABELS.items():
            if method not in train:  # results measured before the method existed
                continue
            t = train[method]
            lines.append(
                f"| {name} | {label} | {t['batch_size']} | {t['step_s']:.2f} | {t['step_s'] / ft['step_s']:.2f} | "
                f"{_g(t['forward_backward_flops'])} | "
                f"{t['forward_backward_flops'] / ft['forward_backward_flops']:.2f} | "
                f"{t[memory_key]:,.0f} | {t['trainable_parameters']:,} |"
            )
    return lines


def render_markdown(results: dict) -> str:
    """The cost tables of one results file (inference per shape, goals, throughput, training, notes)."""
    device = _device(results)
    machine = results["machine"]
    head = (
        f"Cost benchmark on {device}; torch {machine['torch']}, transformers {machine['transformers']}, peft "
        f"{machine['peft']}; commit {str(results['git_commit'])[:10]}"
        f"{' (+ local changes)' if results['git_dirty'] else ''}"
        f"; seed {results['seed']}{'; --quick' if results['quick'] else ''}"
        f"{'; run started ' + results['created'].replace('T', ' ') if results.get('created') else ''}."
    )
    lines = [head, ""]
    for name, shape_result in results["shapes"].items():
        lines += inference_table(name, shape_result, device) + [""]
    lines += ["Goals:", ""] + goals_table(results) + [""]
    lines += ["Adapter generation (instruction encoder + generator, one instruction per call vs 64):", ""]
    lines += throughput_table(results) + [""]
    lines += ["Training step (forward + backward + AdamW step):", ""] + training_table(results) + [""]
    lines += notes(results)
    return "\n".join(lines)


def notes(results: dict) -> list[str]:
    out = []
    for name, shape_result in results["shapes"].items():
        checks, load = shape_result["checks"], shape_result["load_average_1_5_15min"]
        out.append(
            f"- {name}: merged vs on-the-fly max |logit diff| "
            f"{checks['fusion_merged_vs_on_the_fly_max_abs_logit_diff']:.1e} (fusion), "
            f"{checks['no_fusion_peft_merged_vs_on_the_fly_max_abs_logit_diff']:.1e} (PEFT merge, no fusion)"
            f" at mean |logit| {checks['logit_scale']:.1f}; 1-min load average {load['start'][0]:.1f} -> "
            f"{load['end'][0]:.1f} on {results['machine']['cpu_cores']} cores."
        )
    return out


def plot_cost(results_list: list[dict], path: str | Path) -> None:
    """Bar chart: FLOPs and wall time per task relative to the in-context T5, per method, for each shape/device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    for results in results_list:
        tag = "GPU" if results["machine"]["device"].startswith("cuda") else "CPU"
        for name, shape_result in results["shapes"].items():
            groups.append((f"{name} ({tag})", shape_result))
    methods = [m for m in METHOD_LABELS if all(m in g["flops"] for _, g in groups)]  # older results lack some
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    width = 0.8 / len(groups)
    for ax, (title, metric) in zip(axes, (("FLOPs per task", "flops"), ("wall time per task", "wall_time"))):
        for i, (label, shape_result) in enumerate(groups):
            data = shape_result[metric]
            key = "per_task" if metric == "flops" else "task_s"
            values = [data[m][key] / data["in_context"][key] for m in methods]
            ax.bar([j + i * width for j in range(len(methods))], values, width, label=label)
        ax.set_title(f"{title}, relative to the in-context T5")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))])
        ax.set_xticklabels([METHOD_LABELS[m].replace(" (", "\n(") for m in methods], fontsize=7, rotation=20)
        ax.axhline(1.0, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Markdown tables from benchmarks/cost.py results.")
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, help="also draw the relative-cost chart here")
    args = parser.parse_args(argv)
    loaded = [json.loads(path.read_text()) for path in args.results]
    print("\n\n".join(render_markdown(results) for results in loaded))
    if args.png:
        plot_cost(loaded, args.png)


if __name__ == "__main__":
    main()
