"""An app that uses the SDK while Kafka is unreachable, for the stderr count of
tests/integration/sdk/test_quiet.py: it sends an event every 10 ms for SECONDS seconds to a closed
loopback port, then closes the client (the events stay in the spool). With `--log-warnings` the
app configures logging the common way (`logging.basicConfig(level=WARNING)`); without, it
configures none, and the SDK must print nothing.

    python -m tests.integration.sdk._quiet_child BOOTSTRAP SPOOL_DIR SECONDS [--log-warnings]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from sdk.client import FeedbackClient
from tests.integration.sdk.test_spooling_client import send


def main() -> None:
    bootstrap, spool_dir, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    if "--log-warnings" in sys.argv:
        logging.basicConfig(level=logging.WARNING)
    client = FeedbackClient(bootstrap, "quiet.", 1.0, spool_dir=spool_dir)
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        send(client, n, n + 1)
        n += 1
        time.sleep(0.01)
    client.close(10)
    assert client.stats().spool_depth == n, client.stats()


if __name__ == "__main__":
    main()
