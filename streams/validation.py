"""Validation of raw feedback records: a `FeedbackEvent`, or a `DeadLetter` saying why not.

Anything a producer can put on the topic (bad JSON, wrong types, a missing rating, oversize text,
an unknown schema_version, an empty value, bytes that are not UTF-8) ends as a dead letter; the
caller never sees an exception for bad input.
"""

from __future__ import annotations

from core.errors import EventValidationError
from schemas import DeadLetter, FeedbackEvent, parse_event


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def validate_feedback(value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int) -> FeedbackEvent | DeadLetter:
    try:
        return parse_event(FeedbackEvent, value)
    except EventValidationError as exc:
        return DeadLetter(
            reason=str(exc), origin_topic=topic, origin_partition=partition, origin_offset=offset, key=_text(key), value=_text(value) or ""
        )
