"""Shared by the benchmarks: a broker to measure against (yours via KAFKA_BOOTSTRAP_SERVERS, or a
throwaway local one) and the median helper. Not a test; nothing here asserts on time."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devtools.kafka_local import LocalBroker, free_port


@contextlib.contextmanager
def broker() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        local = LocalBroker(Path(tmp), port=free_port(), controller_port=free_port())
        local.up()
        try:
            yield local.bootstrap_servers
        finally:
            local.down(timeout=20)


def median(values: list[float]) -> float:
    return statistics.median(values)
