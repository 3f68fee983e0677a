"""Argument plumbing shared by the command modules: every subcommand gets `--config`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from core.settings import Settings, load_settings


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: $RLHF_CONFIG or ./rlhf.yaml)")


def command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    func: Callable[[argparse.Namespace], int | None],
    *,
    log_level: int | None = None,
    **kw,
) -> argparse.ArgumentParser:
    """Add a subcommand whose handler is `func(args)`; returns its parser for arguments. With
    `log_level`, the CLI logs records of that level and above before calling it (`rlhf.logs`)."""
    parser = sub.add_parser(name, help=help, description=help, **kw)
    add_config_option(parser)
    parser.set_defaults(func=func, log_level=log_level)
    return parser


def group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Add a command group (`rlhf kafka ...`) and return its own subparsers."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))
