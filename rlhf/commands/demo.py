"""`rlhf demo`: run the closed loop and write its report (see demo/driver.py)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from demo.populations import POPULATIONS, described
from rlhf.arguments import command
from trainers.preferences import PREFERENCES


def _demo(args: argparse.Namespace) -> int:
    from demo import report
    from demo.driver import DemoPlan, profile_of, run_demo

    run_dir = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Unless told, the budget grows with the rounds asked for and the starting policy's minutes a
    # round (the tiny one ~3 on 2 cores, SmolLM2 ~30), and is 14 min at least.
    rounds = args.rounds or DemoPlan.rounds
    budget_min = args.budget or max(14.0, rounds * profile_of(args.policy or DemoPlan.policy).round_minutes)
    given = {
        "policy": args.policy,
        "rounds": args.rounds,
        "users": args.users,
        "train_threshold": args.threshold,
        "seed": args.seed,
        "population": args.population,
        "preference": args.preference,
        "budget_s": budget_min * 60,
    }
    config = Path(args.config).resolve() if args.config else None  # every service of the demo reads the same file
    plan = DemoPlan(
        **{k: v for k, v in given.items() if v is not None},
        fault_drill=args.fault_drill,
        replicas=args.replicas,
        brokers=args.brokers,
        chaos=args.chaos,
        conversations=args.conversations,
        engine=args.engine,
        config=config,
    )  # the rest: DemoPlan's defaults
    talk = "conversations" if plan.conversations else "one question each"
    served = "served by vLLM behind the assistant" if plan.engine == "vllm" else "served by the assistant"
    print(f"rlhf demo: {plan.rounds} rounds from the {plan.policy} policy ({served}), users asking {talk}")
    print(f"  users: the {plan.population} population, hidden preference {plan.preference}")
    print(f"  logs and state in {run_dir}")
    started = time.monotonic()
    results = run_demo(plan, run_dir)
    elapsed = time.monotonic() - started
    max_new_tokens = json.loads((run_dir / "run.json").read_text())["max_new_tokens"]
    summary = report.write_report(
        run_dir,
        results,
        elapsed,
        max_new_tokens,
        follow_ups=plan.conversations,
        population=plan.population,
        preference=plan.preference,
    )
    print(summary)
    return 0 if len(results) >= plan.rounds else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "demo",
        "Run the whole closed loop on this machine with simulated users, then print and write a report.",
        _demo,
        log_level=logging.WARNING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(
            [
                "populations (--population):",
                *(f"  {name:<12} {line}" for name, line in described().items()),
                "hidden preferences (--preference), the weights of what an answer gets right:",
                *(f"  {name:<12} {p.describe()}" for name, p in PREFERENCES.items()),
            ]
        ),
    )
    p.add_argument(
        "--policy",
        help="the starting assistant: `tiny` (default), `smollm2` (SmolLM2-135M-Instruct, LoRA; ~30-45 min a round "
        "on 2 CPU cores), or any policy.base_model; demo.driver.POLICY_PROFILES has each one's settings",
    )
    p.add_argument("--rounds", type=int, help="RLHF rounds (trigger -> train -> A/B -> decision) to complete (default 2)")
    p.add_argument("--users", type=int, help="size of the simulated user population (default 500)")
    p.add_argument("--threshold", type=int, help="feedback events per train trigger (default 1200)")
    p.add_argument(
        "--budget",
        type=float,
        help="minutes before the demo gives up (default: 14, or the policy's minutes a round x rounds when more)",
    )
    p.add_argument("--seed", type=int, help="seed of the simulated users (default 0)")
    p.add_argument(
        "--fault-drill", action="store_true", help="SIGKILL the stream worker and the trainer once, restart the broker once"
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="stream workers, trainers, deciders and assistant replicas (behind a round-robin balancer) of each (default 1)",
    )
    p.add_argument("--brokers", type=int, default=1, choices=[1, 3], help="Kafka nodes: 1, or a 3-node KRaft cluster (default 1)")
    p.add_argument(
        "--chaos",
        action="store_true",
        help="SIGKILL a stream worker, an assistant, a trainer while it trains, a decider while an experiment is open and a "
        "broker node, one at a time; RUN/run.json then holds the kills and the checks (feedback in ClickHouse exactly "
        "once, each experiment decided once, no user in two arms); best with --replicas 2 --brokers 3",
    )
    p.add_argument(
        "--conversations",
        action="store_true",
        help='users hold conversations of 1-3 questions whose follow-ups depend on the earlier turn ("And in Calendar?", '
        '"How do I undo that?"), sending the whole conversation (some with an app\'s system prompt); the report gives '
        "the hidden preference on follow-up turns apart from first turns (default: one question per user)",
    )
    p.add_argument(
        "--engine",
        choices=["embedded", "vllm"],
        default="embedded",
        help="who generates the answers: the assistant itself (default), or vLLM's CPU build started by the demo "
        "(`rlhf engine`), the assistant relaying both arms to it and each candidate deployed to it as a LoRA adapter; "
        "needs a LoRA policy such as smollm2",
    )
    p.add_argument(
        "--population",
        choices=list(POPULATIONS),
        help="how the simulated users react (demo/populations.py; each below): `kind` always right and eager, "
        "`realistic` sparse and noisy, `hostile` realistic with adversaries (default: kind)",
    )
    p.add_argument(
        "--preference",
        choices=list(PREFERENCES),
        help="what the users like in an answer (trainers/preferences.py; each below), the hidden preference the "
        "report's ground truth is measured by (default: default)",
    )
    p.add_argument("--out", help="run directory (default runs/demo-TIMESTAMP)")
