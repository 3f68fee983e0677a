"""`rlhf demo`: run the closed loop and write its report (see rlhf/demo.py)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from rlhf.cli import command


def true_quality(registry_root: Path, versions: set[str], max_new_tokens: int, samples: int = 2) -> dict[str, float]:
    """Mean hidden preference of each version's answers to the held-out questions (ground truth)."""
    from consumers.registry import ModelRegistry
    from consumers.serve import generate, load_policy
    from trainers.synthetic import quality, split_questions

    registry = ModelRegistry(registry_root)
    _, held_out = split_questions()
    out = {}
    for version in sorted(versions):
        policy = load_policy(registry, version)
        scores = []
        for s in range(samples):
            answers = generate(policy, [q.text for q in held_out], max_new_tokens, seed=s)
            scores += [quality(q, a) for q, a in zip(held_out, answers)]
        out[version] = sum(scores) / len(scores)
    return out


def _demo(args: argparse.Namespace) -> int:
    from rlhf import report
    from rlhf.demo import DemoPlan, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_dir = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan(rounds=args.rounds, users=args.users, train_threshold=args.threshold, budget_s=args.budget * 60,
                    seed=args.seed, fault_drill=args.fault_drill)  # fmt: skip
    print(f"rlhf demo: {plan.rounds} rounds, logs and state in {run_dir}")
    started = time.monotonic()
    results = run_demo(plan, run_dir)
    elapsed = time.monotonic() - started
    versions = {r.candidate for r in results} | {r.parent for r in results if r.parent}
    truth = true_quality(run_dir / "state" / "registry", versions, max_new_tokens=32)
    rounds = [report.figures_of(asdict(r), truth) for r in results]
    html_path = run_dir / "report.html"
    summary = report.terminal_summary(rounds, f"http://127.0.0.1:<dashboard port> (stopped with the demo; rerun `rlhf sink run` on {run_dir}/state)", html_path)
    summary += f"  wall time: {elapsed / 60:.1f} min\n"
    report.write_html(html_path, rounds, json.loads((run_dir / "timeline.json").read_text()) if (run_dir / "timeline.json").exists() else [], summary)
    print(summary)
    return 0 if len(results) >= plan.rounds else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "demo", "Run the whole closed loop on this machine with simulated users, then print and write a report.", _demo)
    p.add_argument("--rounds", type=int, default=2, help="RLHF rounds (trigger -> train -> A/B -> decision) to complete")
    p.add_argument("--users", type=int, default=500, help="size of the simulated user population")
    p.add_argument("--threshold", type=int, default=400, help="feedback events per train trigger")
    p.add_argument("--budget", type=float, default=14.0, help="minutes before the demo gives up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-drill", action="store_true", help="SIGKILL the stream worker and the trainer once, restart the broker once")
    p.add_argument("--out", help="run directory (default runs/demo-TIMESTAMP)")
