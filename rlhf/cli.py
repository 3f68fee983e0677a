"""The `rlhf` command: one entry point; each command group lives in `rlhf/commands/`.

Errors the project raises on purpose (`RlhfError`) print as one clear message and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from core.errors import RlhfError
from rlhf.commands import analytics, core, demo, engine, policy, privacy, reward, services, stack, streams
from rlhf.logs import configure_logging

COMMAND_GROUPS = (core, streams, reward, policy, services, analytics, privacy, engine, demo, stack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="rlhf-stream: continuous RLHF from your chat assistant's user feedback, over Kafka.",
        epilog="Configuration: rlhf.yaml (or --config / $RLHF_CONFIG), overridden by RLHF_SECTION__KEY environment variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_GROUPS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_level is not None:
        configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except RlhfError as exc:
        print(f"rlhf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
