"""Analytics fixtures: an embedded warehouse per test (one chdb path per session, a fresh database
per test: chdb allows one path per process) and a sink subprocess that owns its own path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.clickhouse import Warehouse, open_warehouse
from core.settings import Settings, load_settings
from devtools.kafka_local import free_port
from schemas import FeedbackEvent
from schemas.topics import topic_name
from sdk.client import FeedbackClient
from tests.integration.analytics.world import World

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "db"


@pytest.fixture
def warehouse_settings(chdb_path: Path, tmp_path: Path) -> Settings:
    return load_settings(None, home=tmp_path, clickhouse={"path": chdb_path, "database": f"t{uuid.uuid4().hex[:10]}"})


@pytest.fixture
def warehouse(warehouse_settings: Settings) -> Iterator[Warehouse]:
    wh = open_warehouse(warehouse_settings)
    try:
        yield wh
    finally:
        wh.close()


def produce(settings: Settings, world: World, duplicates: int = 0, bad: int = 0) -> None:
    """The world's events, then `duplicates` feedback events again (same ids), then `bad` unparseable records."""
    prefix = settings.kafka.topic_prefix
    with FeedbackClient(settings.kafka.bootstrap_servers, prefix) as client:
        for topic, event in world.events:
            client.send_bytes(
                topic_name(prefix, topic), event.to_bytes(), getattr(event, "user_id", None) or getattr(event, "policy", None)
            )
        for event in world.of("feedback", FeedbackEvent)[:duplicates]:
            client.send_bytes(topic_name(prefix, "feedback"), event.to_bytes(), event.user_id)
        for n in range(bad):
            topic = ("feedback", "exposures", "interactions")[n % 3]
            client.send_bytes(
                topic_name(prefix, topic), b'{"schema_version": 1, "user_id": "u-bad"}' if n % 2 else b"not json", "u-bad"
            )


class SinkProcess:
    """`rlhf sink run` as a subprocess configured by environment, with its dashboard port (`launcher`:
    the module it runs through, e.g. tests.integration.analytics.dying_sink)."""

    def __init__(self, settings: Settings, port: int | None = None, launcher: str = "rlhf.cli", **env: str):
        self.settings = settings
        self.port = port or free_port()
        self.env = {**os.environ, **cli_env(settings, self.port), **env}
        self.log = settings.home / f"sink-{time.time_ns()}.log"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", launcher, "sink", "run"], cwd=REPO, env=self.env, stdout=self._out, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sink exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.get("/healthz", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise AssertionError(f"sink not ready in {timeout}s:\n{self.output()}")

    def counts(self) -> dict[str, int]:
        j = self.get_json("/sql/table_counts")
        return {table: rows for table, rows in j["data"]}

    def wait_counts(self, expected: dict[str, int], timeout: float = 120) -> dict[str, int]:
        deadline, got = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            got = self.counts()
            if all(got.get(k) == v for k, v in expected.items()):
                return got
            time.sleep(0.5)
        raise AssertionError(f"counts {got} never reached {expected}:\n{self.output()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(timeout)
        self._out.close()
        return rc

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()


def cli_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment that makes `rlhf ...` subprocesses use these settings."""
    return {
        "RLHF_HOME": str(settings.home),
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RLHF_CLICKHOUSE__DASHBOARD_PORT": str(port),
        "RLHF_CLICKHOUSE__BATCH_ROWS": "400",
        "RLHF_CLICKHOUSE__BATCH_SECONDS": "0.5",
    }


def rlhf(settings: Settings, port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhf.cli", *args],
        cwd=REPO,
        env={**os.environ, **cli_env(settings, port)},
        capture_output=True,
        text=True,
        timeout=120,
    )
