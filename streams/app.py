"""The Faust stream app: validated feedback, dedupe, a rolling buffer and train triggers per policy,
and one-minute feedback metrics.

    rlhf streams worker                      # same as: faust -A streams.app worker -l info
    RLHF_KAFKA__BOOTSTRAP_SERVERS=... RLHF_CONTINUOUS_LEARNING__TRAIN_THRESHOLD=100 rlhf streams worker

Two stages, one worker, each taking its records in batches (`stream.take_events`, at most
`stream_batching.max_events` records or `max_wait_s` of waiting):
  validate   feedback topic (raw bytes) -> FeedbackEvent, or a DeadLetter on the DLQ topic;
             a batch's accepted events are forwarded, slimmed, as one record per policy to an
             internal topic keyed by policy.
  policies   internal topic -> `PolicyLedger` (dedupe, rolling buffer, trigger gate, windows),
             one state write per policy per batch -> TrainTrigger on train-triggers, WindowMetrics
             on metrics.
Training statuses, experiment starts and decisions (they hold the next trigger back) and timer
ticks are forwarded into the same internal topic, so one agent sees everything about a policy in
one order and its state needs no cross-partition reads.

Scale-out: workers with the same app id share the partitions (Faust assigns the same partition
number of every topic and changelog to one worker). Validation scales with the feedback topic's
partitions; a policy's ledger lives on the one internal partition its name hashes to, so one
policy is applied by one worker at a time, and more policies spread over more partitions.

Processing guarantee: at-least-once, made harmless by idempotent effects (streams/ledger.py); why
not exactly-once: docs/decisions/0001-streams-at-least-once.md. A trigger is delivered before the
state that records it is written, so a record re-read after a crash whose state had landed does
not send its trigger again; a crash between the two sends it twice, under the same trigger id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from confluent_kafka import KafkaError, KafkaException
from faust.types import AgentT, EventT, StreamT, TableT, TopicT
from mode.utils.times import want_seconds
from pydantic import ValidationError

from core.errors import BrokerError, EventValidationError
from core.kafka_clients import client_config, faust_broker, faust_credentials
from core.redaction import Redactor
from core.settings import Settings, load_settings
from schemas import DeadLetter, TrainingStatus, parse_event
from schemas.experiments import ExperimentEvent
from schemas.topics import CONSUMER_GROUPS, group_id, topic_name
from streams.changelog import ChangelogView, MarksTable, MarksView
from streams.ledger import DedupeMark, PolicyLedger
from streams.records import Accepted, ExperimentStep, PolicyRecord
from streams.recovery import SeekBeforeFlowTableManager
from streams.transport import LeanMonitor, RawSchema, StreamsApp
from streams.validation import validate_feedback

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often due policies get a tick (window close, a dead training's held-back trigger)
SWEEP_S = 60.0  # how often expired dedupe marks leave memory (the changelog's retention drops them on disk)
INTERNAL_RETENTION_S = 7 * 24 * 3600.0
# Accepted events per internal record: at most ~900 bytes each (128-character ids), so a record stays
# well under the producer's 1 MB request limit.
FORWARD_CHUNK = 500

AgentBody = Callable[[StreamT], Awaitable[None]]


async def delivered(sent: Any) -> None:
    """Wait until a `topic.send()` has reached the broker (a send captured by a unit test returns no future)."""
    if asyncio.isfuture(sent):
        await sent


@dataclass(frozen=True)
class Streams:
    """The app and its parts, for the worker and for tests."""

    app: faust.App
    settings: Settings
    ledger: PolicyLedger
    topics: dict[str, TopicT]
    state: TableT
    seen: TableT
    validate: AgentT
    forward_status: AgentT
    forward_experiments: AgentT
    policies: AgentT


def app_id(settings: Settings) -> str:
    """Faust app id = consumer group = prefix of internal topics; the topic prefix keeps deployments apart."""
    return group_id(settings.kafka.topic_prefix, CONSUMER_GROUPS["streams"])


def build(settings: Settings) -> Streams:
    k, cl, batching = settings.kafka, settings.continuous_learning, settings.stream_batching
    name = app_id(settings)
    app = StreamsApp(
        name,
        broker=faust_broker(k),
        broker_credentials=faust_credentials(k),  # SASL / TLS from the same `kafka` settings as every other client
        topic_replication_factor=k.replication_factor,  # the tables' changelogs, should Faust create them
        store="memory://",  # tables are rebuilt from their changelog topics on start
        processing_guarantee="at_least_once",
        datadir=str(settings.home / "streams" / name),
        topic_partitions=k.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
        # Fast local group joins and restarts (a SIGKILLed member is evicted after the session timeout).
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        TableManager=SeekBeforeFlowTableManager,  # see streams/recovery.py: no records skipped after a restart
        fetch_max_wait_ms=batching.fetch_max_wait_ms,  # see streams/transport.py
        Monitor=LeanMonitor,  # Faust's statistics without per-record bookkeeping (streams/transport.py)
        # Not `cython_optimizations`: its fast path saved ~3 CPU µs of ~63 a record here, but Faust
        # says that code has never run in production; the ingestion path is no place to be first.
    )

    def raw_topic(topic: str, **kw: Any) -> TopicT:
        # RawSchema (streams/transport.py): the bytes as they are, without a codec lookup per record.
        return app.topic(
            topic, schema=RawSchema(), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw
        )

    external = ("feedback", "feedback-dlq", "training-status", "experiments", "train-triggers", "metrics")
    topics = {n: raw_topic(topic_name(k.topic_prefix, n)) for n in external}
    topics["policy-events"] = raw_topic(
        f"{name}-policy-events", internal=True, partitions=k.partitions, retention=INTERNAL_RETENTION_S
    )
    state = app.Table("policy-state", key_type=str, partitions=k.partitions)
    # Marks older than the horizon are never consulted again; let the broker delete them.
    seen_retention_ms = int(2 * cl.dedupe_horizon_s * 1000)
    seen = MarksTable(
        app,
        name="seen",
        key_type=str,
        partitions=k.partitions,
        beacon=app.tables.beacon,
        extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": seen_retention_ms},
    )
    app.tables.add(seen)  # returns `seen` itself, typed as the wider CollectionT
    # The ledger writes through views that name the changelog partition (streams/changelog.py).
    state_view, seen_view = ChangelogView(state), MarksView(seen)
    ledger = PolicyLedger(state_view, seen_view, cl, topic_name(k.topic_prefix, "feedback"))
    policy_events = topics["policy-events"]

    def batches(stream: StreamT) -> AsyncIterator[Sequence[EventT]]:
        # The events are acked when the loop body has run for them: a batch is applied or re-read.
        # `StreamT` does not declare `take_events`; every stream an agent gets is a `faust.Stream`, which has it.
        return cast(faust.Stream, stream).take_events(batching.max_events, within=batching.max_wait_s)

    redactor = Redactor.from_settings(settings.privacy)

    async def validate(stream: StreamT) -> AsyncIterator[int]:
        async for events in batches(stream):
            accepted: dict[str, list[Accepted]] = {}
            for event in events:
                msg = event.message
                checked, pii = validate_feedback(event.value, event.key, msg.topic, msg.partition, msg.offset, redactor)
                if isinstance(checked, DeadLetter):
                    log.warning("dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, checked.reason)
                    await topics["feedback-dlq"].send(value=checked.to_bytes())
                else:
                    accepted.setdefault(checked.policy, []).append(
                        Accepted.of(checked, msg.partition, msg.offset, msg.timestamp, pii)
                    )
            for policy, events_of_policy in accepted.items():
                for i in range(0, len(events_of_policy), FORWARD_CHUNK):
                    record = PolicyRecord(policy=policy, batch=tuple(events_of_policy[i : i + FORWARD_CHUNK]))
                    await policy_events.send(key=policy, value=record.to_bytes())
            yield len(events)  # one value per batch: what `agent.test_context().put()` waits for

    def forwarder(field: str, parse: Callable[[bytes], TrainingStatus | ExperimentStep]) -> AgentBody:
        """An agent body forwarding each record of a topic, parsed, as the `field` of a policy record."""

        async def forward(stream: StreamT) -> None:
            async for event in stream.events():
                msg = event.message
                try:
                    parsed = parse(event.value)
                except EventValidationError as exc:
                    # Neither topic has a DLQ of its own: log and go on, a bad record must not stop triggering.
                    log.error("ignoring invalid %s record %s[%d]@%d: %s", field, msg.topic, msg.partition, msg.offset, exc)
                    continue
                record = PolicyRecord.model_validate({"policy": parsed.policy, field: parsed})
                await policy_events.send(key=parsed.policy, value=record.to_bytes())

        return forward

    async def apply(events: Sequence[EventT]) -> None:
        now = time.time()
        # A policy's records all sit on one partition, in order: apply them as one batch per policy.
        by_policy: dict[tuple[int, str], list[tuple[PolicyRecord, int]]] = {}
        for event in events:
            msg = event.message
            try:
                record = PolicyRecord.model_validate_json(event.value)
            except ValidationError:
                # Only this app writes the internal topic: a record it cannot read is a version skew, not input.
                log.exception("unreadable internal record %s[%d]@%d", msg.topic, msg.partition, msg.offset)
                continue
            by_policy.setdefault((msg.partition, record.policy), []).append((record, msg.offset))
        for (partition, policy), records in by_policy.items():
            staged = ledger.stage(policy, records, now)
            for effects in staged.effects:
                for trigger in effects.triggers:
                    if effects.replayed:  # its state landed, so it was delivered before the crash
                        log.info("train trigger %s for %s already sent", trigger.trigger_id, policy)
                        continue
                    log.info("train trigger %s for %s: %d events", trigger.trigger_id, policy, len(trigger.event_ids))
                    await delivered(await topics["train-triggers"].send(key=policy, value=trigger.to_bytes()))
            state_view.route_to(partition)
            seen_view.route_to(partition)
            ledger.commit(staged)
            for m in (m for effects in staged.effects for m in effects.metrics):
                await topics["metrics"].send(
                    key=f"{m.model_version}|{m.experiment}|{m.variant}|{m.feedback_type}", value=m.to_bytes()
                )

    async def policies(stream: StreamT) -> AsyncIterator[int]:
        async for events in batches(stream):
            await apply(events)
            yield len(events)

    async def tick() -> None:
        now = time.time()
        for policy in ledger.due(now):
            await policy_events.send(key=policy, value=PolicyRecord(policy=policy, tick=now).to_bytes())

    async def sweep_seen() -> None:
        # Straight on the store, not the table: forgetting locally must not write tombstones.
        horizon_start = time.time() - cl.dedupe_horizon_s
        for key, raw in list(seen.data.items()):
            if DedupeMark(*raw).record_ts < horizon_start:
                del seen.data[key]

    app.timer(TICK_S, name="tick")(tick)
    app.timer(SWEEP_S, name="sweep_seen")(sweep_seen)
    return Streams(
        app=app,
        settings=settings,
        ledger=ledger,
        topics=topics,
        state=state,
        seen=seen,
        validate=app.agent(topics["feedback"], name="validate")(validate),
        forward_status=app.agent(topics["training-status"], name="forward_status")(
            forwarder("status", lambda raw: parse_event(TrainingStatus, raw))
        ),
        forward_experiments=app.agent(topics["experiments"], name="forward_experiments")(
            forwarder("experiment", lambda raw: parse_event(ExperimentEvent, raw).root)
        ),
        policies=app.agent(policy_events, name="policies")(policies),
    )


def _creation_config(topic: TopicT) -> dict[str, str]:
    """The topic config Faust itself would declare (aiokafka driver's `_topic_config` + extras)."""
    config = {}
    flags = [flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
    if flags:
        config["cleanup.policy"] = ",".join(flags)
    if topic.retention:
        config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
    # `Topic.__init__` stores `config or {}`: None never stays, but `TopicT` declares it Optional.
    return config | {key: str(value) for key, value in (topic.config or {}).items()}


def create_internal_topics(streams: Streams) -> None:
    """Create the app's own topics before the worker subscribes to them. Left to Faust, a topic
    created a moment before the first group join can be missing from that assignment ("Ignoring
    missing topic") until the next metadata refresh, minutes later."""
    from confluent_kafka.admin import AdminClient, NewTopic

    k = streams.settings.kafka
    admin = AdminClient(client_config(k))
    own = [streams.topics["policy-events"], streams.state.changelog_topic, streams.seen.changelog_topic]
    existing = set(admin.list_topics(timeout=30).topics)
    missing = [
        NewTopic(
            t.get_topic_name(),
            # As Faust declares its topics: no partition count of its own means the app's `topic_partitions`.
            num_partitions=t.partitions or streams.app.conf.topic_partitions,
            replication_factor=k.replication_factor,
            config={**_creation_config(t), "min.insync.replicas": str(k.min_insync_replicas)},
        )
        for t in own
        if t.get_topic_name() not in existing
    ]
    for name, future in admin.create_topics(missing, operation_timeout=30).items() if missing else ():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"could not create {name}: {exc}") from None


def prepared(settings: Settings) -> Streams:
    """The app, ready to run as a worker: its topics exist, its data directory's parent too."""
    streams = build(settings)
    create_internal_topics(streams)
    streams.app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    return streams


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in this process until SIGTERM/SIGINT."""
    streams = prepared(settings)
    faust.Worker(streams.app, loglevel=loglevel).execute_from_commandline()


@functools.cache
def _default() -> Streams:
    return prepared(load_settings())


def __getattr__(name: str) -> Any:
    # `faust -A streams.app worker` looks up `app` here; built on first use so that importing
    # this module reads no configuration.
    if name == "app":
        return _default().app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
