"""Analytics benchmark: sink throughput, and the per-user A/B analysis over 10 million feedback rows
next to the same per-user aggregation in pandas on the same data, in one run.

    python -m bench.analytics [--events 100000] [--rows 10000000] [--repeats 3] [--skip-sink] [--skip-query]

Sink: `--events` events (feedback, exposures, interactions) are produced to a broker (yours via
KAFKA_BOOTSTRAP_SERVERS, or a throwaway local one), then the real `Sink` drains them into embedded
chdb; rows/s is measured from its first commit to its last (so the group join is not counted).

Analysis: `--rows` feedback rows from `--rows / 4` users (a heavy-tailed number each; a fifth of the
rows are feedback from before the user's exposure, the CUPED history) and one exposure per user
are inserted into embedded chdb, each row the verdict on an answer of its own (a distinct
interaction id). The `ab_users` named query (deduplicated with FINAL; the latest verdict per
answer; per user and variant, then per variant: the sums analytics.decision reads, with each user's
pre-experiment positive rate) is timed against pandas doing the same work on the same rows (drop
duplicate ids, the latest verdict per answer, first exposure per user, history before it, per-user
then per-variant sums); both results must agree column by column and give the same decision. Text
columns the aggregation never reads are left empty in both. Medians of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

if __name__ == "__main__":
    # Run as `python bench/analytics.py`, this folder heads sys.path and this file would shadow
    # the `analytics` package; the repository root must come first.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import pandas as pd
import pyarrow as pa

from analytics.clickhouse import Warehouse, open_warehouse
from analytics.decision import SUM_COLUMNS, Arm, decide, user_terms
from analytics.queries import run_query
from analytics.tables import EXPOSURES, FEEDBACK, Table
from bench._kafka import broker, median
from consumers.sink.consumer import Sink
from core.settings import Settings, load_settings
from schemas import ExposureEvent, FeedbackEvent, InteractionEvent
from schemas.topics import topic_name
from sdk.admin import create_topics
from sdk.client import FeedbackClient

START = datetime(2025, 1, 1, tzinfo=UTC)
VARIANTS = np.array(["control", "variant_a"])


# --- sink throughput -----------------------------------------------------------------------


def sink_payload(n: int) -> list[tuple[str, bytes, str]]:
    """(topic, value, key) for n events: per user one exposure, then interactions and feedback."""
    rng = random.Random(7)
    out: list[tuple[str, bytes, str]] = []
    while len(out) < n:
        user, variant = f"user-{len(out)}", rng.choice(VARIANTS.tolist())
        common = dict(user_id=user, experiment="policy-ab", variant=variant, model_version=f"{variant}-v1")
        out.append(("exposures", ExposureEvent(timestamp=START, **common).to_bytes(), user))
        for _ in range(3):
            inter = InteractionEvent(
                timestamp=START, query="How do I reset my password?", response="Open Settings.", latency_ms=120.0, **common
            )
            fb = FeedbackEvent(
                timestamp=START,
                interaction_id=inter.interaction_id,
                query=inter.query,
                response=inter.response,
                feedback_type="rating",
                rating=rng.randint(1, 5),
                **common,
            )
            out += [("interactions", inter.to_bytes(), user), ("feedback", fb.to_bytes(), user)]
    return out[:n]


def sink_rate(settings: Settings, warehouse: Warehouse, payload: list[tuple[str, bytes, str]]) -> float:
    prefix = settings.kafka.topic_prefix
    create_topics(settings.kafka)
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


# --- per-user A/B analysis vs pandas ------------------------------------------------------


def synthetic_tables(rows: int, seed: int = 1) -> tuple[pa.Table, pa.Table]:
    """Exposures (one per user, `rows` // 4 users) and `rows` feedback rows, as Arrow: heavy users
    give much of the feedback, a fifth of it from before their exposure (outside the experiment),
    and the treatment has a small planted effect on ratings."""
    rng = np.random.default_rng(seed)
    n_users, n_fb = rows // 4, rows
    users = np.char.add("user-", np.arange(n_users).astype(str))
    user_variant = rng.integers(0, 2, n_users)
    ts_exp = START + pd.to_timedelta(rng.integers(7 * 86_400, 21 * 86_400, n_users), unit="s")
    exposures = {
        "exposure_id": np.char.add("e-", np.arange(n_users).astype(str)),
        "user_id": users,
        "model_version": np.char.add(VARIANTS[user_variant], "-v1"),
        "experiment": np.full(n_users, "policy-ab"),
        "variant": VARIANTS[user_variant],
        "interaction_id": np.full(n_users, ""),
        "ts": ts_exp,
    }
    who = np.minimum(rng.zipf(1.5, n_fb), n_users) - 1  # user 0 is the heaviest
    who = rng.permutation(n_users)[who]
    before = rng.random(n_fb) < 0.2
    variant = user_variant[who]
    kind = rng.choice(np.array(["thumbs_up", "thumbs_down", "rating", "correction"]), n_fb, p=[0.35, 0.2, 0.35, 0.1])
    rating = np.where(kind == "rating", rng.integers(1, 6, n_fb) + (variant & (rng.random(n_fb) < 0.05)), 0).clip(0, 5)
    positive = (kind == "thumbs_up") | (rating >= 4)
    reward = np.select([kind == "thumbs_up", kind == "rating"], [1.0, (rating - 1) / 4], 0.0)
    shift = pd.to_timedelta(np.where(before, -rng.integers(60, 7 * 86_400, n_fb), 300), unit="s")
    feedback = {
        "event_id": np.char.add("f-", np.arange(n_fb).astype(str)),
        "interaction_id": np.char.add("i-", np.arange(n_fb).astype(str)),  # each row the verdict on an answer of its own
        "user_id": users[who],
        "model_version": np.char.add(VARIANTS[variant], "-v1"),
        "experiment": np.where(before, "", "policy-ab"),
        "variant": np.where(before, "", VARIANTS[variant]),
        "policy": np.full(n_fb, "assistant"),
        "feedback_type": kind,
        "rating": pa.array(rating.astype(np.uint8), mask=kind != "rating"),
        "correction": np.full(n_fb, ""),
        "positive": positive.astype(np.uint8),
        "reward": reward,
        "query": np.full(n_fb, ""),
        "response": np.full(n_fb, ""),
        # One-turn conversations (as a version 1 event is stored): the A/B query reads none of these.
        "conversation_id": np.char.add("f-", np.arange(n_fb).astype(str)),
        "turn_index": np.zeros(n_fb, np.uint16),
        "context": np.full(n_fb, "[]"),
        "context_turns": np.zeros(n_fb, np.uint16),
        "context_chars": np.zeros(n_fb, np.uint32),
        "metadata": np.full(n_fb, "{}"),
        "ts": ts_exp[who] + shift,
    }
    return _arrow(exposures, EXPOSURES), _arrow(feedback, FEEDBACK)


def _arrow(columns: dict, table: Table) -> pa.Table:
    return pa.Table.from_pydict({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()}).cast(table.schema)


def pandas_ab_users(exposures: pd.DataFrame, feedback: pd.DataFrame, experiment: str = "policy-ab") -> pd.DataFrame:
    """What the `ab_users` query computes, in pandas: dedupe ids (FINAL), the latest verdict per answer
    (a correction kept beside it), each user's first exposure and their feedback before it, per-user
    sums in the experiment, then per-variant sums."""
    exp = exposures[exposures["experiment"] == experiment].drop_duplicates("exposure_id", keep="last").sort_values("ts")
    fb = feedback.drop_duplicates("event_id", keep="last")
    fb = (
        fb.assign(c=fb["feedback_type"] == "correction")
        .sort_values(["ts", "event_id"])
        .drop_duplicates(["interaction_id", "c"], keep="last")
    )
    first = exp.groupby("user_id").agg(variant=("variant", "first"), first_exposure=("ts", "first"))
    during = fb[fb["experiment"] == experiment]
    during = during.assign(d=during["feedback_type"] == "thumbs_down", r=during["rating"].notna(), s=during["rating"].fillna(0))
    u = during.groupby(["variant", "user_id"]).agg(
        f=("event_id", "size"), p=("positive", "sum"), d=("d", "sum"), r=("r", "sum"), s=("s", "sum")
    )
    seen = fb.merge(first[["first_exposure"]], left_on="user_id", right_index=True)
    history = (
        seen[seen["ts"] < seen["first_exposure"]].groupby("user_id").agg(pre_f=("event_id", "size"), pre_p=("positive", "sum"))
    )
    u = (
        u.reset_index()
        .merge(history, on="user_id", how="left")
        .fillna({"pre_f": 0, "pre_p": 0})
        .astype({"f": float, "p": float, "d": float, "r": float, "s": float})
    )
    h = (u["pre_f"] > 0).astype(float)
    x = (u["pre_p"] / u["pre_f"].where(u["pre_f"] > 0)).fillna(0.0)
    sums = (
        pd.DataFrame({"variant": u["variant"], **user_terms(u["f"], u["p"], u["d"], u["r"], u["s"], h, x)})
        .groupby("variant")
        .sum()
    )
    exposed = first.groupby("variant").size().rename("users_exposed")
    return sums.join(exposed, how="outer").fillna(0).reset_index()


T = TypeVar("T")


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    times: list[float] = []
    result: T
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return median(times), result


def bench_query(warehouse: Warehouse, settings: Settings, rows: int, repeats: int) -> None:
    start = time.perf_counter()
    exposures, feedback = synthetic_tables(rows)
    print(
        f"generated {exposures.num_rows:,} exposures + {feedback.num_rows:,} feedback rows in {time.perf_counter() - start:.1f} s"
    )
    start = time.perf_counter()
    for name, table in (("exposures", exposures), ("feedback", feedback)):
        for chunk in table.to_batches(max_chunksize=1_000_000):
            with warehouse.locked() as client:
                client.insert_arrow(name, pa.Table.from_batches([chunk]))
    took = time.perf_counter() - start
    print(f"inserted into chdb in {took:.1f} s ({(exposures.num_rows + feedback.num_rows) / took:,.0f} rows/s, insert_arrow)")
    ch_s, ch = timed(lambda: run_query(warehouse, "ab_users", {"experiment": "policy-ab"}), repeats)
    needed = ["event_id", "interaction_id", "user_id", "experiment", "variant", "feedback_type", "rating", "positive", "ts"]
    exp_df, fb_df = exposures.to_pandas(), feedback.select(needed).to_pandas()
    del exposures, feedback
    pd_s, pdf = timed(lambda: pandas_ab_users(exp_df, fb_df), repeats)
    ours, theirs = ch.set_index("variant").sort_index(), pdf.set_index("variant").sort_index()
    for column in SUM_COLUMNS:
        assert np.allclose(ours[column].to_numpy(float), theirs[column].to_numpy(float), rtol=1e-9), column
    decided = [decide([Arm.from_sums(v, frame.loc[v]) for v in frame.index], settings.ab_testing)[0] for frame in (ours, theirs)]
    figures = [d.statistics() for d in decided]
    assert decided[0].action == decided[1].action and figures[0].keys() == figures[1].keys()
    assert np.allclose([figures[0][k] for k in figures[0]], [figures[1][k] for k in figures[0]], rtol=1e-6)
    print(
        f"per-user A/B analysis over {len(fb_df):,} feedback rows ({len(exp_df):,} users), median of {repeats}: "
        f"ClickHouse (chdb, FINAL) {ch_s:.2f} s, pandas on the same data {pd_s:.2f} s, "
        f"ratio pandas/ClickHouse {pd_s / ch_s:.1f}x "
        f"(same per-variant sums; decision: {decided[0].summary()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10_000_000, help="Feedback rows of the analysis (users: a quarter of it).")
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
                    settings = load_settings(
                        None,
                        home=Path(tmp),
                        kafka={"bootstrap_servers": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:6]}."},
                        clickhouse={"path": Path(tmp) / "chdb", "database": f"bench_sink_{r}"},
                    )
                    sink_warehouse = open_warehouse(settings)
                    rates.append(sink_rate(settings, sink_warehouse, payload))
                    sink_warehouse.close()
                    print(
                        f"sink run {r + 1}: {rates[-1]:,.0f} rows/s "
                        f"({len(payload):,} events, batch {settings.clickhouse.batch_rows})"
                    )
            print(
                f"sink, median of {args.repeats}: {median(rates):,.0f} rows/s "
                "(Kafka -> validate -> Arrow -> chdb, commit after insert)\n"
            )
        if not args.skip_query:
            bench_query(warehouse, base, args.rows, args.repeats)


if __name__ == "__main__":
    main()
