"""Limits where a request enters the assistant, over stand-in models and producer (issue 33, findings
1 and 5): body bytes (413), turns and characters per turn (400), items per /chat/batch (400),
requests in progress per caller (429), each refusal naming its setting, and nothing generated or
logged for a refused request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import SecretStr

from assistant import generation
from assistant.limits import CallerLimit
from tests.unit.assistant.test_api import ASK, make
from tests.unit.assistant.test_service import echo, loads  # noqa: F401 (a fixture)

KEYS = (SecretStr("sk-flood"), SecretStr("sk-other"))


def error(r) -> str:
    body = r.json()
    return body["error"]["message"] if "error" in body else body["detail"]


def test_a_2000_item_batch_is_refused_whole_naming_the_limit_and_nothing_is_generated(loads, monkeypatch):  # noqa: F811
    calls: list[list] = []

    def counted(policy, asks, sampling):
        calls.append(asks)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", counted)
    client, _, producer = make(loads)
    r = client.post("/chat/batch", json=[{"user_id": f"u{n}", "query": "q?"} for n in range(2000)])
    assert r.status_code == 400 and "2000 items, at most 32" in error(r) and "assistant.max_batch_items" in error(r)
    assert calls == [] and producer.interactions == []
    assert client.post("/chat/batch", json=[{"user_id": f"u{n}", "query": "q?"} for n in range(32)]).status_code == 200


def test_a_10_mb_earlier_turn_is_a_413_before_it_is_parsed(loads):  # noqa: F811
    client, _, producer = make(loads)
    huge = {**ASK, "messages": [{"role": "user", "content": "x" * 10_000_000}, *ASK["messages"]]}
    r = client.post("/v1/chat/completions", json=huge)
    assert r.status_code == 413 and "limit of 1048576 bytes" in error(r)
    assert producer.interactions == []


def test_the_body_limit_holds_without_a_content_length(loads):  # noqa: F811
    client, _, _ = make(loads, max_body_bytes=2048)
    chunks = iter([b'{"user_id": "u1", "query": "', b"x" * 4096, b'"}'])
    r = client.post("/chat", content=chunks, headers={"content-type": "application/json"})  # sent chunked
    assert r.status_code == 413 and "2048 bytes" in error(r)


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([{"role": "user", "content": "q?"}] * 10_000, "messages: 10000 messages, at most 64 (`assistant.max_turns`)"),
        (
            [{"role": "assistant", "content": "y" * 16_001}, {"role": "user", "content": "q?"}],
            "messages.0.content: 16001 characters, at most 16000 (`assistant.max_turn_chars`)",
        ),
    ],
)
def test_too_many_turns_or_too_long_a_turn_is_a_400_naming_the_limit(loads, messages, expected):  # noqa: F811
    client, _, producer = make(loads)
    r = client.post("/v1/chat/completions", json={**ASK, "messages": messages})
    assert r.status_code == 400 and error(r) == expected
    assert producer.interactions == []


def test_requests_in_progress_past_the_callers_limit_are_429s_and_other_callers_are_served(loads, monkeypatch):  # noqa: F811
    entered, release = threading.Semaphore(0), threading.Event()

    def held(policy, asks, sampling):
        entered.release()
        release.wait(10)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", held)
    client, _, _ = make(loads, api_keys=KEYS, max_concurrent_per_key=2, max_batch=1)
    flood = {"Authorization": "Bearer sk-flood"}
    with ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(client.post, "/chat", json={"user_id": f"f{n}", "query": "q?"}, headers=flood) for n in range(2)]
        assert entered.acquire(timeout=10)  # the flood's first request is generating, its second one waits
        limit = _caller_limit(client.app)
        deadline = time.monotonic() + 10
        while limit.in_progress() < 2 and time.monotonic() < deadline:  # the second is admitted, not just sent
            time.sleep(0.01)
        refused = client.post("/chat", json={"user_id": "f9", "query": "q?"}, headers=flood)
        other = pool.submit(
            client.post, "/chat", json={"user_id": "o1", "query": "q?"}, headers={"Authorization": "Bearer sk-other"}
        )
        release.set()
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "at most 2 at once" in error(refused) and "assistant.max_concurrent_per_key" in error(refused)
        assert [f.result(10).status_code for f in busy] == [200, 200] and other.result(10).status_code == 200
    assert client.post("/chat", json={"user_id": "f9", "query": "q?"}, headers=flood).status_code == 200  # slots freed


def _caller_limit(app: Any) -> CallerLimit:
    """The app's per-caller limit, found down its built middleware stack."""
    node = app.middleware_stack
    while not isinstance(node, CallerLimit):
        node = node.app
    return node


def test_every_limit_is_a_setting_with_a_safe_default():
    from core.settings import AssistantSettings

    a = AssistantSettings()
    assert (a.max_body_bytes, a.max_turns, a.max_turn_chars, a.max_batch_items, a.max_concurrent_per_key) == (
        1 << 20,
        64,
        16_000,
        32,
        8,
    )
    assert a.max_batch_items * 2 <= a.queue_size  # a full batch from one caller fits its share of the queue
