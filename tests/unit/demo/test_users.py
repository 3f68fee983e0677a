"""Simulated users speak the chat-app API: a completion, then feedback with the answer's token;
reproducible whatever order concurrent answers return in; a 503 is tried again. With conversations
they send the whole conversation each turn and judge follow-up answers against it."""

from __future__ import annotations

import json
import random
import threading
import time
import zlib

import httpx
import pytest

import demo.users as users
from demo.users import Population
from trainers.chat_format import Conversation
from trainers.synthetic import FollowUp, answer, resolve


def conversation_of(messages: list[dict]) -> Conversation:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [(m["role"], m["content"]) for m in messages if m["role"] != "system"]
    return Conversation(turns[-1][1], tuple(turns[:-1]), system)


class FakeService:
    """The two endpoints the users call, recording what they were sent; answers arrive in random order."""

    def __init__(self, busy: int = 0, broken: int = 0, forgetful: bool = False):
        self.forgetful = forgetful  # answer a follow-up as if it were the conversation's first question
        self.busy = busy  # how many feedback posts answer 503 first
        self.broken = broken  # how many feedback posts meet a broken connection first
        self.completions: list[dict] = []
        self.feedback: list[tuple[dict, str]] = []
        self.lock = threading.Lock()
        self.jitter = random.Random()

    def answer(self, messages: list[dict], user: str) -> str:
        """About half the answers helpful, the rest unrelated (by the request, not its arrival order)."""
        asked = resolve(conversation_of(messages))
        assert asked is not None
        seed = zlib.crc32(f"{user}:{json.dumps(messages)}".encode())
        if self.forgetful and isinstance(asked, FollowUp):
            return answer(asked, "earlier", random.Random(seed))
        return answer(asked, "helpful", random.Random(seed)) if seed % 2 else "Try turning it off and on again."

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        time.sleep(self.jitter.random() / 200)  # concurrent replies come back in any order
        with self.lock:
            if request.url.path == "/v1/chat/completions":
                self.completions.append(body)
                n = len(self.completions)
                content = self.answer(body["messages"], body["user"])
                return httpx.Response(
                    200,
                    json={
                        "id": f"i-{body['user']}-{zlib.crc32(json.dumps(body['messages']).encode())}",
                        "feedback_token": f"tok-{n}",
                        "choices": [{"message": {"role": "assistant", "content": content}}],
                    },
                )
            if self.broken:
                self.broken -= 1
                raise httpx.ReadError("[Errno 9] Bad file descriptor", request=request)
            if self.busy:
                self.busy -= 1
                return httpx.Response(503, json={"error": {"message": "feedback not delivered, send it again"}})
            self.feedback.append((body, request.headers.get("authorization", "")))
            return httpx.Response(200, json={"event_id": "e", "interaction_id": body["interaction_id"], "recorded": True})


def run(seed: int, service: FakeService, n: int = 64, conversations: bool = False):
    population = Population(50, seed=seed, conversations=conversations)
    with httpx.Client(base_url="http://assistant", transport=httpx.MockTransport(service)) as http:
        stats = population.step(http, n)
    return stats


def test_users_ask_through_the_openai_api_and_send_feedback_with_the_answers_token():
    service = FakeService()
    stats = run(0, service)
    assert stats.interactions == len(service.completions) == len(stats.answers) == 64 and all(stats.answers)
    assert all(len(c["messages"]) == 1 and c["user"].startswith("user-0-") for c in service.completions)
    assert not any("conversation_id" in c for c in service.completions)  # one question each: as before
    assert stats.feedback == len(service.feedback) > 40  # feedback_rate 0.9
    for body, auth in service.feedback:
        assert body["interaction_id"].startswith("i-user-0-") and auth.startswith("Bearer tok-")
        assert body["type"] in {"thumbs_up", "thumbs_down", "rating", "correction"}
    assert 0.2 < stats.positive / stats.feedback < 0.8  # the hidden preference decides: about half are helpful


def test_a_seed_gives_the_same_requests_whatever_order_the_answers_return_in():
    def requests(seed: int):
        service = FakeService()
        run(seed, service)
        return sorted(json.dumps(c, sort_keys=True) for c in service.completions), sorted(
            json.dumps(b, sort_keys=True) for b, _ in service.feedback
        )

    assert requests(3) == requests(3)
    assert requests(3) != requests(4)


def test_a_503_is_tried_again_and_a_lasting_one_is_raised(monkeypatch):
    monkeypatch.setattr(users.time, "sleep", lambda s: None)
    service = FakeService(busy=5)
    stats = run(0, service, n=8)
    assert len(service.feedback) == stats.feedback  # every verdict landed in the end
    with pytest.raises(httpx.HTTPStatusError, match="503"):
        run(0, FakeService(busy=10**6), n=2)


def test_a_broken_connection_is_tried_again_and_a_lasting_one_is_raised(monkeypatch):
    monkeypatch.setattr(users.time, "sleep", lambda s: None)
    service = FakeService(broken=5)
    stats = run(0, service, n=8)
    assert len(service.feedback) == stats.feedback  # every verdict landed in the end
    with pytest.raises(httpx.ReadError):
        run(0, FakeService(broken=10**6), n=2)


def test_users_with_conversations_send_the_whole_conversation_each_turn():
    service = FakeService()
    stats = run(0, service, n=48, conversations=True)
    assert stats.interactions == len(service.completions) > 48  # some conversations ask follow-ups
    by_conversation: dict[str, list[list[dict]]] = {}
    for c in service.completions:
        by_conversation.setdefault(c["conversation_id"], []).append(c["messages"])
    assert len(by_conversation) == 48 and {len(turns) for turns in by_conversation.values()} == {1, 2, 3}
    for turns in by_conversation.values():
        turns.sort(key=len)
        for earlier, later in zip(turns, turns[1:], strict=False):  # each turn: the one before, its answer, the follow-up
            assert later[: len(earlier)] == earlier and [m["role"] for m in later[len(earlier) :]] == ["assistant", "user"]
        assert all(m["role"] != "system" for m in turns[0][1:])  # the app's system prompt, if any, first
    assert any(turns[0][0]["role"] == "system" for turns in by_conversation.values())
    assert 0 < stats.follow_up_feedback < stats.feedback


def test_a_follow_up_answered_as_the_earlier_question_is_disliked():
    stats = run(0, FakeService(forgetful=True), n=64, conversations=True)
    first_turns = (stats.positive - stats.follow_up_positive) / (stats.feedback - stats.follow_up_feedback)
    assert stats.follow_up_positive / stats.follow_up_feedback < 0.25 < first_turns
