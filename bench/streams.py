"""Stream app throughput and trigger latency, next to the bare broker's produce-consume rate.

    python -m bench.streams [--events 5000] [--repeats 5] [--triggers 20] [--threshold 100]

Runs real `rlhf streams worker` subprocesses (one per phase, fresh topics each) on a throwaway
LocalBroker (or yours via KAFKA_BOOTSTRAP_SERVERS) and drives them with a bare confluent-kafka
producer sending pre-serialised, valid, unique FeedbackEvents of one policy (all are accepted).

  throughput  worker with train_threshold = buffer_size = --events: each repeat produces that many
              events as fast as the broker takes them; the clock runs from the first produce to the
              moment the trigger they complete is read back, so it covers validation, the hop
              through the internal topic, the ledger (dedupe, buffer, gate) and the trigger's
              delivery. A "finished" status then opens the gate for the next repeat.
              The worker's CPU time over the repeat (/proc) gives CPU ms/event, which a busy
              machine disturbs less than events/s.
  baseline    in the same repeat, the same bytes (cycled to 100,000 records) through a fresh topic
              with the same partitions: bare producer (the SDK's settings) -> bare consumer, first
              produce to last record read.
  latency     worker with the default threshold (--threshold, buffer 1000): threshold-1 events, a
              pause for the worker to take them (3x their processing time at the measured rate, at
              least 1 s), then the threshold-crossing event; latency is from just before that
              event's produce() to the trigger read by a consumer. A "finished" status re-opens the
              gate each time. The first trigger is a warm-up.

Prints accepted events/s of the worker and of the bare pipe per repeat, the median of the per-repeat
ratios, and trigger latency p50/p99 (nearest rank; with 20 triggers p99 is the slowest one).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench._kafka import broker, median
from core.kafka_log import client_logging
from core.settings import KafkaSettings
from schemas import FeedbackEvent, TrainingStatus, TrainTrigger
from schemas.topics import topic_name
from sdk.admin import create_topics
from sdk.client import PRODUCER_DEFAULTS

PARTITIONS = 3
BARE_MIN_EVENTS = 100_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), for CPU ms per event under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_events(n: int) -> list[tuple[bytes, str, str]]:
    """(value, key, event_id) of n valid, unique events of policy `assistant`, all feedback types."""
    kinds = ("thumbs_up", "thumbs_down", "rating", "correction")
    out = []
    for i in range(n):
        kind = kinds[i % 4]
        extra = (
            {"rating": 1 + i % 5}
            if kind == "rating"
            else {"correction": f"Open Settings then Reset ({i})"}
            if kind == "correction"
            else {}
        )
        e = FeedbackEvent(
            interaction_id=f"i-{i}",
            user_id=f"user-{i % 5000}",
            query=f"How do I reset my password in app {i % 50}?",
            response="Open Settings, go to Account, then press Reset.",
            model_version="v1",
            feedback_type=kind,
            **extra,
        )
        out.append((e.to_bytes(), e.user_id, e.event_id))
    return out


def produce(producer: Producer, topic: str, batch: list[tuple[bytes, str, str]]) -> None:
    for value, key, _ in batch:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush()


class Tail:
    """Reads a topic from its current end on every partition, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str, from_start: bool = False):
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                **client_logging(bootstrap),
                "group.id": "bench-unused",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = []
        for p in partitions:
            low, high = self._watermarks(TopicPartition(topic, p))
            tps.append(TopicPartition(topic, p, low if from_start else high))
        self.consumer.assign(tps)

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        for _ in range(50):  # a topic created a moment ago may have no leader yet
            try:
                return self.consumer.get_watermark_offsets(tp, timeout=10)
            except KafkaException:
                time.sleep(0.2)
        return self.consumer.get_watermark_offsets(tp, timeout=10)

    def next(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.05)
            if msg is not None and not msg.error():
                value = msg.value()
                assert value is not None  # every record here has a value
                return value
        raise TimeoutError(f"nothing arrived in {timeout:.0f}s")

    def close(self) -> None:
        self.consumer.close()


