"""`rlhf stack up`: every service on this machine, replicas included, until Ctrl-C (see demo/stack.py)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from rlhf.arguments import command, group

DESCRIPTION = """\
Start the whole deployment on this machine, without Docker, and supervise it until Ctrl-C or SIGTERM:
a local Kafka (one KRaft node, or a cluster with --brokers), the topics, the starting policy
(policy.base_model) in the registry, then the stream workers, the sink (embedded ClickHouse unless
clickhouse.url names a server; it serves the dashboard), the trainers, the deciders and the
assistant replicas, each an `rlhf` process with its log in DIR/logs. The replicas listen on ports
of their own behind a round-robin balancer on 127.0.0.1:PORT; with several, each accepts feedback on
any replica's answers (assistant.replicas is set for them, and a shared assistant.feedback_secret
is made in DIR unless configured). A service that dies is started again, a broker node too.
Ctrl-C stops everything; DIR keeps the logs and state, and `--dir DIR` starts on them again.

Every process reads your configuration (--config, $RLHF_CONFIG or ./rlhf.yaml, RLHF_* variables)
under the stack's wiring, which DIR/stack.env holds for other commands:
  set -a; . DIR/stack.env; set +a; rlhf models list
docker/compose.yaml is the same deployment on containers (docs/deployment.md)."""


def _up(args: argparse.Namespace) -> int:
    from demo.stack import Stack, StackPlan
    from demo.supervisor import sigterm_interrupts

    run_dir = Path(args.dir or f"runs/stack-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    plan = StackPlan(
        workers=args.workers,
        trainers=args.trainers,
        deciders=args.deciders,
        assistants=args.assistants,
        brokers=args.brokers,
        port=args.port,
        config=Path(args.config).resolve() if args.config else None,  # every service reads the same file
    )
    stack = Stack(plan, run_dir)
    counts = f"{plan.workers} stream worker(s), 1 sink, {plan.trainers} trainer(s), {plan.deciders} decider(s)"
    print(f"rlhf stack: {plan.brokers} Kafka node(s), {counts}, {plan.assistants} assistant(s); state in {run_dir}", flush=True)
    with sigterm_interrupts():  # SIGTERM stops the stack as Ctrl-C does
        try:
            stack.up()
            print(f"ready:\n{stack.describe()}\nCtrl-C stops everything.", flush=True)
            stack.watch()
        except KeyboardInterrupt:
            print("stopping ...", flush=True)
        finally:
            stack.down()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    stack = group(sub, "stack", "The whole deployment on one machine, without Docker (docker/compose.yaml's equivalent).")
    p = command(
        stack,
        "up",
        "Start Kafka and every service, N of each, supervised; print where they are; stop them all on Ctrl-C.",
        _up,
        log_level=logging.WARNING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DESCRIPTION,
    )
    for name, what in (
        ("workers", "stream workers (`rlhf streams worker`), one consumer group sharing the topics' partitions"),
        ("trainers", "trainers (`rlhf trainer run`), one consumer group: each train trigger goes to one of them"),
        ("deciders", "deciders (`rlhf decider run`): one decides, the others stand by and take over when it dies"),
        ("assistants", "assistant replicas (`rlhf serve`), each on a free port, behind the balancer"),
        ("brokers", "Kafka nodes; 3 gives topics replication 3 and min ISR 2, so one node may die"),
    ):
        p.add_argument(f"--{name}", type=int, default=1, metavar="N", help=f"{what} (default 1)")
    p.add_argument("--port", type=int, default=8300, help="port of the balancer in front of the assistants (default 8300)")
    p.add_argument("--dir", help="run directory for logs and state, reused when it exists (default runs/stack-TIMESTAMP)")
