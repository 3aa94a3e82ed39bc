"""Profiles one batch of greedy decoding per inference method of the cost benchmark at one shape (CPU).

    python benchmarks/probes/profile_inference.py [--shape synthetic-def] [--threads 1] [--rows 25] [--top 25]

Prints, per method, the wall time of a batch (median of `--repeats`) and the top operators / Python functions of
`torch.profiler` by self CPU time: where TAGI's per-instance time goes beside the in-context T5's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cost_inference as inference  # noqa: E402
from cost import SHAPES, build_shapes  # noqa: E402
from cost_setup import build_models, task_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="synthetic-def")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--methods", nargs="+", default=["in_context", "tagi_fusion_api", "tagi_no_fusion_api"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = build_shapes([args.shape], seed=0)[0][0]
    models = build_models(shape, 0)
    inputs = task_inputs(shape, 0)
    methods = inference.build_methods(models, shape)
    rows = slice(0, args.rows)
    for name in args.methods:
        method = methods[name]
        state = method.per_task(inputs)
        with torch.no_grad():
            method.per_batch(state, inputs, rows)  # warm-up (fills a cache)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                method.per_batch(state, inputs, rows)
                times.append(time.perf_counter() - start)
            with profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
                method.per_batch(state, inputs, rows)
        print(
            f"\n=== {name}: {statistics.median(times) * 1e3:.2f} ms per batch of {args.rows} "
            f"(median of {args.repeats})"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
