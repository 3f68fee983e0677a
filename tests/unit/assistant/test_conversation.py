"""The API keeps the conversation, over stand-in models and producer: the policy is asked the whole
conversation with the app's system prompt, the interaction event carries it (version 2: context,
conversation id, turn index), every turn of a conversation shares its id, the feedback event
repeats the interaction's conversation, and a conversation past the event's limits is a 400."""

from __future__ import annotations

import pytest

from assistant import generation
from schemas.events import InteractionEvent, Turn, validate_event
from tests.unit.assistant.test_api import make
from tests.unit.assistant.test_service import echo, loads  # noqa: F401 (a fixture)
from trainers.chat_format import Conversation

SYSTEM = {"role": "system", "content": "You answer for Mail."}
TURNS = [
    {"role": "user", "content": "How do I reset my password in Mail?"},
    {"role": "assistant", "content": "Open Settings > Accounts > Reset."},
    {"role": "user", "content": "And how do I undo that?"},
    {"role": "assistant", "content": "Open Settings > Accounts > Restore."},
    {"role": "user", "content": "And in Calendar?"},
]


@pytest.fixture
def asked(monkeypatch) -> list[Conversation]:
    """What the policy is asked, in order."""
    prompts: list[Conversation] = []

    def recorded(policy, asks, sampling):
        prompts.extend(ask.prompt for ask in asks)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", recorded)
    return prompts


def completion(client, messages: list[dict], **extra) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": messages, "user": "u-1", **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_three_turns_are_answered_in_their_conversation_and_logged_with_it(loads, asked):  # noqa: F811
    client, _, producer = make(loads)
    replies = [completion(client, [SYSTEM, *TURNS[:n]]) for n in (1, 3, 5)]
    assert asked[2] == Conversation(
        "And in Calendar?", tuple((m["role"], m["content"]) for m in TURNS[:4]), "You answer for Mail."
    )
    events = [validate_event(InteractionEvent, e) for e in producer.interactions]
    assert [(e.schema_version, e.turn_index, len(e.context)) for e in events] == [(2, 0, 1), (2, 1, 3), (2, 2, 5)]
    assert events[2].context == (Turn(role="system", content="You answer for Mail."), *(Turn(**m) for m in TURNS[:4]))
    assert events[2].system == "You answer for Mail." and events[2].query == "And in Calendar?"
    ids = {e.conversation_id for e in events} | {r["conversation_id"] for r in replies}
    assert len(ids) == 1 and None not in ids  # every turn shares the conversation's id


def test_the_apps_conversation_id_is_kept_and_a_new_opening_is_a_new_conversation(loads, asked):  # noqa: F811
    client, _, producer = make(loads)
    mine = completion(client, [SYSTEM, *TURNS[:3]], conversation_id="chat-42")
    other = completion(client, [SYSTEM, {"role": "user", "content": "How do I export my data?"}])
    derived = completion(client, [SYSTEM, *TURNS[:1]])
    assert mine["conversation_id"] == "chat-42" == producer.interactions[0]["conversation_id"]
    assert len({mine["conversation_id"], other["conversation_id"], derived["conversation_id"]}) == 3


def test_feedback_carries_its_interactions_conversation(loads, asked):  # noqa: F811
    client, _, producer = make(loads)
    reply = completion(client, [SYSTEM, *TURNS[:3]])
    r = client.post("/v1/feedback", json={"interaction_id": reply["id"], "type": "thumbs_up", "token": reply["feedback_token"]})
    assert r.status_code == 200, r.text
    (feedback,) = producer.feedbacks
    interaction = producer.interactions[0]
    assert (feedback.context, feedback.conversation_id, feedback.turn_index, feedback.query) == (
        interaction["context"],
        interaction["conversation_id"],
        1,
        "And how do I undo that?",
    )


def test_the_single_turn_routes_take_a_conversation_too(loads, asked):  # noqa: F811
    client, _, producer = make(loads)
    context = [{"role": "system", "content": "Be brief."}, *TURNS[:2]]
    r = client.post("/chat", json={"user_id": "u-1", "query": "And how do I undo that?", "context": context})
    assert r.status_code == 200 and r.json()["conversation_id"] == producer.interactions[0]["conversation_id"]
    assert asked == [Conversation("And how do I undo that?", tuple((m["role"], m["content"]) for m in TURNS[:2]), "Be brief.")]
    assert producer.interactions[0]["turn_index"] == 1


@pytest.mark.parametrize(
    "messages, settings, error",
    [
        ([SYSTEM, *TURNS[:1], {"role": "system", "content": "late"}, *TURNS[2:3]], {}, "messages.2.role"),
        ([*TURNS[:1], {"role": "assistant", "content": ""}, *TURNS[2:3]], {}, "messages.1.content"),
        ([SYSTEM, *TURNS[:4]], {}, "messages.4.role: the last message must be the user's"),
        ([*TURNS[:4] * 17, TURNS[0]], {"max_turns": 100}, "context: Tuple should have at most 64 items"),
        ([{"role": "user", "content": "x" * 16_000}, TURNS[1]] * 5 + [TURNS[0]], {}, "context: 80165 characters in all"),
    ],
)
def test_a_conversation_that_does_not_fit_is_a_400_naming_the_field_before_any_work(loads, asked, messages, settings, error):  # noqa: F811
    client, _, producer = make(loads, **settings)
    r = client.post("/v1/chat/completions", json={"messages": messages, "user": "u-1"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(error), r.text
    assert asked == [] and producer.interactions == []
