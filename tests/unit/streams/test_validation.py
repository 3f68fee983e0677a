"""Every kind of bad feedback record becomes a dead letter naming the reason and the origin; good ones
parse, with the PII in their text counted; under privacy mode drop, PII makes a dead letter too,
which carries the event with its PII replaced."""

import json

import pytest

from core.redaction import Redactor
from schemas import DeadLetter, FeedbackEvent
from streams.validation import validate_feedback

REDACT, DROP = Redactor(mode="redact"), Redactor(mode="drop")

GOOD = {
    "interaction_id": "i1",
    "user_id": "u1",
    "query": "q?",
    "response": "a",
    "model_version": "v1",
    "feedback_type": "thumbs_up",
}


def raw(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_valid_record_parses():
    event, pii = validate_feedback(raw(event_id="e1"), b"u1", "t.feedback", 2, 7, REDACT)
    assert isinstance(event, FeedbackEvent) and event.event_id == "e1" and event.policy == "assistant" and pii == {}


def test_a_conversation_and_a_version_1_record_both_parse():
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Mail?"},
        {"role": "assistant", "content": "Open Mail."},
    ]
    event, _ = validate_feedback(raw(context=turns, conversation_id="c1", turn_index=1), b"u1", "t.feedback", 0, 1, REDACT)
    assert isinstance(event, FeedbackEvent) and event.schema_version == 2 and event.system == "Be brief."
    assert [t.model_dump() for t in event.context] == turns and (event.conversation_id, event.turn_index) == ("c1", 1)
    old, _ = validate_feedback(raw(schema_version=1), b"u1", "t.feedback", 0, 2, REDACT)
    assert isinstance(old, FeedbackEvent) and (old.schema_version, old.context, old.conversation_id, old.turn_index) == (
        1,
        (),
        None,
        0,
    )


def test_pii_is_counted_and_under_drop_mode_is_a_dead_letter_without_it():
    planted = raw(query="I am ann@example.com, card 4111 1111 1111 1111", response="Noted, ann@example.com.")
    event, pii = validate_feedback(planted, b"u1", "t.feedback", 0, 1, REDACT)
    assert isinstance(event, FeedbackEvent) and pii == {"email": 2, "card": 1}  # counted; the text is not forwarded here
    dead, pii = validate_feedback(planted, b"u1", "t.feedback", 0, 1, DROP)
    assert isinstance(dead, DeadLetter) and pii == {"email": 2, "card": 1}
    assert dead.reason.startswith("PII found (card x1, email x2) in query, response")
    assert "ann@example.com" not in dead.value and "4111" not in dead.value and "<EMAIL>" in dead.value
    letter, _ = validate_feedback(
        b'{"query": "ann@example.com"', b"u1", "t.feedback", 0, 2, REDACT
    )  # a broken record, redacted too
    assert isinstance(letter, DeadLetter) and letter.value == '{"query": "<EMAIL>"'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (None, "empty record"),
        (b"\xff\xfe\x00garbage", "Invalid JSON"),
        (raw(feedback_type="rating"), "rating: required"),
        (raw(rating="five", feedback_type="rating"), "rating: Input should be a valid integer"),
        (raw(query="x" * 5_000), "query: String should have at most 4000 characters"),
        (raw(schema_version=3), "schema_version: Input should be 1 or 2"),
        (raw(schema_version=1, turn_index=1), "schema_version: 1 carries no conversation"),
        (raw(context=[{"role": "robot", "content": "hi"}]), "context.0.role: Input should be 'system', 'user' or 'assistant'"),
        (raw(context=[{"role": "user", "content": "x"}] * 10_000), "context: Tuple should have at most 64 items"),
        (raw(context=[{"role": "user", "content": " "}]), "context.0.content: empty"),
        (raw(context=[{"role": "user", "content": "x" * 16_000}] * 5), "context: 80000 characters in all, at most 64000"),
        (raw(surprise=1), "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_records_become_dead_letters(value, reason):
    dead, _ = validate_feedback(value, b"u\xffkey", "t.feedback", 1, 42, REDACT)
    assert isinstance(dead, DeadLetter)
    assert reason in dead.reason
    assert (dead.origin_topic, dead.origin_partition, dead.origin_offset) == ("t.feedback", 1, 42)
    assert dead.value == ("" if value is None else value.decode("utf-8", errors="replace"))
    assert dead.key == "u\ufffdkey"
