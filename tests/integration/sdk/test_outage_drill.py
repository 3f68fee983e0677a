"""Fault drills of the producer SDK on a real broker of their own (the session broker other tests
use is never stopped):

1. The broker is stopped for 60 s while an app thread keeps sending feedback (over 200,000 events
   during the outage). Every send returns without waiting on Kafka (latencies are printed, beside a
   baseline of the same loop without the SDK; only a hang guard is asserted: tests do not assert
   on wall-clock figures). After the broker returns, every event is on the feedback topic, by
   distinct event id, and each user's events are in the order they were sent.
2. The sending process is SIGKILLed while it spools; a new process on the same spool directory
   delivers what was spooled. The test prints how many events the killed process had been told
   were accepted (its calls had returned) and how many of those reached the topic.

Run with `-s` to see the figures: pytest -s tests/integration/sdk/test_outage_drill.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from core.kafka_messages import position
from core.settings import ProducerSettings
from devtools.kafka_local import LocalBroker, free_port
from schemas import FeedbackEvent, validate_event
from schemas.topics import topic_name
from sdk.admin import create_topics
from sdk.client import FeedbackClient
from tests.conftest import make_settings
from tests.integration.analytics.conftest import SinkProcess

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
EVENT_ID = re.compile(rb'"event_id":"([^"]+)"')
RATE = 3_800  # events/s the app thread sends: 60 s of outage carry over 200,000
OUTAGE_S = 60.0
HANG_GUARD_S = 0.5  # a send this slow is a hang (the bug was: forever), not noise on a loaded machine


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path_factory.mktemp("drill-kafka"), port=free_port(), controller_port=free_port())
    broker.up()
    try:
        yield broker
    finally:
        broker.down(timeout=20)


def broker_ctl(broker: LocalBroker, action: str) -> None:
    """Stop or start the broker from another process, as an operator would: the broker's client
    libraries then take no GIL time from the app thread being measured."""
    code = (
        f"from pathlib import Path; from devtools.kafka_local import LocalBroker; "
        f"LocalBroker(Path({str(broker.data_dir)!r}), port={broker.port}, controller_port={broker.controller_port}).{action}()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=180)


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes, bytes]]:
    """Every record of the topic: (partition, key, event id), in offset order per partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"drill-{time.time_ns()}", "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, seen = [], dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    while any(seen[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        for msg in consumer.consume(10_000, timeout=1.0):
            assert msg.error() is None, msg.error()
            at, key, found = position(msg), msg.key(), EVENT_ID.search(msg.value() or b"")
            assert key is not None and found is not None, msg.value()
            out.append((at.partition, key, found.group(1)))
            seen[at.partition] = at.offset + 1
    consumer.close()
    return out


def percentiles(ns: list[int]) -> str:
    s = sorted(ns)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))] / 1000  # noqa: E731
    return (
        f"p50 {q(0.5):.1f} µs, p99 {q(0.99):.1f} µs, p99.9 {q(0.999):.1f} µs, max {s[-1] / 1000:.1f} µs, "
        f"over 1 ms: {sum(v > 1e6 for v in s)}"
    )


def fields(n: int) -> dict:
    return dict(
        event_id=f"e{n:08d}",
        interaction_id=f"i{n}",
        user_id=f"u{n % 997}",
        query=f"q {n}?",
        response="a",
        model_version="v1",
        feedback_type="thumbs_up",
    )


