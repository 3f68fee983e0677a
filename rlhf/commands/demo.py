"""`rlhf demo`: run the closed loop and write its report (see demo/driver.py)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from rlhf.arguments import command, settings_of


def _demo(args: argparse.Namespace) -> int:
    from demo import report
    from demo.driver import DemoPlan, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_dir = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.config:  # every service of the demo reads the same file
        os.environ["RLHF_CONFIG"] = str(Path(args.config).resolve())
    # Unless told, the budget grows with the rounds asked for: ~3 min a round on 2 cores, and 14 min at least.
    budget_min = args.budget or (args.rounds and max(14.0, 3.5 * args.rounds))
    given = {"rounds": args.rounds, "users": args.users, "train_threshold": args.threshold, "seed": args.seed,
             "budget_s": budget_min and budget_min * 60}  # fmt: skip
    plan = DemoPlan(**{k: v for k, v in given.items() if v is not None}, fault_drill=args.fault_drill)  # the rest: DemoPlan's defaults
    print(f"rlhf demo: {plan.rounds} rounds, logs and state in {run_dir}")
    started = time.monotonic()
    results = run_demo(plan, run_dir)
    elapsed = time.monotonic() - started
    summary = report.write_report(run_dir, results, elapsed, max_new_tokens=settings_of(args).policy.training.max_new_tokens)
    print(summary)
    return 0 if len(results) >= plan.rounds else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "demo", "Run the whole closed loop on this machine with simulated users, then print and write a report.", _demo)
    p.add_argument("--rounds", type=int, help="RLHF rounds (trigger -> train -> A/B -> decision) to complete (default 2)")
    p.add_argument("--users", type=int, help="size of the simulated user population (default 500)")
    p.add_argument("--threshold", type=int, help="feedback events per train trigger (default 1200)")
    p.add_argument("--budget", type=float, help="minutes before the demo gives up (default 14, or 3.5 a round when --rounds asks for more than 4)")
    p.add_argument("--seed", type=int, help="seed of the simulated users (default 0)")
    p.add_argument("--fault-drill", action="store_true", help="SIGKILL the stream worker and the trainer once, restart the broker once")
    p.add_argument("--out", help="run directory (default runs/demo-TIMESTAMP)")
