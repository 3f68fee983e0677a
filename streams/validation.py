"""Validation of raw feedback records: a `FeedbackEvent`, or a `DeadLetter` saying why not, and
the PII found in its text (core/redaction.py) per type.

Anything a producer can put on the topic (bad JSON, wrong types, a missing rating, oversize text,
an unknown schema_version, an empty value, bytes that are not UTF-8) ends as a dead letter; the
caller never sees an exception for bad input. Under `privacy.mode: drop` an event holding PII is a
dead letter too, carrying the event with its PII replaced (a letter is read by people and stored).
This stage forwards no text: it only counts PII (for the metrics windows) and drops; the sink and
every replay redact the text they keep.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.errors import EventValidationError
from core.redaction import NO_PII, PiiFound, Redactor
from core.settings import PiiType
from schemas import DeadLetter, FeedbackEvent, parse_event


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def validate_feedback(
    value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int, redactor: Redactor
) -> tuple[FeedbackEvent | DeadLetter, Mapping[PiiType, int]]:
    # The origin (and the key's text) is built only for a dead letter, not for every accepted event.
    try:
        event = parse_event(FeedbackEvent, value)
    except EventValidationError as exc:
        return _dead(str(exc), redactor.kept(_text(value) or ""), key, topic, partition, offset), NO_PII
    try:
        return event, redactor.apply(event).counts
    except PiiFound as found:
        return _dead(str(found), found.redacted.event.to_bytes().decode(), key, topic, partition, offset), found.counts


def _dead(reason: str, kept: str, key: bytes | None, topic: str, partition: int, offset: int) -> DeadLetter:
    where = {"origin_topic": topic, "origin_partition": partition, "origin_offset": offset, "key": _text(key)}
    return DeadLetter(reason=reason, value=kept, **where)