@contextmanager
def worker(bootstrap: str, prefix: str, home: Path, **continuous_learning: object) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "RLHF_KAFKA__TOPIC_PREFIX": prefix,
        "RLHF_HOME": str(home),
        "RLHF_KAFKA__PARTITIONS": str(PARTITIONS),
        **{f"RLHF_CONTINUOUS_LEARNING__{k.upper()}": str(v) for k, v in continuous_learning.items()},
    }
    log = home / f"worker-{prefix.rstrip('.')}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf.cli", "streams", "worker", "-l", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    except BaseException:
        print(
            f"--- worker log ({log}), last lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
            file=sys.stderr,
        )
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(bootstrap: str, prefix: str, producer: Producer, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """The worker has joined and processes input: an invalid record comes back on the DLQ."""
    dlq = Tail(bootstrap, topic_name(prefix, "feedback-dlq"))
    try:
        producer.produce(topic_name(prefix, "feedback"), value=b"not json", key=b"probe")
        producer.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            try:
                dlq.next(1.0)
                return
            except TimeoutError:
                pass
        raise TimeoutError(f"worker not ready after {timeout:.0f}s")
    finally:
        dlq.close()


def finish(producer: Producer, prefix: str, trigger: TrainTrigger) -> None:
    """Report the triggered training as finished, so the gate lets the next trigger through."""
    status = TrainingStatus(trigger_id=trigger.trigger_id, policy=trigger.policy, state="finished")
    producer.produce(topic_name(prefix, "training-status"), value=status.to_bytes(), key=trigger.policy)
    producer.flush()


def bare_pipe(bootstrap: str, producer: Producer, batch: list[tuple[bytes, str, str]]) -> float:
    """Events/s of the same bytes through a bare producer and a bare consumer (first produce -> last read).
    The bytes are cycled up to BARE_MIN_EVENTS: a few thousand records take milliseconds, too short to time."""
    batch = [batch[i % len(batch)] for i in range(max(len(batch), BARE_MIN_EVENTS))]
    topic = f"bench-bare-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, **client_logging(bootstrap)})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result()
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, **client_logging(bootstrap), "group.id": "bench-unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    consumer.poll(0.5)  # connect and fetch metadata before the clock starts
    done = threading.Event()
    finished_at = [0.0]

    def consume() -> None:
        got = 0
        while got < len(batch):
            for msg in consumer.consume(1000, 0.1):
                if not msg.error():
                    got += 1
        finished_at[0] = time.perf_counter()
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    start = time.perf_counter()
    produce(producer, topic, batch)
    if not done.wait(120):
        raise TimeoutError("bare consumer did not read every record in 120s")
    reader.join()
    consumer.close()
    admin.delete_topics([topic])
    return len(batch) / (finished_at[0] - start)


def throughput(bootstrap: str, home: Path, events: int, repeats: int) -> tuple[list[float], list[float], list[float]]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=PARTITIONS))
    producer = Producer({"bootstrap.servers": bootstrap, **client_logging(bootstrap), **PRODUCER_DEFAULTS})
    batches = [make_events(events) for _ in range(repeats)]
    worker_rates, bare_rates, cpu_ms = [], [], []
    with worker(bootstrap, prefix, home, train_threshold=events, buffer_size=events) as proc:
        wait_ready(bootstrap, prefix, producer, proc)
        triggers = Tail(bootstrap, topic_name(prefix, "train-triggers"))
        try:
            for r, batch in enumerate(batches):
                start, cpu = time.perf_counter(), cpu_seconds(proc.pid)
                produce(producer, topic_name(prefix, "feedback"), batch)
                trigger = TrainTrigger.model_validate_json(triggers.next(300))
                elapsed = time.perf_counter() - start
                cpu_ms.append((cpu_seconds(proc.pid) - cpu) * 1000 / events)
                assert set(trigger.event_ids) == {e[2] for e in batch}, "the trigger does not cover exactly this repeat's events"
                finish(producer, prefix, trigger)
                bare = bare_pipe(bootstrap, producer, batch)
                worker_rates.append(events / elapsed)
                bare_rates.append(bare)
                print(
                    f"repeat {r + 1}: worker {events / elapsed:,.0f} accepted ev/s ({cpu_ms[-1]:.3f} CPU ms/event)   "
                    f"bare produce->consume {bare:,.0f} ev/s   ratio {events / elapsed / bare:.4f}",
                    flush=True,
                )
        finally:
            triggers.close()
    return worker_rates, bare_rates, cpu_ms


def latency(bootstrap: str, home: Path, threshold: int, count: int, settle_s: float) -> list[float]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=PARTITIONS))
    producer = Producer({"bootstrap.servers": bootstrap, **client_logging(bootstrap), **PRODUCER_DEFAULTS})
    feedback = topic_name(prefix, "feedback")
    samples = []
    with worker(bootstrap, prefix, home, train_threshold=threshold, buffer_size=max(1000, threshold)) as proc:
        wait_ready(bootstrap, prefix, producer, proc)
        triggers = Tail(bootstrap, topic_name(prefix, "train-triggers"))
        try:
            for i in range(count + 1):  # +1: the first is a warm-up
                batch = make_events(threshold)
                produce(producer, feedback, batch[:-1])
                time.sleep(settle_s)
                start = time.perf_counter()
                produce(producer, feedback, batch[-1:])
                trigger = TrainTrigger.model_validate_json(triggers.next(120))
                elapsed = time.perf_counter() - start
                assert trigger.event_ids[-1] == batch[-1][2], "the trigger was not the one this event crossed"
                finish(producer, prefix, trigger)
                if i > 0:
                    samples.append(elapsed)
        finally:
            triggers.close()
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events per throughput repeat (= that worker's threshold)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--triggers", type=int, default=20, help="latency samples (after one warm-up trigger)")
    parser.add_argument("--threshold", type=int, default=100, help="train_threshold of the latency worker")
    args = parser.parse_args()
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="rlhf-bench-streams-") as tmp:
        home = Path(tmp)
        worker_rates, bare_rates, cpu_ms = throughput(bootstrap, home, args.events, args.repeats)
        # Long enough for the worker to take the threshold-1 events before the crossing one, at its measured rate.
        settle_s = max(1.0, 3 * args.threshold / min(worker_rates))
        lat = latency(bootstrap, home, args.threshold, args.triggers, settle_s)
        ms = [s * 1000 for s in lat]
        print(
            f"trigger latency over {len(ms)} triggers (threshold {args.threshold}): p50 {percentile(ms, 50):.0f} ms  "
            f"p99 {percentile(ms, 99):.0f} ms  (min {min(ms):.0f}, max {max(ms):.0f})"
        )
        ratio = median([w / b for w, b in zip(worker_rates, bare_rates, strict=True)])
        print(
            f"\nmedian of {args.repeats}: worker {median(worker_rates):,.0f} accepted events/s "
            f"({median(cpu_ms):.3f} CPU ms/event), "
            f"bare broker produce->consume {median(bare_rates):,.0f} events/s, ratio {ratio:.4f}; "
            f"trigger latency p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms (os.cpu_count() {os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
