"""`rlhf streams worker`: run the Faust stream app (the same as `faust -A streams.app worker`)."""

from __future__ import annotations

import argparse

from rlhf.arguments import command, group, settings_of


def _worker(args: argparse.Namespace) -> None:
    from streams.app import run_worker

    run_worker(settings_of(args), loglevel=args.loglevel)


def register(sub: argparse._SubParsersAction) -> None:
    streams = group(sub, "streams", "The Faust stream app: validation + DLQ, dedupe, rolling buffer, train triggers, metrics.")
    p = command(streams, "worker", "Run a stream worker until interrupted (topics must exist: `rlhf topics create`).", _worker)
    p.add_argument("--loglevel", "-l", default="info", choices=["debug", "info", "warning", "error"], help="Worker log level.")
