"""Analytics benchmark: sink throughput, and the A/B analysis query over 10 million rows next to
the same aggregation in pandas on the same data, in one run.

    python bench/analytics.py [--events 100000] [--rows 10000000] [--repeats 3] [--skip-sink] [--skip-query]

Sink: `--events` events (feedback, exposures, interactions) are produced to a broker (yours via
KAFKA_BOOTSTRAP_SERVERS, or a throwaway local one), then the real `Sink` drains them into embedded
chdb; rows/s is measured from its first commit to its last (so the group join is not counted).

Query: `--rows` rows (a quarter exposures, the rest feedback) are inserted into embedded chdb;
the `ab_summary` named query (deduplicated with FINAL, per variant: exposed users, counts,
rating and reward moments) is timed against pandas doing the same work on the same rows
(drop duplicate ids, group by variant, nunique users, means, variances). Text columns are left
empty in both: the aggregation never reads them. Medians of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__":
    # Run as `python bench/analytics.py`, this folder heads sys.path and this file would shadow
    # the `analytics` package; the repository root must come first.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import pandas as pd
import pyarrow as pa

from analytics.clickhouse import Warehouse, open_warehouse
from analytics.queries import run_query
from analytics.tables import EXPOSURES, FEEDBACK, Table
from bench._kafka import broker, median
from consumers.sink.consumer import Sink
from core.settings import Settings, load_settings
from sdk.client import FeedbackClient
from schemas.topics import topic_name
from sdk.admin import create_topics
from schemas import ExposureEvent, FeedbackEvent, InteractionEvent

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
VARIANTS = np.array(["control", "variant_a"])


# --- sink throughput -----------------------------------------------------------------------

def sink_payload(n: int) -> list[tuple[str, bytes, str]]:
    """(topic, value, key) for n events: per user one exposure, then interactions and feedback."""
    rng, out = random.Random(7), []
    while len(out) < n:
        user, variant = f"user-{len(out)}", rng.choice(VARIANTS.tolist())
        common = dict(user_id=user, experiment="policy-ab", variant=variant, model_version=f"{variant}-v1")
        out.append(("exposures", ExposureEvent(timestamp=START, **common).to_bytes(), user))
        for _ in range(3):
            inter = InteractionEvent(timestamp=START, query="How do I reset my password?", response="Open Settings.", latency_ms=120.0, **common)
            fb = FeedbackEvent(timestamp=START, interaction_id=inter.interaction_id, query=inter.query, response=inter.response,
                               feedback_type="rating", rating=rng.randint(1, 5), **common)  # fmt: skip
            out += [("interactions", inter.to_bytes(), user), ("feedback", fb.to_bytes(), user)]
    return out[:n]


def sink_rate(settings: Settings, warehouse: Warehouse, payload: list[tuple[str, bytes, str]]) -> float:
    prefix = settings.kafka.topic_prefix
    create_topics(settings.kafka.bootstrap_servers, prefix, settings.kafka.partitions)
    with FeedbackClient(settings.kafka.bootstrap_servers, prefix) as client:
        for topic, value, key in payload:
            client.send_bytes(topic_name(prefix, topic), value, key)
    sink, stop = Sink(settings, warehouse), threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,))
    thread.start()
    first: tuple[float, int] | None = None
    while sink.stats.messages < len(payload):
        if first is None and sink.stats.messages:
            first = (time.perf_counter(), sink.stats.messages)
        time.sleep(0.005)
    end = time.perf_counter()
    stop.set()
    thread.join()
    assert first is not None and sink.stats.inserted == len(payload), sink.stats
    return (len(payload) - first[1]) / (end - first[0])


# --- A/B query vs pandas -------------------------------------------------------------------

def synthetic_tables(rows: int, seed: int = 1) -> tuple[pa.Table, pa.Table]:
    """Exposures (a quarter of the rows) and feedback with a small planted effect, as Arrow."""
    rng = np.random.default_rng(seed)
    n_exp, n_fb = rows // 4, rows - rows // 4
    users = np.char.add("user-", np.arange(n_exp).astype(str))
    user_variant = rng.integers(0, 2, n_exp)
    ts_exp = START + pd.to_timedelta(rng.integers(0, 14 * 86_400, n_exp), unit="s")
    exposures = {
        "exposure_id": np.char.add("e-", np.arange(n_exp).astype(str)), "user_id": users, "model_version": np.char.add(VARIANTS[user_variant], "-v1"),
        "experiment": np.full(n_exp, "policy-ab"), "variant": VARIANTS[user_variant], "interaction_id": np.full(n_exp, ""), "ts": ts_exp,
    }  # fmt: skip
    who = rng.integers(0, n_exp, n_fb)
    variant = user_variant[who]
    kind = rng.choice(np.array(["thumbs_up", "thumbs_down", "rating", "correction"]), n_fb, p=[0.35, 0.2, 0.35, 0.1])
    rating = np.where(kind == "rating", rng.integers(1, 6, n_fb) + (variant & (rng.random(n_fb) < 0.05)), 0).clip(0, 5)
    positive = (kind == "thumbs_up") | (rating >= 4)
    reward = np.select([kind == "thumbs_up", kind == "rating"], [1.0, (rating - 1) / 4], 0.0)
    feedback = {
        "event_id": np.char.add("f-", np.arange(n_fb).astype(str)), "interaction_id": np.full(n_fb, ""), "user_id": users[who],
        "model_version": np.char.add(VARIANTS[variant], "-v1"), "experiment": np.full(n_fb, "policy-ab"), "variant": VARIANTS[variant],
        "policy": np.full(n_fb, "assistant"), "feedback_type": kind, "rating": pa.array(rating.astype(np.uint8), mask=kind != "rating"),
        "correction": np.full(n_fb, ""), "positive": positive.astype(np.uint8), "reward": reward, "query": np.full(n_fb, ""),
        "response": np.full(n_fb, ""), "metadata": np.full(n_fb, "{}"), "ts": ts_exp[who] + pd.Timedelta(minutes=5),
    }  # fmt: skip
    return _arrow(exposures, EXPOSURES), _arrow(feedback, FEEDBACK)


def _arrow(columns: dict, table: Table) -> pa.Table:
    return pa.Table.from_pydict({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()}).cast(table.schema)


def pandas_ab_summary(exposures: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """What the `ab_summary` query computes, in pandas: dedupe ids (FINAL), then per-variant aggregates."""
    exp = exposures[exposures["experiment"] == "policy-ab"].drop_duplicates("exposure_id", keep="last")
    fb = feedback[feedback["experiment"] == "policy-ab"].drop_duplicates("event_id", keep="last")
    e = exp.groupby("variant").agg(users_exposed=("user_id", "nunique"), exposures=("exposure_id", "size"))
    g = fb.assign(thumbs_down=fb["feedback_type"] == "thumbs_down", thumbs_up=fb["feedback_type"] == "thumbs_up").groupby("variant")
    f = g.agg(feedback=("event_id", "size"), positives=("positive", "sum"), thumbs_up=("thumbs_up", "sum"), thumbs_down=("thumbs_down", "sum"),
              ratings=("rating", "count"), rating_mean=("rating", "mean"), rating_var=("rating", "var"),
              reward_mean=("reward", "mean"), reward_var=("reward", "var"))  # fmt: skip
    return e.join(f, how="outer").reset_index()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return median(times), result


def bench_query(warehouse: Warehouse, rows: int, repeats: int) -> None:
    start = time.perf_counter()
    exposures, feedback = synthetic_tables(rows)
    print(f"generated {exposures.num_rows:,} exposures + {feedback.num_rows:,} feedback rows in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    for name, table in (("exposures", exposures), ("feedback", feedback)):
        for chunk in table.to_batches(max_chunksize=1_000_000):
            with warehouse.locked() as client:
                client.insert_arrow(name, pa.Table.from_batches([chunk]))
    print(f"inserted into chdb in {time.perf_counter() - start:.1f} s ({rows / (time.perf_counter() - start):,.0f} rows/s, insert_arrow)")
    ch_s, ch = timed(lambda: run_query(warehouse, "ab_summary", {"experiment": "policy-ab"}), repeats)
    exp_df, fb_df = exposures.to_pandas(), feedback.to_pandas()
    pd_s, pdf = timed(lambda: pandas_ab_summary(exp_df, fb_df), repeats)
    ours, theirs = ch.set_index("variant").sort_index(), pdf.set_index("variant").sort_index()
    for column in ("users_exposed", "feedback", "positives", "thumbs_down", "ratings"):
        assert np.array_equal(ours[column].to_numpy(np.int64), theirs[column].to_numpy(np.int64)), column
    for column in ("rating_mean", "rating_var", "reward_mean", "reward_var"):
        assert np.allclose(ours[column].to_numpy(float), theirs[column].to_numpy(float)), column
    print(f"A/B analysis over {rows:,} rows, median of {repeats}: ClickHouse (chdb, FINAL) {ch_s:.2f} s, "
          f"pandas on the same data {pd_s:.2f} s, ratio pandas/ClickHouse {pd_s / ch_s:.1f}x (same per-variant numbers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sink", action="store_true")
    parser.add_argument("--skip-query", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-ch-") as tmp:
        base = load_settings(None, home=Path(tmp), clickhouse={"path": Path(tmp) / "chdb", "database": "bench_query"})
        warehouse = open_warehouse(base)  # chdb: one path per process, a database per measurement
        if not args.skip_sink:
            payload = sink_payload(args.events)
            rates = []
            with broker() as bootstrap:
                for r in range(args.repeats):
                    settings = load_settings(None, home=Path(tmp), kafka={"bootstrap_servers": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}."},
                                             clickhouse={"path": Path(tmp) / "chdb", "database": f"bench_sink_{r}"})  # fmt: skip
                    sink_warehouse = open_warehouse(settings)
                    rates.append(sink_rate(settings, sink_warehouse, payload))
                    sink_warehouse.close()
                    print(f"sink run {r + 1}: {rates[-1]:,.0f} rows/s ({len(payload):,} events, batch {settings.clickhouse.batch_rows})")
            print(f"sink, median of {args.repeats}: {median(rates):,.0f} rows/s (Kafka -> validate -> Arrow -> chdb, commit after insert)\n")
        if not args.skip_query:
            bench_query(warehouse, args.rows, args.repeats)


if __name__ == "__main__":
    main()
