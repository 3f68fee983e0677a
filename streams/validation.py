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
from core.redaction import PiiFound, Redactor
from schemas import DeadLetter, FeedbackEvent, parse_event

NO_PII: Mapping[str, int] = {}


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def validate_feedback(value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int,
                      redactor: Redactor) -> tuple[FeedbackEvent | DeadLetter, Mapping[str, int]]:  # fmt: skip
    where = {"origin_topic": topic, "origin_partition": partition, "origin_offset": offset, "key": _text(key)}
    try:
        event = parse_event(FeedbackEvent, value)
    except EventValidationError as exc:
        raw = _text(value) or ""
        return DeadLetter(reason=str(exc), value=redactor.kept(raw), **where), NO_PII
    try:
        return event, redactor.apply(event).counts
    except PiiFound as found:
        return DeadLetter(reason=str(found), value=found.redacted.event.to_bytes().decode(), **where), found.counts
