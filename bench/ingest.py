"""Producer SDK per-call latency and throughput, next to a bare confluent-kafka producer sending the
same bytes, with a healthy broker and with the broker unreachable.

    python bench/ingest.py [--events 100000] [--repeats 3] [--down-events 200000]

Healthy broker: both use the SDK's producer settings (idempotent, acks=all, lz4), both are timed to
the final flush (every event acknowledged), after one untimed event that opens the connection,
fetches metadata and gets the idempotent producer id. Each call is timed on its own: the SDK's
`feedback(**fields)` (validation from a plain dict, sampling, serialisation, the send) and its
`feedback(event)` with an already-validated event (the send path alone), beside the bare
producer's `produce()`. Events/s is printed as information, with the ratio SDK / bare.

Broker unreachable (a port nothing listens on): the SDK's calls, which spool, beside the bare
producer's `produce()`, which takes events until librdkafka's queue is full and then raises
BufferError for every further one (the loop the SDK used to run there waited for 5 minutes).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from bench._kafka import broker, median
from core.kafka_log import client_logging
from core.settings import KafkaSettings
from devtools.kafka_local import free_port
from schemas import FeedbackEvent, validate_event
from schemas.topics import topic_name
from sdk.admin import create_topics
from sdk.client import PRODUCER_DEFAULTS, FeedbackClient


def event_fields(n: int) -> list[dict]:
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
        out.append(
            dict(
                interaction_id=f"i-{i}",
                user_id=f"user-{i % 5000}",
                query=f"How do I reset my password in app {i % 50}?",
                response="Open Settings, go to Account, then press Reset.",
                model_version="v1",
                feedback_type=kind,
                **extra,
            )
        )
    return out


def quantiles(ns: list[int]) -> tuple[float, float, float, float]:
    """p50, p99, p99.9 and max, in microseconds."""
    s = sorted(ns)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))] / 1000  # noqa: E731
    return q(0.5), q(0.99), q(0.999), s[-1] / 1000


def fmt(ns: list[int]) -> str:
    p50, p99, p999, top = quantiles(ns)
    return f"p50 {p50:6.1f}  p99 {p99:7.1f}  p99.9 {p999:8.1f}  max {top:9.1f} µs"


def timed_calls(call, items) -> tuple[list[int], float]:
    """Time each call; return the latencies (ns) and the wall time of the whole loop."""
    lat, clock = [], time.perf_counter_ns
    start = time.perf_counter()
    for item in items:
        t = clock()
        call(item)
        lat.append(clock() - t)
    return lat, time.perf_counter() - start


def run_sdk(
    bootstrap: str, prefix: str, fields: list[dict], events: list[FeedbackEvent], spool: Path
) -> tuple[float, list[int], list[int]]:
    """events/s to the final flush and per-call latencies from dicts; then per-call latencies of the
    send path alone (pre-validated events, not part of the events/s)."""
    client = FeedbackClient(bootstrap, prefix, collection_rate=1.0, spool_dir=spool)
    client.feedback(**fields[0])  # untimed: connection, metadata, producer id
    client.flush()
    start = time.perf_counter()
    lat, _ = timed_calls(lambda f: client.feedback(**f), fields)
    client.flush()
    rate = len(fields) / (time.perf_counter() - start)
    send_lat, _ = timed_calls(client.feedback, events)
    client.close()
    return rate, lat, send_lat


def run_bare(bootstrap: str, topic: str, payload: list[tuple[bytes, str]]) -> tuple[float, list[int]]:
    producer = Producer({"bootstrap.servers": bootstrap, **client_logging(bootstrap), **PRODUCER_DEFAULTS})
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    def produce(item: tuple[bytes, str]) -> None:
        while True:
            try:
                producer.produce(topic, value=item[0], key=item[1], on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    producer.produce(topic, value=payload[0][0], key=payload[0][1])  # untimed: connection, metadata, producer id
    producer.flush()
    start = time.perf_counter()
    lat = []
    for item in payload:
        t = time.perf_counter_ns()
        produce(item)
        lat.append(time.perf_counter_ns() - t)
        producer.poll(0)  # serve callbacks (untimed): the SDK's pump does this off the caller's thread
    producer.flush()
    elapsed = time.perf_counter() - start
    assert not errors, errors[:3]
    return len(payload) / elapsed, lat


def run_down(fields: list[dict], spool: Path) -> tuple[list[int], float, str, list[int], int]:
    """Broker unreachable: SDK per-call latencies and events/s; bare produce() latencies of the
    accepted events and how many calls raised BufferError."""
    bootstrap = f"127.0.0.1:{free_port()}"
    payload = [(validate_event(FeedbackEvent, f).to_bytes(), f["user_id"]) for f in fields]
    gc.freeze()
    client = FeedbackClient(bootstrap, "down.", collection_rate=1.0, spool_dir=spool)
    lat, elapsed = timed_calls(lambda f: client.feedback(**f), fields)
    client.flush()
    stats = client.stats()
    client.close()
    producer = Producer({"bootstrap.servers": bootstrap, **client_logging(bootstrap), **PRODUCER_DEFAULTS})
    bare_lat, refused = [], 0
    for value, key in payload:
        t = time.perf_counter_ns()
        try:
            producer.produce("down.feedback", value=value, key=key)
            accepted = True
        except BufferError:
            accepted = False
        took = time.perf_counter_ns() - t
        if accepted:
            bare_lat.append(took)
        else:
            refused += 1
    producer.purge()
    producer.poll(0)
    return lat, len(fields) / elapsed, f"spooled {stats.spooled:,}, dropped {stats.dropped}, mode {stats.mode}", bare_lat, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--down-events", type=int, default=200_000)
    args = parser.parse_args()
    fields = event_fields(args.events)
    events = [validate_event(FeedbackEvent, f) for f in fields]
    payload = [(e.to_bytes(), e.user_id) for e in events]
    gc.freeze()  # the event lists above are long-lived: keep collections of them out of the timings
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-spool-") as spool_root, broker() as bootstrap:
        sdk_rates, bare_rates, p999 = [], [], []
        for r in range(args.repeats):
            prefix = f"bench{uuid.uuid4().hex[:6]}."
            create_topics(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=3))
            sdk, sdk_lat, send_lat = run_sdk(bootstrap, prefix, fields, events, Path(spool_root) / f"up{r}")
            bare, bare_lat = run_bare(bootstrap, topic_name(prefix, "feedback"), payload)
            sdk_rates.append(sdk)
            bare_rates.append(bare)
            p999.append((quantiles(sdk_lat)[2], quantiles(send_lat)[2], quantiles(bare_lat)[2]))
            print(f"run {r + 1} (broker healthy): sdk {sdk:,.0f} ev/s   bare {bare:,.0f} ev/s   ratio {sdk / bare:.2f}")
            print(f"  SDK feedback(**fields)     {fmt(sdk_lat)}")
            print(f"  SDK feedback(event)        {fmt(send_lat)}   (pre-validated: the send path)")
            print(f"  bare produce()             {fmt(bare_lat)}")
        ratio = median([s / b for s, b in zip(sdk_rates, bare_rates, strict=True)])
        print(
            f"\nhealthy, median of {args.repeats}: SDK {median(sdk_rates):,.0f} events/s, "
            f"bare confluent-kafka {median(bare_rates):,.0f} events/s, "
            f"ratio {ratio:.2f} (target >= 0.70), {len(payload[0][0])} B/event; "
            f"p99.9 µs (median): SDK call {median([p[0] for p in p999]):.1f}, "
            f"SDK send path {median([p[1] for p in p999]):.1f}, bare produce {median([p[2] for p in p999]):.1f}"
        )

        down_fields = event_fields(args.down_events)
        lat, rate, summary, bare_lat, refused = run_down(down_fields, Path(spool_root) / "down")
        print(f"\nbroker unreachable, {args.down_events:,} events: SDK {rate:,.0f} events/s accepted ({summary})")
        print(f"  SDK feedback(**fields)     {fmt(lat)}")
        print(
            f"  bare produce()             {fmt(bare_lat)}   "
            f"({len(bare_lat):,} queued, then {refused:,} calls raised BufferError: queue full)"
        )
        print(
            f"  ratio of p99.9 SDK / bare: {quantiles(lat)[2] / quantiles(bare_lat)[2]:.1f} "
            "(the SDK call includes validation from a dict)"
        )


if __name__ == "__main__":
    main()