def test_broker_down_60s_sends_never_block_and_every_event_arrives_once(own_broker: LocalBroker, tmp_path: Path):
    settings = make_settings(own_broker.bootstrap_servers, tmp_path, feedback={"collection_rate": 1.0})
    create_topics(settings.kafka)
    latencies: list[int] = []
    baseline: list[int] = []  # the same loop's validation alone: what the machine's noise costs any call
    phase = {"name": "healthy"}
    during_outage = [0]
    stop = threading.Event()
    client = FeedbackClient.from_settings(settings)

    def app() -> None:  # paced like a busy chat app, not a tight loop
        n, start = 0, time.monotonic()
        while not stop.is_set():
            if n > (time.monotonic() - start) * RATE:
                time.sleep(0.002)
                continue
            t = time.perf_counter_ns()
            ev = validate_event(FeedbackEvent, fields(n))
            t1 = time.perf_counter_ns()
            client.feedback(ev)
            latencies.append(time.perf_counter_ns() - t1)
            baseline.append(t1 - t)
            during_outage[0] += phase["name"] == "down"
            n += 1

    sender = threading.Thread(target=app)
    sender.start()
    try:
        time.sleep(3)
        phase["name"] = "down"
        down_at = time.monotonic()
        broker_ctl(own_broker, "down")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        broker_ctl(own_broker, "up")
        outage = time.monotonic() - down_at
        phase["name"] = "back"
        time.sleep(3)
    finally:
        stop.set()
        sender.join()
    sent = len(latencies)
    assert client.wait_drained(90), client.stats()
    stats = client.stats()
    client.close()

    records = read_topic(
        settings.kafka.bootstrap_servers, topic_name(settings.kafka.topic_prefix, "feedback"), settings.kafka.partitions
    )
    ids = {r[2] for r in records}
    print(f"\noutage {outage:.1f} s; sent {sent:,} events, {during_outage[0]:,} of them while the broker was down; {stats}")
    print(f"send latency:     {percentiles(latencies)}")
    print(f"baseline (validation alone, same loop): {percentiles(baseline)}")
    print(
        f"on the topic: {len(records):,} records, {len(ids):,} distinct event ids "
        f"({len(records) - len(ids):,} re-sent duplicates)"
    )
    assert during_outage[0] >= 200_000 and outage >= OUTAGE_S
    assert stats.spooled >= during_outage[0] and stats.failed == 0 and stats.dropped == 0
    assert ids == {f"e{n:08d}".encode() for n in range(sent)}
    assert max(latencies) < HANG_GUARD_S * 1e9
    first: set[bytes] = set()
    last: dict[bytes, int] = {}  # per user (key): first copies arrive in send order
    for _, key, event_id in records:
        if event_id in first:
            continue
        first.add(event_id)
        n = int(event_id[1:])
        assert n > last.get(key, -1), f"user {key!r}: event {n} arrived after event {last[key]}"
        last[key] = n

    # ... and through the sink into ClickHouse, exactly once: as many distinct ids as events sent.
    sink = SinkProcess(settings, RLHF_CLICKHOUSE__BATCH_ROWS="20000")
    try:
        sink.wait_ready()
        started = time.monotonic()
        sink.wait_counts({"feedback": sent}, timeout=300)
        print(f"ClickHouse: {sent:,} distinct feedback ids after {time.monotonic() - started:.0f} s of the sink")
    finally:
        assert sink.stop() == 0, sink.output()


def test_sigkill_while_spooling_then_restart_delivers_the_spool(own_broker: LocalBroker, tmp_path: Path):
    settings = make_settings(own_broker.bootstrap_servers, tmp_path)
    if not own_broker.is_ready():
        own_broker.up()
    create_topics(settings.kafka)
    spool_dir, counter = tmp_path / "spool", tmp_path / "returned"
    counter.write_bytes(bytes(8))
    unreachable = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.sdk._spool_child",
            unreachable,
            settings.kafka.topic_prefix,
            str(spool_dir),
            str(counter),
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while int.from_bytes(counter.read_bytes(), "little") < 50_000 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    returned = int.from_bytes(counter.read_bytes(), "little")
    assert returned >= 50_000

    with FeedbackClient(settings.kafka.bootstrap_servers, settings.kafka.topic_prefix, spool_dir=spool_dir) as client:
        recovered = client.stats().spool_depth
        assert client.wait_drained(60), client.stats()
    records = read_topic(
        settings.kafka.bootstrap_servers, topic_name(settings.kafka.topic_prefix, "feedback"), settings.kafka.partitions
    )
    ids = {int(r[2][1:]) for r in records}
    accepted = set(range(returned))
    lost = sorted(accepted - ids)
    print(
        f"\nSIGKILL after {returned:,} returned sends; the restarted process found {recovered:,} events in the spool "
        "and delivered them: "
        f"{len(ids & accepted):,} of the returned sends are on the topic, {len(lost):,} lost ({lost[:3]}...{lost[-3:]}), "
        f"{len(ids - accepted)} beyond the last returned call (the call in progress at the kill)"
    )
    print(json.dumps({"returned": returned, "recovered": recovered, "delivered": len(ids & accepted), "lost": len(lost)}))
    assert ids <= set(range(returned + 1))  # nothing invented
    # Only the newest sends can be lost: accepted into the in-memory inbox, not yet written by the pump.
    assert lost == list(range(returned - len(lost), returned)) and len(lost) <= ProducerSettings().inbox_max_events
    assert len(ids & accepted) == recovered - len(ids - accepted)
