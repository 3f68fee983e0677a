import json
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.errors import EventValidationError
from schemas import FeedbackEvent, InteractionEvent, TrainTrigger, parse_event, validate_event
from schemas.events import MAX_QUERY_CHARS

BASE = dict(interaction_id="i1", user_id="u1", query="How?", response="Like this.", model_version="v1")


def test_rating_requires_rating_and_others_forbid_it():
    assert validate_event(FeedbackEvent, {**BASE, "feedback_type": "rating", "rating": 4}).rating == 4
    with pytest.raises(EventValidationError, match="rating: required"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "rating"})
    with pytest.raises(EventValidationError, match="rating: only allowed"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "thumbs_up", "rating": 5})
    with pytest.raises(EventValidationError, match="rating: Input should be less than or equal to 5"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "rating", "rating": 6})


def test_correction_requires_text():
    with pytest.raises(EventValidationError, match="correction: required"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "correction"})
    ev = validate_event(FeedbackEvent, {**BASE, "feedback_type": "correction", "correction": "Better."})
    assert ev.correction == "Better."


def test_rejection_names_field_and_reason():
    with pytest.raises(EventValidationError) as info:
        validate_event(FeedbackEvent, {**BASE, "query": "x" * (MAX_QUERY_CHARS + 1), "feedback_type": "smile"})
    message = str(info.value)
    assert "query: String should have at most" in message
    assert "feedback_type: Input should be 'thumbs_up'" in message


def test_unknown_schema_version_and_fields_rejected():
    with pytest.raises(EventValidationError, match="schema_version"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "thumbs_up", "schema_version": 3})
    with pytest.raises(EventValidationError, match="colour: Extra inputs are not permitted"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "thumbs_up", "colour": "red"})


def test_events_are_frozen_and_round_trip():
    ev = validate_event(FeedbackEvent, {**BASE, "feedback_type": "thumbs_up"})
    with pytest.raises(ValidationError, match="frozen"):
        ev.rating = 3  # type: ignore[misc]
    assert parse_event(FeedbackEvent, ev.to_bytes()) == ev


def test_naive_timestamp_rejected():
    with pytest.raises(EventValidationError, match="timezone"):
        validate_event(InteractionEvent, {**BASE, "latency_ms": 1, "timestamp": datetime(2026, 1, 1)})
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert validate_event(InteractionEvent, {**BASE, "latency_ms": 1, "timestamp": aware}).timestamp == aware


def test_offset_range_must_be_ordered():
    with pytest.raises(EventValidationError, match="must not be before start"):
        validate_event(
            TrainTrigger, {"policy": "p", "model_version": "v", "ranges": [{"topic": "f", "partition": 0, "start": 5, "end": 2}]}
        )


def test_bad_bytes_are_validation_errors():
    for raw in (None, b"", b"not json", b"[1,2]", b"\xff\xfe", b'{"feedback_type": 3}'):
        with pytest.raises(EventValidationError):
            parse_event(FeedbackEvent, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
feedback_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values,
        "interaction_id": json_values,
        "user_id": json_values,
        "query": json_values,
        "response": json_values,
        "model_version": json_values,
        "feedback_type": st.sampled_from(["thumbs_up", "thumbs_down", "rating", "correction", "x"]) | json_values,
        "rating": st.integers(-3, 9) | json_values,
        "correction": json_values,
        "metadata": json_values,
        "timestamp": json_values,
        "schema_version": st.integers(0, 3) | json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(feedback_like)
def test_no_mapping_crashes_validation(data):
    try:
        validate_event(FeedbackEvent, data)
    except EventValidationError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: __import__("json").dumps(v).encode()))
def test_no_bytes_crash_parsing(raw):
    try:
        parse_event(FeedbackEvent, raw)
    except EventValidationError:
        pass


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Reset Mail?"},
    {"role": "assistant", "content": "Settings."},
]


def test_a_version_1_event_is_a_one_turn_conversation():
    ev = parse_event(FeedbackEvent, json.dumps({**BASE, "feedback_type": "thumbs_up", "schema_version": 1}))
    assert (ev.schema_version, ev.context, ev.conversation_id, ev.turn_index) == (1, (), None, 0)
    assert ev.system is None and ev.history == ()
    with pytest.raises(EventValidationError, match="schema_version: 1 carries no conversation"):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "thumbs_up", "schema_version": 1, "context": CONVERSATION})


def test_a_version_2_event_carries_its_conversation():
    ev = validate_event(
        FeedbackEvent, {**BASE, "feedback_type": "thumbs_up", "context": CONVERSATION, "conversation_id": "c1", "turn_index": 1}
    )
    assert ev.schema_version == 2 and ev.system == "Be brief."
    assert ev.history == (("user", "Reset Mail?"), ("assistant", "Settings."))
    assert parse_event(FeedbackEvent, ev.to_bytes()) == ev


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        ([{"role": "bot", "content": "hi"}], "context.0.role: Input should be 'system', 'user' or 'assistant'"),
        ([{"role": "user", "content": "  "}], "context.0.content: empty"),
        ([{"role": "user", "content": "hi"}] * 10_000, "context: Tuple should have at most 64 items"),
        (
            [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}],
            "context.1.role: a system turn may only come first",
        ),
        ([{"role": "user", "content": "x" * 16_000}] * 5, "context: 80000 characters in all, at most 64000"),
    ],
)
def test_a_malformed_conversation_names_the_field(context, reason):
    with pytest.raises(EventValidationError, match=re.escape(reason)):
        validate_event(FeedbackEvent, {**BASE, "feedback_type": "thumbs_up", "context": context})
