"""Rebuild the exact dataset a `TrainTrigger` names, from the feedback topic.

    from trainers.replay import replay_trigger
    events = replay_trigger(settings, trigger)   # list[FeedbackEvent] in trigger.event_ids order
    between = replay_accepted(settings, "assistant", ranges)   # what no trigger names by id (history.py)

The trigger's offset ranges also hold records the stream app did not accept (dead letters,
duplicates, other policies' feedback); `event_ids` says which were. Of several copies of one event
id the first by (partition, offset) is kept: copies are producer retries of the same event.
Events of users who asked to be forgotten are left out, whenever they asked (trainers/erasures.py),
and PII in the rest is replaced by placeholders (`privacy.mode`), so no training set holds it.
The consumer is assigned the exact offsets and never commits, so replays leave no trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, TopicPartition

from core.errors import EventValidationError, TrainingError
from core.kafka_clients import client_config
from core.kafka_messages import position
from core.redaction import PiiFound, Redactor
from core.settings import Settings
from schemas import FeedbackEvent, OffsetRange, TrainTrigger, parse_event
from trainers.erasures import erased_users
from trainers.topic_reader import range_consumer, read_ranges


def _check_readable(consumer: Consumer, what: str, r: OffsetRange, timeout: float) -> None:
    where = f"{what}: {r.topic}[{r.partition}] [{r.start}, {r.end})"
    if r.end <= r.start:
        raise TrainingError(f"{where} is an empty range")
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(r.topic, r.partition), timeout=timeout)
    except Exception as exc:  # KafkaException: unknown topic or partition, broker unreachable
        raise TrainingError(f"{where} cannot be read: {exc}") from None
    if r.start < low or r.end > high:
        raise TrainingError(
            f"{where} is not readable: the partition now holds [{low}, {high}) (retention, or a different cluster?)"
        )


def _clients(
    settings_or_bootstrap: Settings | str, timeout: float, erased: frozenset[str] | None
) -> tuple[dict, frozenset[str], Redactor]:
    """(connection, erased users, redactor): a plaintext broker string means tools and tests."""
    if isinstance(settings_or_bootstrap, str):
        return {"bootstrap.servers": settings_or_bootstrap}, erased or frozenset(), Redactor()
    erased = erased_users(settings_or_bootstrap, timeout) if erased is None else erased
    return client_config(settings_or_bootstrap.kafka), erased, Redactor.from_settings(settings_or_bootstrap.privacy)


def _first_copies(
    connection: dict, ranges: Sequence[OffsetRange], timeout: float, what: str, keep: Callable[[FeedbackEvent], bool]
) -> dict[str, tuple[int, int, FeedbackEvent]]:
    """event_id -> (partition, offset, event) of the first copy of each valid event `keep` wants in
    `ranges` (each checked readable first): copies are producer retries of the same event; a dead
    letter is never part of a dataset."""
    found: dict[str, tuple[int, int, FeedbackEvent]] = {}
    consumer = range_consumer(connection, "replay")
    try:
        for r in ranges:
            _check_readable(consumer, what, r, timeout)
        for msg in read_ranges(consumer, {(r.topic, r.partition): (r.start, r.end) for r in ranges}, timeout, what):
            try:
                event = parse_event(FeedbackEvent, msg.value())
            except EventValidationError:
                continue
            first = found.get(event.event_id)
            at = position(msg)
            if keep(event) and (first is None or (at.partition, at.offset) < first[:2]):
                found[event.event_id] = (at.partition, at.offset, event)
    finally:
        consumer.close()
    return found


def replay_trigger(
    settings_or_bootstrap: Settings | str, trigger: TrainTrigger, timeout: float = 30.0, erased: frozenset[str] | None = None
) -> list[FeedbackEvent]:
    """The accepted feedback events `trigger` covers, in `trigger.event_ids` order, less those of
    erased users: `erased`, or, given Settings, everyone on the erasures topic now (trainers/erasures.py);
    their text redacted unless `privacy.mode` is off (the topic holds what users typed; training
    data must not: core/redaction.py).

    Raises TrainingError when a range is empty or unreadable, reading takes longer than `timeout`
    seconds, or any of the trigger's event ids is not found in its ranges.
    """
    connection, erased, redactor = _clients(settings_or_bootstrap, timeout, erased)
    if not trigger.ranges or not trigger.event_ids:
        raise TrainingError(
            f"trigger {trigger.trigger_id} names no data (ranges={len(trigger.ranges)}, event_ids={len(trigger.event_ids)})"
        )
    wanted = set(trigger.event_ids)
    found = _first_copies(connection, trigger.ranges, timeout, f"trigger {trigger.trigger_id}", lambda e: e.event_id in wanted)
    missing = [event_id for event_id in trigger.event_ids if event_id not in found]
    if missing:
        raise TrainingError(
            f"trigger {trigger.trigger_id}: {len(missing)} of {len(wanted)} event ids are not in its ranges (first: {missing[0]})"
        )
    kept = [event for event in (found[event_id][2] for event_id in trigger.event_ids) if event.user_id not in erased]
    return kept if redactor.mode == "off" else [redactor.redact_event(event).event for event in kept]


def replay_accepted(
    settings_or_bootstrap: Settings | str,
    policy: str,
    ranges: Sequence[OffsetRange],
    timeout: float = 30.0,
    erased: frozenset[str] | None = None,
) -> list[FeedbackEvent]:
    """Every feedback event of `policy` in `ranges` that the stream app accepts, in (partition,
    offset) order: valid, the first copy of its id, and not held back by `privacy.mode: drop`; less
    erased users, redacted as `replay_trigger` does. For feedback no trigger names by id: what
    arrived between two triggers while a training or an A/B test held them back and the rolling
    buffer moved past it (trainers/history.py). TrainingError as `replay_trigger`."""
    connection, erased, redactor = _clients(settings_or_bootstrap, timeout, erased)
    found = _first_copies(
        connection,
        ranges,
        timeout,
        f"{policy} feedback between triggers",
        lambda e: e.policy == policy and e.user_id not in erased,
    )
    out = []
    for _, _, event in sorted(found.values(), key=lambda f: f[:2]):
        try:  # as the stream app: `off` passes it, `redact` redacts it, `drop` refuses it (a dead letter there)
            out.append(redactor.apply(event).event)
        except PiiFound:
            continue
    return out
