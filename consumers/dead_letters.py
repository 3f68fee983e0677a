"""The dead letter of a record a consumer cannot process: the record as it came, where from, and why."""

from __future__ import annotations

from confluent_kafka import Message

from core.kafka_messages import position
from core.redaction import Redactor
from schemas import DeadLetter

# Keeps a letter small whatever the error text: the record itself already travels in `value`.
MAX_REASON_CHARS = 4000


def dead_letter_of(msg: Message, reason: str, redactor: Redactor | None = None) -> DeadLetter:
    """The letter for `msg`; with a `redactor` (not in mode off), its text with the PII replaced:
    a letter is stored in ClickHouse and read by people, so it must not carry what the event may not."""
    value = (msg.value() or b"").decode(errors="replace")
    if redactor is not None:
        value = redactor.kept(value)
    origin = position(msg)
    return DeadLetter(
        reason=reason[:MAX_REASON_CHARS],
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
        key=key.decode(errors="replace") if (key := msg.key()) else None,
        value=value,
    )
