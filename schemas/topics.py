"""Topics as code: every topic's name, key, value schema (and the schema versions it reads), retention,
DLQ, and who produces and consumes it: the path of any event is readable from the `TOPICS` table
(`rlhf topics list` prints it). `sdk.admin.create_topics` creates them. How a new schema version is
introduced: docs/event-versions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from core.settings import KafkaSettings
from schemas import (
    DeadLetter,
    ErasureRequest,
    ExposureEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelPublished,
    TrainingStatus,
    TrainTrigger,
    WindowMetrics,
)
from schemas.experiments import ExperimentEvent

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value_schema: type[BaseModel]
    producers: tuple[str, ...]  # processes that write it (the README's process map)
    consumers: tuple[str, ...]  # processes (consumer groups) that read it
    keyed_partitions: bool = True  # False: one partition, total order (see `why_one_partition`)
    config: dict[str, str] = field(default_factory=dict)
    dlq: str | None = None
    # The one process that dead-letters this topic's bad records (a letter per record); any other
    # consumer of the topic counts such a record and skips it. Topics without a DLQ of their own
    # dead-letter into the feedback DLQ, written by the sink, the one consumer that validates them all.
    dlq_owner: str = "sink"
    why_one_partition: str = ""
    min_insync_replicas: int = 1  # at least this many replicas must have a write (acks=all) where there are that many

    @property
    def value_versions(self) -> tuple[int, ...]:
        """The `schema_version`s a value on this topic may carry (consumers read them all)."""
        return schema_versions(self.value_schema)


def schema_versions(model: type[BaseModel]) -> tuple[int, ...]:
    """The `schema_version`s `model` reads, from its JSON Schema (of a union, e.g. ExperimentEvent: its members')."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    members = [defs[m["$ref"].rsplit("/", 1)[-1]] for m in schema.get("oneOf", ())] or [schema]
    versions: set[int] = set()
    for member in members:
        version = member["properties"]["schema_version"]
        versions.update(version["enum"] if "enum" in version else (version["const"],))
    return tuple(sorted(versions))


@dataclass(frozen=True)
class InternalTopic:
    """A topic the stream worker's framework creates and owns (name under the app id `{prefix}streams`)."""

    name: str
    key: str
    value: str
    purpose: str


# Processes: "operators" (people, through `rlhf` commands), "assistant" (HTTP service), "sdk" (any Python app),
# "streams" (Faust worker), "trainer", "decider" (`rlhf decider run`, and `rlhf models promote|rollback` by hand),
# "sink", "demo" (driver).
TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(
            "interactions",
            "user_id",
            InteractionEvent,
            ("assistant", "sdk"),
            ("sink",),
            config={"retention.ms": str(30 * DAY_MS)},
        ),
        # Feedback is the training source of truth: keep it long enough to replay any trigger.
        TopicSpec(
            "feedback",
            "user_id",
            FeedbackEvent,
            ("assistant", "sdk"),
            ("streams", "trainer", "sink"),
            config={"retention.ms": str(365 * DAY_MS)},
            dlq="feedback-dlq",
            dlq_owner="streams",
            min_insync_replicas=2,
        ),
        TopicSpec(
            "feedback-dlq",
            "none",
            DeadLetter,
            ("streams", "sink"),
            ("sink", "operators"),
            keyed_partitions=False,
            config={"retention.ms": str(90 * DAY_MS)},
            why_one_partition="low volume; operators read it in arrival order",
        ),
        TopicSpec(
            "exposures", "user_id", ExposureEvent, ("assistant", "sdk"), ("sink",), config={"retention.ms": str(90 * DAY_MS)}
        ),
        TopicSpec(
            "train-triggers",
            "policy",
            TrainTrigger,
            ("streams",),
            ("trainer",),
            keyed_partitions=False,
            dlq="train-triggers-dlq",
            dlq_owner="trainer",
            why_one_partition="one total order of trainings across policies; "
            "the trainer also works with several partitions, one job at a time",
        ),
        TopicSpec(
            "train-triggers-dlq",
            "none",
            DeadLetter,
            ("trainer",),
            ("sink", "operators"),
            keyed_partitions=False,
            why_one_partition="low volume",
        ),
        TopicSpec(
            "training-status",
            "policy",
            TrainingStatus,
            ("trainer", "decider"),
            ("streams", "sink", "demo"),
            keyed_partitions=False,
            why_one_partition="a round's statuses are read in the order they were written, by readers without a group",
        ),
        TopicSpec(
            "model-published",
            "policy",
            ModelPublished,
            ("trainer", "decider"),
            ("sink", "demo"),
            keyed_partitions=False,
            why_one_partition="the version history of every policy in one order",
        ),
        TopicSpec(
            "experiments",
            "policy",
            ExperimentEvent,
            ("trainer", "decider"),
            ("streams", "assistant", "decider", "sink", "demo"),
            keyed_partitions=False,
            config={"retention.ms": str(365 * DAY_MS)},
            min_insync_replicas=2,
            why_one_partition="an experiment's start and decision in one order; "
            "one active decider (the partition's owner) at a time",
        ),
        TopicSpec("metrics", "window", WindowMetrics, ("streams",), ("sink",)),
        # Compacted: the latest request per user is kept forever, so an erasure outlives any retention.
        # The sources of truth (feedback, erasures, experiments) ask for 2 in-sync replicas where there are 3.
        TopicSpec(
            "erasures",
            "user_id",
            ErasureRequest,
            ("operators",),
            ("trainer", "sink"),
            keyed_partitions=False,
            config={"cleanup.policy": "compact"},
            min_insync_replicas=2,
            why_one_partition="small; every replay reads it whole, from the beginning, before it trains",
        ),
    )
}

# Each consuming process's consumer group (before the deployment's prefix): `group_id(prefix, ...)`.
CONSUMER_GROUPS: dict[str, str] = {"streams": "streams", "trainer": "trainers", "decider": "decider", "sink": "sink"}

# The stream worker's own topics (Faust creates them; `create_topics` leaves them alone).
INTERNAL_TOPICS: tuple[InternalTopic, ...] = (
    InternalTopic(
        "streams-policy-events",
        "policy",
        "streams.records.PolicyRecord",
        "accepted feedback, training statuses, experiment starts and decisions, and timer ticks of one policy, in one order",
    ),
    InternalTopic(
        "streams-policy-state-changelog",
        "policy:<p> | buffered:<p>:<seq> | last-trigger:<p>",
        "streams.ledger PolicyState | BufferedEvent | TrainTrigger",
        "the rolling buffer, counters and trigger gate of each policy",
    ),
    InternalTopic(
        "streams-seen-changelog",
        "<policy>/<event_id>",
        "streams.ledger DedupeMark",
        "where an event's accepted copy sits, for dedupe (compacted, deleted after twice the horizon)",
    ),
)


def topic_name(prefix: str, name: str) -> str:
    if name not in TOPICS:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(TOPICS)}")
    return f"{prefix}{name}"


def group_id(prefix: str, name: str) -> str:
    """Consumer groups carry the topic prefix too, so deployments (and test sessions) sharing a
    cluster never join each other's groups."""
    return f"{prefix}{name}"


def partitions_of(spec: TopicSpec, keyed_partitions: int) -> int:
    return keyed_partitions if spec.keyed_partitions else 1


def min_insync_replicas_of(spec: TopicSpec, kafka: KafkaSettings) -> int:
    """The larger of the deployment's and the topic's own minimum, never more than the replicas there are."""
    return min(kafka.replication_factor, max(kafka.min_insync_replicas, spec.min_insync_replicas))
