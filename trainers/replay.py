"""Rebuild the exact dataset a `TrainTrigger` names, from the feedback topic.

    from trainers.replay import replay_trigger
    events = replay_trigger(settings, trigger)   # list[FeedbackEvent] in trigger.event_ids order

The trigger's offset ranges also hold records the stream app did not accept (dead letters,
duplicates, other policies' feedback); `event_ids` says which were. Of several copies of one event
id the first by (partition, offset) is kept: copies are producer retries of the same event.
Events of users who asked to be forgotten are left out, whenever they asked (trainers/erasures.py),
and PII in the rest is replaced by placeholders (`privacy.mode`), so no training set holds it.
The consumer is assigned the exact offsets and never commits, so replays leave no trace.
"""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from core.kafka_clients import client_config
from core.redaction import Redactor
from core.settings import Settings
from core.errors import EventValidationError, TrainingError
from schemas import FeedbackEvent, OffsetRange, TrainTrigger, parse_event
from trainers.erasures import erased_users
from trainers.topic_reader import range_consumer, read_ranges


def _check_readable(consumer: Consumer, trigger: TrainTrigger, r: OffsetRange, timeout: float) -> None:
    where = f"trigger {trigger.trigger_id}: {r.topic}[{r.partition}] [{r.start}, {r.end})"
    if r.end <= r.start:
        raise TrainingError(f"{where} is an empty range")
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(r.topic, r.partition), timeout=timeout)
    except Exception as exc:  # KafkaException: unknown topic or partition, broker unreachable
        raise TrainingError(f"{where} cannot be read: {exc}") from None
    if r.start < low or r.end > high:
        raise TrainingError(f"{where} is not readable: the partition now holds [{low}, {high}) (retention, or a different cluster?)")


def replay_trigger(settings_or_bootstrap: Settings | str, trigger: TrainTrigger, timeout: float = 30.0,
                   erased: frozenset[str] | None = None) -> list[FeedbackEvent]:
    """The accepted feedback events `trigger` covers, in `trigger.event_ids` order, less those of
    erased users: `erased`, or, given Settings, everyone on the erasures topic now (trainers/erasures.py);
    their text redacted unless `privacy.mode` is off (the topic holds what users typed; training
    data must not: core/redaction.py).

    Raises TrainingError when a range is empty or unreadable, reading takes longer than `timeout`
    seconds, or any of the trigger's event ids is not found in its ranges.
    """
    if isinstance(settings_or_bootstrap, str):  # a plaintext broker, for tools and tests
        connection, erased, redactor = {"bootstrap.servers": settings_or_bootstrap}, erased or frozenset(), Redactor()
    else:
        connection = client_config(settings_or_bootstrap.kafka)
        erased = erased_users(settings_or_bootstrap, timeout) if erased is None else erased
        redactor = Redactor.from_settings(settings_or_bootstrap.privacy)
    if not trigger.ranges or not trigger.event_ids:
        raise TrainingError(f"trigger {trigger.trigger_id} names no data (ranges={len(trigger.ranges)}, event_ids={len(trigger.event_ids)})")
    consumer = range_consumer(connection, "replay")
    wanted = set(trigger.event_ids)
    found: dict[str, tuple[int, int, FeedbackEvent]] = {}  # event_id -> (partition, offset, event), first copy
    try:
        for r in trigger.ranges:
            _check_readable(consumer, trigger, r, timeout)
        for msg in read_ranges(consumer, {(r.topic, r.partition): (r.start, r.end) for r in trigger.ranges}, timeout, f"trigger {trigger.trigger_id}"):
            try:
                event = parse_event(FeedbackEvent, msg.value())
            except EventValidationError:
                continue  # a dead letter in the range: never part of the dataset
            first = found.get(event.event_id)
            if event.event_id in wanted and (first is None or (msg.partition(), msg.offset()) < first[:2]):
                found[event.event_id] = (msg.partition(), msg.offset(), event)
    finally:
        consumer.close()
    missing = [event_id for event_id in trigger.event_ids if event_id not in found]
    if missing:
        raise TrainingError(f"trigger {trigger.trigger_id}: {len(missing)} of {len(wanted)} event ids are not in its ranges (first: {missing[0]})")
    kept = [event for event in (found[event_id][2] for event_id in trigger.event_ids) if event.user_id not in erased]
    return kept if redactor.mode == "off" else [redactor.redact_event(event).event for event in kept]
