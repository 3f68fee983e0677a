"""Every kind of bad feedback record becomes a dead letter naming the reason and the origin; good ones parse."""

import json

import pytest

from schemas import DeadLetter, FeedbackEvent
from streams.validation import validate_feedback

GOOD = {"interaction_id": "i1", "user_id": "u1", "query": "q?", "response": "a", "model_version": "v1", "feedback_type": "thumbs_up"}


def raw(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_valid_record_parses():
    event = validate_feedback(raw(event_id="e1"), b"u1", "t.feedback", 2, 7)
    assert isinstance(event, FeedbackEvent) and event.event_id == "e1" and event.policy == "assistant"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (None, "empty record"),
        (b"\xff\xfe\x00garbage", "Invalid JSON"),
        (raw(feedback_type="rating"), "rating: required"),
        (raw(rating="five", feedback_type="rating"), "rating: Input should be a valid integer"),
        (raw(query="x" * 5_000), "query: String should have at most 4000 characters"),
        (raw(schema_version=2), "schema_version: Input should be 1"),
        (raw(surprise=1), "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_records_become_dead_letters(value, reason):
    dead = validate_feedback(value, b"u\xffkey", "t.feedback", 1, 42)
    assert isinstance(dead, DeadLetter)
    assert reason in dead.reason
    assert (dead.origin_topic, dead.origin_partition, dead.origin_offset) == ("t.feedback", 1, 42)
    assert dead.value == ("" if value is None else value.decode("utf-8", errors="replace"))
    assert dead.key == "u\ufffdkey"
