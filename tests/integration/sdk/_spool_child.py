"""The sending process of the SIGKILL drill (tests/integration/sdk/test_outage_drill.py): sends
feedback events with ids k00000000, k00000001, ... to an unreachable broker as fast as it can, so
everything goes to the spool, and after each call that returned writes the count of returned calls
into an 8-byte file the test reads after killing it.

    python -m tests.integration.sdk._spool_child BOOTSTRAP PREFIX SPOOL_DIR COUNTER_FILE
"""

from __future__ import annotations

import mmap
import struct
import sys
from pathlib import Path

from sdk.client import FeedbackClient


def main() -> None:
    bootstrap, prefix, spool_dir, counter = sys.argv[1:5]
    with open(counter, "r+b") as f:
        returned = mmap.mmap(f.fileno(), 8)
    client = FeedbackClient(bootstrap, prefix, 1.0, spool_dir=Path(spool_dir))
    n = 0
    while True:  # until killed
        client.feedback(
            event_id=f"k{n:08d}",
            interaction_id=f"i{n}",
            user_id=f"u{n % 97}",
            query="q?",
            response="a",
            model_version="v1",
            feedback_type="thumbs_up",
        )
        n += 1
        struct.pack_into("<q", returned, 0, n)


if __name__ == "__main__":
    main()
