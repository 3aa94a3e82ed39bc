"""Profiles the cost benchmark's training step of one method at one synthetic shape (CPU): where a stage-2 step's
time goes beside a multi-task FT step's.

    python benchmarks/probes/profile_training.py [--shape synthetic-def] [--threads 2] [--methods ...] [--top 20]

Prints, per method, the median step time (forward + backward + AdamW) over `--steps` steps and the Python functions
with the largest cumulative time in one profiled step (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost import SHAPES, build_shapes  # noqa: E402
from cost_training import _setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[n for n in SHAPES if n.startswith("synthetic")], default="synthetic-def")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["multitask_ft", "tagi_stage2_encoder_cached"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = build_shapes([args.shape], seed=0)[0][0]
    for method in args.methods:
        with tempfile.TemporaryDirectory() as workdir:
            model, loss_fn = _setup(method, shape, shape.train_batch_size, 0, "cpu", workdir)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4)

            def step(loss_fn=loss_fn, optimizer=optimizer) -> None:
                loss_fn().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step()
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            profiler = cProfile.Profile()
            profiler.runcall(step)
        print(f"\n=== {method}: {statistics.median(times) * 1e3:.1f} ms per step (median of {args.steps})")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
