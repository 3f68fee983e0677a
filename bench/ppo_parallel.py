"""Data-parallel PPO: the wall time of one PPO iteration (rollout of `--batch-size` answers, then the
update) of the project's `train_ppo` on the tiny policy, at 2 processes under torchrun (gloo, each
process a shard of every rollout, `trainers.ppo_update`) beside 1 process, in one run, on the same
cores: `--threads` torch threads in all, split between the processes.

    python -m bench.ppo_parallel [--steps 6] [--repeats 3] [--batch-size 16] [--threads 2] [--model tiny]

Each run drops its first iteration (warm-up); the figure is the median over repeats of the
per-run median iteration time. On a 2-core machine the speed-up is bounded by the two cores: one
process already uses both for its matrix maths, and the gradients' all-reduce and the duplicated
Python work come on top. The figure that matters on GPUs (one process per device) is not measured
here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.kafka_local import free_port


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun launch: train, and (rank 0) write the iteration times."""
    import torch

    from core.learning_settings import PolicyTrainingSettings
    from trainers import distributed
    from trainers.base_models import resolve_base_model
    from trainers.policy import load_policy
    from trainers.ppo import train_ppo
    from trainers.synthetic import quality_reward, split_questions

    distributed.init()
    torch.set_num_threads(max(1, args.threads // distributed.world()))
    lm, tokenizer = load_policy(resolve_base_model(args.model))
    config = PolicyTrainingSettings(epochs=args.steps, batch_size=args.batch_size, mini_batch_size=args.batch_size // 2)
    ends: list[float] = []
    train_ppo(
        lm,
        tokenizer,
        quality_reward,
        [q.text for q in split_questions()[0]],
        config,
        on_status=lambda state, stage, message, metrics: ends.append(time.perf_counter()) if state == "progress" else None,
    )
    if distributed.is_main():
        Path(args.out).write_text(json.dumps([b - a for a, b in zip(ends, ends[1:], strict=False)]))


def launch(processes: int, args: argparse.Namespace, out: Path) -> float:
    """The median iteration time (s) of one torchrun launch of `processes` processes."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port()),
        "-m", "bench.ppo_parallel", "--worker", "--out", str(out), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--model", args.model,
    ]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // processes))})
    return statistics.median(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="PPO iterations per run (the first is dropped)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per process count")
    parser.add_argument("--batch-size", type=int, default=16, help="answers per rollout")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all, split between the processes")
    parser.add_argument("--model", default="tiny", help="any name trainers.base_models.resolve_base_model takes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for processes in times:  # interleaved, so drift on a noisy machine hits both alike
                times[processes].append(launch(processes, args, Path(scratch) / f"{processes}-{repeat}.json"))
    one, two = (statistics.median(times[p]) for p in (1, 2))
    print(f"PPO iteration ({args.batch_size} answers, {args.model}, {args.threads} threads in all), median of {args.repeats}:")
    print(f"  1 process  (baseline): {one:.3f} s   runs {[round(t, 3) for t in times[1]]}")
    print(f"  2 processes (gloo)   : {two:.3f} s   runs {[round(t, 3) for t in times[2]]}")
    print(f"  speed-up 2 vs 1: {one / two:.2f}x")


if __name__ == "__main__":
    main()
