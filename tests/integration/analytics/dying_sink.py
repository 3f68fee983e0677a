"""The real `rlhf sink run`, SIGKILLed between storing a batch and committing it: the sink test's seam.

    python -m tests.integration.analytics.dying_sink sink run

Only this process is changed: right after the first insert of event rows into ClickHouse (before
the batch's offsets can be committed) it SIGKILLs itself.
"""

from __future__ import annotations

import os
import signal
import sys

from analytics.clickhouse import Warehouse
from analytics.tables import EVENT_TABLES
from rlhf.cli import main

_insert_new = Warehouse.insert_new


def _insert_then_die(self: Warehouse, table, rows) -> int:
    stored = _insert_new(self, table, rows)
    if table in EVENT_TABLES:  # not the lag sampler's rows
        os.kill(os.getpid(), signal.SIGKILL)
    return stored


if __name__ == "__main__":
    Warehouse.insert_new = _insert_then_die  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
