"""The CLI's parser: each command says at what level it logs (`rlhf.logs`), or leaves logging alone."""

from __future__ import annotations

import logging

import pytest

from rlhf.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["trainer", "run"], logging.INFO),
        (["decider", "run"], logging.INFO),
        (["serve"], logging.INFO),
        (["demo"], logging.WARNING),
        (["sink", "run"], logging.WARNING),
        (["sink", "run", "--verbose"], logging.INFO),
        (["streams", "worker"], None),  # Faust configures its own
        (["models", "list"], None),
    ],
)
def test_each_command_logs_at_its_own_level(argv: list[str], level: int | None):
    assert build_parser().parse_args(argv).log_level == level
