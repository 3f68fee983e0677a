"""Issue 32: the SDK never writes to the app's stderr by itself. An app whose Kafka is unreachable
for 20 s, sending all the while, prints nothing when it configures no logging, and at most 3 lines
when it logs warnings to stderr (the broker going away, said once; librdkafka's reconnect attempts
are counted, not printed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.kafka_local import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
SECONDS = 20


def test_an_unreachable_broker_costs_the_app_at_most_three_lines_of_stderr(tmp_path):
    runs = {
        flags: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.sdk._quiet_child",
                f"127.0.0.1:{free_port()}",
                str(tmp_path / name),
                str(SECONDS),
                *flags,
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, flags in (("silent", ()), ("warnings", ("--log-warnings",)))
    }
    for flags, child in runs.items():
        _, stderr = child.communicate(timeout=SECONDS + 60)
        assert child.returncode == 0, stderr
        lines = stderr.splitlines()
        print(f"stderr lines with {flags or 'no logging configured'}: {len(lines)}", *lines, sep="\n")
        assert len(lines) <= (3 if flags else 0), stderr
        assert not [line for line in lines if line.startswith("%")]  # never librdkafka's own `%3|...|FAIL|` lines
