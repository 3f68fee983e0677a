"""The `rlhf` command. Each package registers its own subcommands (`register(subparsers)` in its
`cli` module) so this file stays a dispatcher; every subcommand gets `--config`.

Errors the project raises on purpose (`RlhfError`) print as one clear message and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from rlhf.errors import RlhfError

# Packages whose `cli` module contributes subcommands; a missing one is skipped so the core
# commands keep working in a partial install.
COMMAND_MODULES = (
    "rlhf.cli_core", "streams.cli", "trainers.cli", "trainers.policy_cli", "consumers.cli", "analytics.cli", "rlhf.demo_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="rlhf-stream: continuous RLHF from your chat assistant's user feedback, over Kafka.",
        epilog="Configuration: rlhf.yaml (or --config / $RLHF_CONFIG), overridden by RLHF_SECTION__KEY environment variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.register(sub)
    return parser


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: $RLHF_CONFIG or ./rlhf.yaml)")


def command(sub: argparse._SubParsersAction, name: str, help: str, func: Callable[[argparse.Namespace], int | None], **kw) -> argparse.ArgumentParser:
    """Add a subcommand whose handler is `func(args)`; returns its parser for arguments."""
    parser = sub.add_parser(name, help=help, description=help, **kw)
    add_config_option(parser)
    parser.set_defaults(func=func)
    return parser


def group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Add a command group (`rlhf kafka ...`) and return its own subparsers."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RlhfError as exc:
        print(f"rlhf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
