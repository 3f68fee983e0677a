"""A chat app's conversation as OpenAI's `messages`, read into an event's conversation fields
(schemas/messages.py), as the SDK's `interaction(messages=...)` and the assistant's API both read it."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import EventValidationError
from schemas.events import FeedbackEvent, InteractionEvent, Turn, validate_event
from schemas.messages import QuestionInContext
from sdk.client import with_conversation
from trainers.chat_format import Conversation

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer for Mail."},
    {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": "How do I reset my password in Mail?"},
    {"role": "assistant", "content": "Open Settings > Accounts > Reset."},
    {"role": "user", "content": "And how do I undo that?"},
]


def test_the_system_prompts_lead_the_context_and_the_last_user_message_is_the_query():
    asked = QuestionInContext.of(CONVERSATION)
    assert asked.context == (
        Turn(role="system", content="You answer for Mail.\n\nBe brief."),
        Turn(role="user", content="How do I reset my password in Mail?"),
        Turn(role="assistant", content="Open Settings > Accounts > Reset."),
    )
    assert (asked.query, asked.turn_index) == ("And how do I undo that?", 1)
    assert Conversation.of(asked) == Conversation(
        "And how do I undo that?",
        (("user", "How do I reset my password in Mail?"), ("assistant", "Open Settings > Accounts > Reset.")),
        "You answer for Mail.\n\nBe brief.",
    )


def test_every_turn_of_a_conversation_shares_its_derived_id_and_another_user_or_opening_does_not():
    first = QuestionInContext.of(CONVERSATION[:3]).conversation_id("u-1")
    assert QuestionInContext.of(CONVERSATION).conversation_id("u-1") == first
    assert QuestionInContext.of(CONVERSATION).conversation_id("u-2") != first
    other = [*CONVERSATION[:2], {"role": "user", "content": "How do I export my data?"}]
    assert QuestionInContext.of(other).conversation_id("u-1") != first


@pytest.mark.parametrize(
    "messages, error",
    [
        ([], "messages: empty"),
        ([{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}], "messages.1.role: the last message"),
        (
            [{"role": "user", "content": "q?"}, {"role": "system", "content": "s"}, {"role": "user", "content": "q?"}],
            "messages.1.role",
        ),
        (
            [{"role": "user", "content": "q?"}, {"role": "assistant", "content": " "}, {"role": "user", "content": "q?"}],
            "messages.1.content",
        ),
        ([{"role": "tool", "content": "x"}, {"role": "user", "content": "q?"}], "messages.0.role"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages.0.content"),
        ([{"role": "user", "content": "x" * 4001}], "messages.0.content: 4001 characters"),
    ],
)
def test_a_conversation_that_does_not_fit_names_the_message(messages, error):
    with pytest.raises(EventValidationError) as err:
        QuestionInContext.of(messages)
    assert str(err.value).startswith(error), err.value


def test_the_sdk_takes_messages_in_place_of_query_for_interactions_and_feedback():
    common = {"user_id": "u-1", "response": "Open Settings again.", "model_version": "v1"}
    event = validate_event(InteractionEvent, with_conversation({**common, "messages": CONVERSATION, "latency_ms": 5.0}))
    asked = QuestionInContext.of(CONVERSATION)
    assert (event.schema_version, event.context, event.query, event.turn_index) == (2, asked.context, asked.query, 1)
    assert event.conversation_id == asked.conversation_id("u-1") and event.system == "You answer for Mail.\n\nBe brief."
    mine = with_conversation({**common, "messages": CONVERSATION, "conversation_id": "chat-9"})
    feedback = validate_event(FeedbackEvent, {**mine, "interaction_id": event.interaction_id, "feedback_type": "thumbs_up"})
    assert (feedback.conversation_id, feedback.context) == ("chat-9", event.context)
    assert with_conversation({**common, "query": "q?"}) == {**common, "query": "q?"}  # without messages: as given
    with pytest.raises(EventValidationError, match="messages: given with query"):
        with_conversation({**common, "messages": CONVERSATION, "query": "q?"})
