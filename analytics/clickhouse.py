"""The ClickHouse connection and migrations: one clickhouse-connect `Client` for both deployments.

Embedded (default): the chdb engine in-process on `settings.clickhouse_path`. chdb lets only one
process open a path, so in embedded mode the sink process owns it and serves the dashboard and
`/sql`; everything else asks that process. Server: `clickhouse.url` (`RLHF_CLICKHOUSE__URL` or the
yaml) names a ClickHouse server and any process may connect. The SQL is the same for both.

Migrations are code (`MIGRATIONS`), applied in order at connect; every statement is idempotent
(`IF NOT EXISTS`) and applied ids are recorded, so a crash half-way is repaired by the next start.

Redelivery never double counts: the event tables are ReplacingMergeTree keyed on the event id
(read them with FINAL), and the sink skips ids already stored before inserting, so the
materialized views, which see every inserted block, count each event once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from analytics.errors import ClickHouseError
from analytics.tables import (
    CONSUMER_LAG,
    CONVERSATION,
    COUNTS,
    DEAD_LETTERS,
    ERASURES,
    EVENT_TABLES,
    EXPERIMENTS,
    FEEDBACK,
    INTERACTIONS,
    USER_TABLES,
    WINDOW_METRICS,
    Table,
    dead_letter_names_user,
)
from core.settings import Settings

Mode = Literal["chdb", "server"]


@dataclass(frozen=True)
class Migration:
    id: str
    statements: tuple[str, ...]


def add_columns(table: Table, after: str, names: Sequence[str], defaults: Mapping[str, str] | None = None) -> str:
    """ALTER TABLE adding `table`'s declared columns `names` where missing, in order after `after`, so
    an existing table ends as analytics.tables declares it (a fresh one already is: it skips them).
    `defaults` are ClickHouse expressions for what the rows stored before the column read."""
    declared = {c.name: c for c in table.columns}
    columns = [replace(declared[name], default=(defaults or {}).get(name, declared[name].default)) for name in names]
    places = (after, *names[:-1])
    clauses = (f"ADD COLUMN IF NOT EXISTS {c.ddl} AFTER {place}" for c, place in zip(columns, places, strict=True))
    return f"ALTER TABLE {table.name} {', '.join(clauses)}"


# Rows stored before schema version 2 read as a version 1 event does: its own conversation, turn 0, no context.
_BEFORE_CONVERSATIONS = {"conversation_id": "interaction_id", "context": "'[]'"}

MIGRATIONS: tuple[Migration, ...] = (
    # Created as analytics.tables declares them. A later column change needs its own migration
    # (ALTER ... IF NOT EXISTS), which a fresh database, created in the new shape here, passes through.
    Migration("0001_event_tables", tuple(table.ddl() for table in EVENT_TABLES)),
    Migration(
        "0002_variant_daily",
        (
            # One row per (experiment, variant, model version, day), fed by three views; a view
            # leaves the columns it does not produce at their zero state.
            """CREATE TABLE IF NOT EXISTS variant_daily (
            experiment LowCardinality(String), variant LowCardinality(String), model_version LowCardinality(String), day Date,
            users_exposed AggregateFunction(uniqExact, String),
            exposures SimpleAggregateFunction(sum, UInt64),
            interactions SimpleAggregateFunction(sum, UInt64),
            feedback SimpleAggregateFunction(sum, UInt64),
            thumbs_up SimpleAggregateFunction(sum, UInt64),
            thumbs_down SimpleAggregateFunction(sum, UInt64),
            ratings SimpleAggregateFunction(sum, UInt64),
            rating_sum SimpleAggregateFunction(sum, UInt64),
            corrections SimpleAggregateFunction(sum, UInt64),
            positives SimpleAggregateFunction(sum, UInt64),
            reward_sum SimpleAggregateFunction(sum, Float64)
        ) ENGINE = AggregatingMergeTree ORDER BY (experiment, variant, model_version, day)""",
            """CREATE MATERIALIZED VIEW IF NOT EXISTS variant_daily_exposures_mv TO variant_daily AS
            SELECT experiment, variant, model_version, toDate(ts) AS day,
                   uniqExactState(user_id) AS users_exposed, toUInt64(count()) AS exposures
            FROM exposures GROUP BY experiment, variant, model_version, day""",
            """CREATE MATERIALIZED VIEW IF NOT EXISTS variant_daily_interactions_mv TO variant_daily AS
            SELECT experiment, variant, model_version, toDate(ts) AS day, toUInt64(count()) AS interactions
            FROM interactions GROUP BY experiment, variant, model_version, day""",
            """CREATE MATERIALIZED VIEW IF NOT EXISTS variant_daily_feedback_mv TO variant_daily AS
            SELECT experiment, variant, model_version, toDate(ts) AS day,
                   toUInt64(count()) AS feedback,
                   toUInt64(countIf(feedback_type = 'thumbs_up')) AS thumbs_up,
                   toUInt64(countIf(feedback_type = 'thumbs_down')) AS thumbs_down,
                   toUInt64(countIf(rating IS NOT NULL)) AS ratings,
                   toUInt64(sum(ifNull(rating, 0))) AS rating_sum,
                   toUInt64(countIf(feedback_type = 'correction')) AS corrections,
                   toUInt64(sum(positive)) AS positives,
                   sum(reward) AS reward_sum
            FROM feedback GROUP BY experiment, variant, model_version, day""",
        ),
    ),
    Migration("0003_experiments", (EXPERIMENTS.ddl(),)),
    Migration("0004_dead_letters_and_lag", (DEAD_LETTERS.ddl(), CONSUMER_LAG.ddl())),
    Migration("0005_erasures", (ERASURES.ddl(),)),
    Migration(
        "0006_pii_counts", (f"ALTER TABLE {WINDOW_METRICS.name} ADD COLUMN IF NOT EXISTS pii {COUNTS.sql} AFTER rating_count",)
    ),
    Migration(
        "0007_conversations",
        tuple(
            add_columns(table, "response", [c.name for c in CONVERSATION], _BEFORE_CONVERSATIONS)
            for table in (INTERACTIONS, FEEDBACK)
        ),
    ),
)


@dataclass
class Warehouse:
    """A migrated client plus the lock that serialises it: the sink and the dashboard threads share one."""

    client: Client
    mode: Mode
    database: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def locked(self) -> Iterator[Client]:
        with self._lock:
            yield self.client

    def query_df(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pd.DataFrame:
        with self.locked() as c:
            return c.query_df(sql, parameters=dict(parameters or {}))

    def insert_new(self, table: Table, rows: pa.Table) -> int:
        """Insert the rows whose id is not stored yet; returns how many were inserted.

        The check matters after a crash between insert and commit: the redelivered batch is
        skipped here, so the materialized views never see an event twice.
        """
        id_col = table.id_column
        with self.locked() as c:
            if id_col is not None and rows.num_rows:
                ids = rows.column(id_col).to_pylist()
                stored = {
                    r[0]
                    for r in c.query(
                        f"SELECT DISTINCT {id_col} FROM {table.name} WHERE {id_col} IN {{ids:Array(String)}}",
                        parameters={"ids": ids},
                    ).result_rows
                }
                if stored:
                    rows = rows.filter(pa.array([i not in stored for i in ids]))
            if rows.num_rows:
                c.insert_arrow(table.name, rows)
        return int(rows.num_rows)

    def erased_users(self) -> set[str]:
        with self.locked() as c:
            return {r[0] for r in c.query(f"SELECT user_id FROM {ERASURES.name} FINAL").result_rows}

    def forget_users(self, users: list[str]) -> int:
        """Delete every row of `users`: their events, and dead letters whose text names them as
        `"user_id": "..."` (a letter is the raw record, which may not parse). Idempotent; returns
        how many users."""
        with self.locked() as c:
            for table in USER_TABLES:
                c.command(f"DELETE FROM {table.name} WHERE user_id IN {{users:Array(String)}}", parameters={"users": users})
            named = f"arrayExists(u -> {dead_letter_names_user('u')}, {{users:Array(String)}})"
            c.command(f"DELETE FROM {DEAD_LETTERS.name} WHERE {named}", parameters={"users": users})
        return len(users)

    def close(self) -> None:
        with self.locked() as c:
            c.close()


def server_url(settings: Settings) -> str | None:
    url = settings.clickhouse.url
    return url.get_secret_value() if url is not None else None


def mode_of(settings: Settings) -> Mode:
    return "server" if server_url(settings) else "chdb"


def get_client(settings: Settings, migrate: bool = True) -> Client:
    """The clickhouse-connect client for this deployment, on the project database, schema migrated."""
    import clickhouse_connect  # the chdb interface imports chdb (~420 MB RSS) only when asked for

    url = server_url(settings)
    try:
        if url:
            client = clickhouse_connect.get_client(dsn=url)
        else:
            settings.clickhouse_path.parent.mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(interface="chdb", path=str(settings.clickhouse_path))
        client.command(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse.database}")
        client.database = settings.clickhouse.database
        if migrate:
            apply_migrations(client)
    except ClickHouseError:
        raise
    except Exception as exc:
        where = "ClickHouse server" if url else f"embedded chdb at {settings.clickhouse_path}"
        hint = " (another process, e.g. a running sink, owns this path)" if "lock" in str(exc).lower() else ""
        raise ClickHouseError(f"{where}: {exc}{hint}") from exc
    return client


def open_warehouse(settings: Settings) -> Warehouse:
    return Warehouse(get_client(settings), mode_of(settings), settings.clickhouse.database)


def apply_migrations(client: Client) -> list[str]:
    """Apply the migrations not yet recorded; returns the ids applied now."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (id String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY id"
    )
    done = {r[0] for r in client.query("SELECT id FROM schema_migrations FINAL").result_rows}
    applied = []
    for migration in MIGRATIONS:
        if migration.id in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert("schema_migrations", [[migration.id]], column_names=["id"])
        applied.append(migration.id)
    return applied
