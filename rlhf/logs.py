"""The CLI's logging, set up in one place: `rlhf.cli.main` calls `configure_logging` once, at the
level the command asked for (`rlhf.arguments.command(..., log_level=...)`). Commands that ask for
none (a Faust worker configures its own) leave logging alone."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(level: int) -> None:
    """Records of `level` and above to stderr, in the CLI's one format."""
    logging.basicConfig(level=level, format=FORMAT)
