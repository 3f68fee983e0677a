"""Simulated users speak the chat-app API: a completion, then feedback with the answer's token;
reproducible whatever order concurrent answers return in; a 503 is tried again."""

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
from trainers.synthetic import all_questions, answer

QUESTIONS = {q.text: q for q in all_questions()}


class FakeService:
    """The two endpoints the users call, recording what they were sent; answers arrive in random order."""

    def __init__(self, busy: int = 0, broken: int = 0):
        self.busy = busy  # how many feedback posts answer 503 first
        self.broken = broken  # how many feedback posts meet a broken connection first
        self.completions: list[dict] = []
        self.feedback: list[tuple[dict, str]] = []
        self.lock = threading.Lock()
        self.jitter = random.Random()

    def answer(self, query: str, user: str) -> str:
        """About half the answers helpful, the rest unrelated (by the request, not its arrival order)."""
        seed = zlib.crc32(f"{user}:{query}".encode())
        return answer(QUESTIONS[query], "helpful", random.Random(seed)) if seed % 2 else "Try turning it off and on again."

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        time.sleep(self.jitter.random() / 200)  # concurrent replies come back in any order
        with self.lock:
            if request.url.path == "/v1/chat/completions":
                self.completions.append(body)
                query = body["messages"][-1]["content"]
                n = len(self.completions)
                return httpx.Response(
                    200,
                    json={
                        "id": f"i-{body['user']}-{query}",
                        "feedback_token": f"tok-{n}",
                        "choices": [{"message": {"role": "assistant", "content": self.answer(query, body["user"])}}],
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


def run(seed: int, service: FakeService, n: int = 64):
    population = Population(50, seed=seed)
    with httpx.Client(base_url="http://assistant", transport=httpx.MockTransport(service)) as http:
        stats = population.step(http, n)
    return stats


def test_users_ask_through_the_openai_api_and_send_feedback_with_the_answers_token():
    service = FakeService()
    stats = run(0, service)
    assert stats.interactions == len(service.completions) == len(stats.answers) == 64 and all(stats.answers)
    assert all(c["messages"][0]["role"] == "user" and c["user"].startswith("user-0-") for c in service.completions)
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
