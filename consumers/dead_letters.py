"""The dead letter of a record a consumer cannot process: the record as it came, where from, and why."""

from __future__ import annotations

from confluent_kafka import Message

from schemas import DeadLetter

# Keeps a letter small whatever the error text: the record itself already travels in `value`.
MAX_REASON_CHARS = 4000


def dead_letter_of(msg: Message, reason: str) -> DeadLetter:
    return DeadLetter(
        reason=reason[:MAX_REASON_CHARS], origin_topic=msg.topic(), origin_partition=msg.partition(), origin_offset=msg.offset(),
        key=msg.key().decode(errors="replace") if msg.key() else None, value=(msg.value() or b"").decode(errors="replace"),
    )  # fmt: skip
