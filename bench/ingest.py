"""Producer SDK throughput next to a bare confluent-kafka producer sending the same bytes.

    python bench/ingest.py [--events 100000] [--repeats 3]

Both use the SDK's producer settings (idempotent, acks=all, lz4) and a delivery callback, and
both are timed to the final flush (every event acknowledged), after one untimed event that
opens the connection, fetches metadata and gets the idempotent producer id (the SDK runs first
on a freshly created topic and would otherwise pay for its leader election alone). The SDK additionally validates each
event from a plain dict, serialises it and keys it. Prints events/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Producer

from bench._kafka import broker, median
from sdk.client import PRODUCER_DEFAULTS, FeedbackClient
from schemas.topics import topic_name
from sdk.admin import create_topics


def event_fields(n: int) -> list[dict]:
    kinds = ("thumbs_up", "thumbs_down", "rating", "correction")
    out = []
    for i in range(n):
        kind = kinds[i % 4]
        extra = {"rating": 1 + i % 5} if kind == "rating" else {"correction": f"Open Settings then Reset ({i})"} if kind == "correction" else {}
        out.append(dict(interaction_id=f"i-{i}", user_id=f"user-{i % 5000}", query=f"How do I reset my password in app {i % 50}?",
                        response="Open Settings, go to Account, then press Reset.", model_version="v1", feedback_type=kind, **extra))  # fmt: skip
    return out


def run_sdk(bootstrap: str, prefix: str, fields: list[dict]) -> tuple[float, list[tuple[bytes, str]]]:
    client = FeedbackClient(bootstrap, prefix, collection_rate=1.0)
    client.feedback(**fields[0])  # untimed: connection, metadata, producer id
    client.flush()
    start = time.perf_counter()
    events = [client.feedback(**f) for f in fields]
    client.flush()
    elapsed = time.perf_counter() - start
    return len(fields) / elapsed, [(e.to_bytes(), e.user_id) for e in events]


def run_bare(bootstrap: str, topic: str, payload: list[tuple[bytes, str]]) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS})
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    producer.produce(topic, value=payload[0][0], key=payload[0][1])  # untimed: connection, metadata, producer id
    producer.flush()
    start = time.perf_counter()
    for value, key in payload:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush()
    elapsed = time.perf_counter() - start
    assert not errors, errors[:3]
    return len(payload) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    fields = event_fields(args.events)
    with broker() as bootstrap:
        sdk_rates, bare_rates = [], []
        for r in range(args.repeats):
            prefix = f"bench{uuid.uuid4().hex[:6]}."
            create_topics(bootstrap, prefix, 3)
            sdk, payload = run_sdk(bootstrap, prefix, fields)
            bare = run_bare(bootstrap, topic_name(prefix, "feedback"), payload)
            sdk_rates.append(sdk)
            bare_rates.append(bare)
            print(f"run {r + 1}: sdk {sdk:,.0f} ev/s   bare {bare:,.0f} ev/s   ratio {sdk / bare:.2f}")
        ratio = median([s / b for s, b in zip(sdk_rates, bare_rates)])
        print(f"\nmedian of {args.repeats}: SDK {median(sdk_rates):,.0f} events/s, bare confluent-kafka {median(bare_rates):,.0f} events/s, "
              f"ratio {ratio:.2f} (target >= 0.70), {len(payload[0][0])} B/event")  # fmt: skip


if __name__ == "__main__":
    main()
