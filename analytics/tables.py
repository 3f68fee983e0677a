"""The event tables, each declared once: its columns give both the CREATE TABLE statement the
warehouse migrates with and the Arrow schema the sink inserts with, so the two cannot drift.

Every event table ends with `ts` (the event's time) and `ingested_at`, which ClickHouse fills
itself and the sink therefore never sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class ColumnType:
    sql: str
    arrow: pa.DataType

    @property
    def nullable(self) -> bool:
        return self.sql.startswith("Nullable(")


TEXT = ColumnType("String", pa.string())
LABEL = ColumnType("LowCardinality(String)", pa.string())  # few distinct values: versions, variants, kinds
FLOAT = ColumnType("Float64", pa.float64())
FLAG = ColumnType("UInt8", pa.uint8())
RATING = ColumnType("Nullable(UInt8)", pa.uint8())
COUNT = ColumnType("UInt64", pa.uint64())
SIGNED = ColumnType("Int64", pa.int64())
TIME = ColumnType("DateTime64(3, 'UTC')", pa.timestamp("ms", tz="UTC"))
METRICS = ColumnType("Map(String, Float64)", pa.map_(pa.string(), pa.float64()))
COUNTS = ColumnType("Map(LowCardinality(String), UInt64)", pa.map_(pa.string(), pa.uint64()))
SMALL = ColumnType("UInt16", pa.uint16())
SIZE = ColumnType("UInt32", pa.uint32())


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    default: str | None = None  # a ClickHouse expression; such a column is filled by ClickHouse, not sent
    codec: str | None = None  # ClickHouse's compression when not its default (LZ4)

    @property
    def ddl(self) -> str:
        default = f" DEFAULT {self.default}" if self.default else ""
        return f"{self.name} {self.type.sql}{default}" + (f" CODEC({self.codec})" if self.codec else "")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]
    engine: str = "ReplacingMergeTree"
    partition_by: str | None = None

    @property
    def id_column(self) -> str | None:
        """The event's own id when the table is keyed by it alone: the sink skips ids already stored."""
        return self.order_by[0] if len(self.order_by) == 1 else None

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the rows the sink sends: every column without a default."""
        return pa.schema([pa.field(c.name, c.type.arrow, nullable=c.type.nullable) for c in self.columns if c.default is None])

    def to_arrow(self, rows: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=self.schema)

    def ddl(self) -> str:
        partition = f" PARTITION BY {self.partition_by}" if self.partition_by else ""
        # A single key stays bare: ClickHouse would record `(id)` as a different sorting key than `id`.
        order = self.order_by[0] if len(self.order_by) == 1 else f"({', '.join(self.order_by)})"
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(c.ddl for c in self.columns)}) "
            f"ENGINE = {self.engine}{partition} ORDER BY {order}"
        )


def _columns(*declared: tuple[str, ColumnType] | Column) -> tuple[Column, ...]:
    columns = (c if isinstance(c, Column) else Column(*c) for c in declared)
    return (*columns, Column("ts", TIME), Column("ingested_at", TIME, default="now64(3)"))


# Experiment and variant are '' outside an experiment, never NULL: the views GROUP BY them.
_AB = (("model_version", LABEL), ("experiment", LABEL), ("variant", LABEL))
_MONTHLY = "toYYYYMM(ts)"
# The answered turn's place in its conversation (schemas.events.ConversationEvent), after the answer's
# text in both tables: conversation_id is the interaction's own id for a version 1 event, context the
# earlier turns as JSON (`[{"role": "system", "content": "..."}, ...]`, `[]` for a first turn). Each
# turn repeats the turns before it; ZSTD stores that about half the size LZ4 does (8-turn
# conversations: 3.4 vs 6.5 MiB for 25 MiB of context, docs/event-versions.md).
CONVERSATION = (
    Column("conversation_id", TEXT),
    Column("turn_index", SMALL),
    Column("context", TEXT, codec="ZSTD(3)"),
    Column("context_turns", SMALL),
    Column("context_chars", SIZE),
)

INTERACTIONS = Table(
    "interactions",
    _columns(
        ("interaction_id", TEXT),
        ("user_id", TEXT),
        *_AB,
        ("latency_ms", FLOAT),
        ("query", TEXT),
        ("response", TEXT),
        *CONVERSATION,
    ),
    order_by=("interaction_id",),
    partition_by=_MONTHLY,
)

# positive and reward are derived once, at ingestion (consumers.sink.rows.feedback_row).
FEEDBACK = Table(
    "feedback",
    _columns(
        ("event_id", TEXT),
        ("interaction_id", TEXT),
        ("user_id", TEXT),
        *_AB,
        ("policy", LABEL),
        ("feedback_type", LABEL),
        ("rating", RATING),
        ("correction", TEXT),
        ("positive", FLAG),
        ("reward", FLOAT),
        ("query", TEXT),
        ("response", TEXT),
        *CONVERSATION,
        ("metadata", TEXT),
    ),
    order_by=("event_id",),
    partition_by=_MONTHLY,
)

EXPOSURES = Table(
    "exposures",
    _columns(
        ("exposure_id", TEXT),
        ("user_id", TEXT),
        *_AB,
        ("interaction_id", TEXT),
    ),
    order_by=("exposure_id",),
    partition_by=_MONTHLY,
)

# A window may be re-emitted with late events: the latest emission (ts) replaces the earlier.
WINDOW_METRICS = Table(
    "metrics",
    _columns(
        ("window_start", TIME),
        ("window_end", TIME),
        *_AB,
        ("feedback_type", LABEL),
        ("count", COUNT),
        ("rating_sum", COUNT),
        ("rating_count", COUNT),
        ("pii", COUNTS),
    ),
    order_by=("window_start", "window_end", "model_version", "experiment", "variant", "feedback_type"),
    engine="ReplacingMergeTree(ts)",
)

# Status and publish events carry no id of their own; the full identifying tuple is the key.
TRAINING_STATUS = Table(
    "training_status",
    _columns(
        ("trigger_id", TEXT),
        ("policy", LABEL),
        ("state", LABEL),
        ("stage", TEXT),
        ("message", TEXT),
        ("metrics", METRICS),
    ),
    order_by=("policy", "trigger_id", "ts", "state", "stage"),
)

MODEL_PUBLISHED = Table(
    "model_published",
    _columns(
        ("version", TEXT),
        ("policy", LABEL),
        ("trigger_id", TEXT),
        ("parent_version", TEXT),
        ("reward_model_version", TEXT),
        ("decision", LABEL),
        ("metrics", METRICS),
        ("reason", TEXT),
    ),
    order_by=("policy", "version", "decision", "ts"),
)

# The experiment lifecycle (schemas.experiments): one row per event, `kind` started or decided;
# the columns the other kind lacks are ''. The events carry no id: the full tuple is the key.
EXPERIMENTS = Table(
    "experiments",
    _columns(
        ("kind", LABEL),
        ("experiment_id", TEXT),
        ("policy", LABEL),
        ("trigger_id", TEXT),
        ("control_version", TEXT),
        ("treatment_version", TEXT),
        ("outcome", LABEL),
        ("serving_version", TEXT),
        ("reason", TEXT),
        ("statistics", METRICS),
    ),
    order_by=("experiment_id", "kind", "ts"),
)

# Dead letters of every DLQ topic (`dlq` names which); redelivery of one letter is the same row.
DEAD_LETTERS = Table(
    "dead_letters",
    _columns(
        ("dlq", LABEL),
        ("origin_topic", LABEL),
        ("origin_partition", COUNT),
        ("origin_offset", COUNT),
        ("key", TEXT),
        ("reason", TEXT),
        ("value", TEXT),
    ),
    order_by=("dlq", "origin_topic", "origin_partition", "origin_offset"),
)
# Users who asked to be forgotten (`rlhf privacy forget`): the sink deletes their rows and stores none again.
ERASURES = Table("erasures", _columns(("user_id", TEXT), ("reason", TEXT)), order_by=("user_id",))
EVENT_TABLES: tuple[Table, ...] = (
    INTERACTIONS,
    FEEDBACK,
    EXPOSURES,
    WINDOW_METRICS,
    TRAINING_STATUS,
    MODEL_PUBLISHED,
    EXPERIMENTS,
    DEAD_LETTERS,
    ERASURES,
)
# The tables that hold a user's own events; a user's dead letters are found by the id in their text.
USER_TABLES: tuple[Table, ...] = (INTERACTIONS, FEEDBACK, EXPOSURES)


def dead_letter_names_user(user: str) -> str:
    """SQL: the dead letter's raw text names the user (SQL expression `user`) as `"user_id": "..."`,
    compact or spaced (a letter is the record as it came, which may not parse)."""
    return "(" + " OR ".join(f"position(value, concat('\"user_id\":{gap}\"', {user}, '\"')) > 0" for gap in ("", " ")) + ")"


# Not an event table: the sink samples every consumer group's lag into it (consumers/sink/lag.py).
CONSUMER_LAG = Table(
    "consumer_lag",
    _columns(
        ("consumer_group", LABEL),
        ("topic", LABEL),
        ("committed_offset", SIGNED),
        ("end_offset", SIGNED),
        ("lag", SIGNED),
    ),
    order_by=("consumer_group", "topic", "ts"),
    engine="MergeTree",
)
