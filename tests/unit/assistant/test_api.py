"""The HTTP API over an Assistant with stand-in models and producer: the OpenAI-compatible
completions (plain and streamed), the errors' shape, API keys, CORS, and feedback with tokens."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import assistant.answering as answering
from assistant import generation
from assistant.answering import Assistant, PolicyPool
from assistant.feedback import feedback_event_id
from assistant.generation import Ask
from assistant.service import build_app
from core.settings import AssistantSettings, Settings
from schemas.events import latest_verdicts
from schemas.experiments import ExperimentBook
from tests.unit.assistant.test_service import Client, Registry, echo, loads  # noqa: F401 (a fixture)
from trainers.chat_format import Conversation

KEY = "sk-test-1"
ASK = {
    "model": "assistant",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I reset my password?"}],
    "user": "u-1",
}


def make(loads, **assistant_settings) -> tuple[TestClient, Assistant, Client]:  # noqa: F811
    producer = Client()
    settings = Settings(assistant=AssistantSettings(**assistant_settings))
    assistant = Assistant(settings, PolicyPool(Registry("v1"), ExperimentBook()), producer)
    return TestClient(build_app(settings, assistant)), assistant, producer


@pytest.fixture
def api(loads):  # noqa: F811
    return make(loads)


def test_a_completion_answers_the_user_and_names_its_interaction_and_version(api):
    client, assistant, producer = api
    r = client.post("/v1/chat/completions", json=ASK)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "v1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "v1: How do I reset my password?"}
    assert r.headers["x-feedback-token"] == body["feedback_token"]
    assert assistant.tokens.verify(body["feedback_token"]).interaction_id == body["id"]
    assert [(e["interaction_id"], e["user_id"], e["query"]) for e in producer.interactions] == [
        (body["id"], "u-1", "How do I reset my password?")
    ]
    assert [(t.role, t.content) for t in producer.interactions[0]["context"]] == [("system", "Be brief.")]


def test_a_streamed_completion_is_openai_chunks_ending_with_done(api):
    client, _, _ = api
    with client.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "v1: How do I reset my password?"
    assert chunks[0]["feedback_token"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_without_a_user_each_request_is_a_new_anonymous_user(api):
    client, _, producer = api
    for _ in range(2):
        client.post("/v1/chat/completions", json={k: v for k, v in ASK.items() if k != "user"})
    users = [e["user_id"] for e in producer.interactions]
    assert len(set(users)) == 2 and all(u.startswith("anon-") for u in users)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]}, "messages.1.role"),
        ({"messages": [{"role": "robot", "content": "q?"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x" * 4001}]}, "messages.0.content"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"n": 2}, "n"),
    ],
)
def test_bad_requests_are_400s_in_openai_shape_naming_the_field(api, change, field):
    r = api[0].post("/v1/chat/completions", json={**ASK, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(f"{field}:"), error


def test_models_lists_the_served_versions(api):
    assert [m["id"] for m in api[0].get("/v1/models").json()["data"]] == ["v1"]


def test_api_keys_guard_the_api(loads):  # noqa: F811
    client, _, _ = make(loads, api_keys=(SecretStr(KEY),))
    for path, call in (("/v1/models", client.get), ("/v1/chat/completions", lambda p, **kw: client.post(p, json=ASK, **kw))):
        assert call(path).status_code == 401 and "missing API key" in call(path).json()["error"]["message"]
        assert call(path, headers={"Authorization": "Bearer nope"}).json()["error"]["message"] == "invalid API key"
        assert call(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.post("/chat", json={"user_id": "u", "query": "q?"}).status_code == 401


def test_cors_lets_the_configured_origin_in(loads):  # noqa: F811
    client, _, _ = make(loads, cors_origins=("https://chat.example",))
    preflight = {
        "Origin": "https://chat.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    assert client.options("/v1/feedback", headers=preflight).headers["access-control-allow-origin"] == "https://chat.example"
    assert (
        "access-control-allow-origin"
        not in client.options("/v1/feedback", headers={**preflight, "Origin": "https://evil.example"}).headers
    )


def answered(client: TestClient, user: str = "u-1") -> dict:
    return client.post("/v1/chat/completions", json={**ASK, "user": user}, headers={"Authorization": f"Bearer {KEY}"}).json()


def post_feedback(client: TestClient, bearer: str | None, **body) -> dict:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    r = client.post("/v1/feedback", json=body, headers=headers)
    return {"status": r.status_code, **r.json()}


def message(reply: dict) -> str:
    return reply["error"]["message"]


def test_feedback_with_the_token_is_filled_from_what_was_served_one_id_per_distinct_verdict(loads):  # noqa: F811
    client, _, producer = make(loads, api_keys=(SecretStr(KEY),))
    a = answered(client)
    up = post_feedback(client, a["feedback_token"], interaction_id=a["id"], type="thumbs_up", comment="nice")
    assert up == {
        "status": 200,
        "event_id": feedback_event_id((a["id"], "verdict"), 0),
        "interaction_id": a["id"],
        "recorded": True,
    }
    again = post_feedback(client, a["feedback_token"], interaction_id=a["id"], type="thumbs_up", comment="nice")
    assert again["event_id"] == up["event_id"]  # a double click: the same event, deduped downstream
    down = post_feedback(client, None, interaction_id=a["id"], type="rating", rating=2, token=a["feedback_token"])
    assert down["event_id"] == feedback_event_id((a["id"], "verdict"), 1)  # a change of mind: a new, later event
    fix = post_feedback(client, KEY, interaction_id=a["id"], type="correction", correction="Open Settings > Security.")
    assert fix["event_id"] == feedback_event_id((a["id"], "correction"), 0)  # beside the verdict, not replacing it
    back = post_feedback(client, KEY, interaction_id=a["id"], type="thumbs_up")
    assert back["event_id"] == feedback_event_id((a["id"], "verdict"), 2)  # up, down, up again: the third verdict, not the first
    first, repeat, second, correction, third = producer.feedbacks
    assert (first.query, first.response, first.model_version, first.user_id) == (
        "How do I reset my password?",
        a["choices"][0]["message"]["content"],
        "v1",
        "u-1",
    )
    assert (first.feedback_type, first.metadata, second.feedback_type, second.rating) == (
        "thumbs_up",
        {"source": "http", "comment": "nice", "verdict_number": 0},
        "rating",
        2,
    )
    assert repeat.event_id == first.event_id and third.event_id not in {first.event_id, second.event_id}
    assert [e.feedback_type for e in latest_verdicts(producer.feedbacks)] == ["correction", "thumbs_up"]


def test_feedback_access_and_errors(loads):  # noqa: F811
    client, assistant, _ = make(loads, api_keys=(SecretStr(KEY),))
    a, b = answered(client), answered(client, "u-2")
    assert post_feedback(client, None, interaction_id=a["id"], type="thumbs_up")["status"] == 401
    assert "forged" in message(post_feedback(client, "bogus.token", interaction_id=a["id"], type="thumbs_up"))
    expired = assistant.tokens.issue(a["id"], "u-1", now=time.time() - assistant.tokens.ttl_s - 1)
    assert (r := post_feedback(client, expired, interaction_id=a["id"], type="thumbs_up"))[
        "status"
    ] == 401 and "expired" in message(r)
    assert (r := post_feedback(client, b["feedback_token"], interaction_id=a["id"], type="thumbs_up"))["status"] == 403 and b[
        "id"
    ] in message(r)
    assert post_feedback(client, a["feedback_token"], interaction_id=a["id"], type="thumbs_up", user="u-2")["status"] == 403
    assert post_feedback(client, KEY, interaction_id="never-served", type="thumbs_up")["status"] == 404
    assistant.recent = type(assistant.recent)(1, 60)  # forgotten, e.g. by a restart: the token proves it was served
    assert post_feedback(client, a["feedback_token"], interaction_id=a["id"], type="thumbs_up")["status"] == 410
    c = answered(client)
    assert (r := post_feedback(client, KEY, interaction_id=c["id"], type="rating", rating=7))["status"] == 400 and message(
        r
    ).startswith("rating:")
    assert (r := post_feedback(client, KEY, interaction_id=c["id"], type="rating"))[
        "status"
    ] == 400 and "rating: required" in message(r)
    assert (r := post_feedback(client, KEY, interaction_id=c["id"], type="correction"))[
        "status"
    ] == 400 and "correction: required" in message(r)
    assert post_feedback(client, KEY, interaction_id=c["id"], type="thumbs_down")["status"] == 200


def test_with_no_keys_configured_feedback_is_open_but_a_presented_token_is_still_checked(api):
    client, _, _ = api
    a = answered(client)
    assert post_feedback(client, None, interaction_id=a["id"], type="thumbs_down")["status"] == 200
    assert post_feedback(client, "bogus.token", interaction_id=a["id"], type="thumbs_down")["status"] == 401


def test_the_chat_page_is_served(api):
    r = api[0].get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


def test_requests_beyond_the_queue_are_503s_and_sampling_comes_from_the_settings(loads, monkeypatch):  # noqa: F811
    entered, release, seen = threading.Event(), threading.Event(), []

    def held(policy, asks, sampling):
        seen.append(sampling)
        entered.set()
        release.wait(10)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", held)
    client, assistant, _ = make(loads, max_batch=1, queue_size=1, temperature=0.5, top_p=0.7)
    policy, _ = assistant.route("u-1")
    sampling = answering.Sampling.configured(assistant.settings)
    busy = [assistant.batcher.submit(policy, [Ask(Conversation("generating"))], sampling)]
    assert entered.wait(10)  # the worker has taken it: the next one waits in the queue, and fills it
    busy.append(assistant.batcher.submit(policy, [Ask(Conversation("queued"))], sampling))
    r = client.post("/v1/chat/completions", json=ASK)
    assert r.status_code == 503 and "busy" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
    release.set()
    assert [[a.text for a in f.result(10)] for f in busy] == [["v1: generating"], ["v1: queued"]]
    assert seen[0] == answering.Sampling(assistant.settings.policy.training.max_new_tokens, 0.5, 0.7)


# Issue 33, finding 3: 4xx, never a 500, for what a client can send.
@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages.0.content"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}', None),
        ("/chat", b'{"user_id": "u\\ud800", "query": "hi"}', "user_id"),
        ("/chat", b'{"user_id": "u-1", "query": "hi \\ud800"}', "query"),
        ("/chat/batch", b'[{"user_id": "u-1", "query": "q?"}, {"user_id": "u-2", "query": "\\ud800"}]', "1.query"),
        ("/v1/feedback", b'{"interaction_id": "i-1", "type": "thumbs_up", "comment": "\\ud800"}', "comment"),
        ("/v1/feedback", b'{"interaction_id": "i-1", "type": "thumbs_up", "token": "\\ud800.\\ud800"}', None),
    ],
)
def test_a_lone_surrogate_in_the_body_is_a_4xx_naming_the_field(api, path, body, field):
    client, _, producer = api
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    text = r.json()["error"]["message"] if path.startswith("/v1/") else r.json()["detail"]
    assert field is None or text.startswith(f"{field}:"), text
    assert producer.interactions == [] and producer.feedbacks == []


@pytest.mark.parametrize("token", ["é.é", "eyJpIjoiaS0xIn0.ñ", "a" * 5000 + ".b"])
def test_a_token_with_non_ascii_characters_is_a_401_not_a_500(api, token):
    r = api[0].post("/v1/feedback", json={"interaction_id": "i-1", "type": "thumbs_up", "token": token})
    assert r.status_code in (400, 401) and "token" in r.json()["error"]["message"]


def test_an_unexpected_error_is_a_500_with_an_id_that_is_in_the_log_and_no_traceback(api, monkeypatch, caplog):
    client, assistant, _ = api
    monkeypatch.setattr(type(assistant), "route", lambda self, user: 1 / 0)
    with caplog.at_level("ERROR", logger="rlhf.http"):
        r = client.post("/v1/chat/completions", json=ASK)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    message = r.json()["error"]["message"]
    error_id = message.split()[2].rstrip(":")
    assert "Traceback" not in r.text and "ZeroDivisionError" not in r.text
    assert any(error_id in rec.getMessage() and rec.exc_info for rec in caplog.records)
    assert client.post("/chat", json={"user_id": "u", "query": "q?"}).json()["detail"].startswith("internal error ")


# Issue 33, finding 4: validation before any work or event; a request fails with no side effect.
def test_a_bad_user_id_is_a_400_before_anything_is_generated_or_logged(loads, monkeypatch):  # noqa: F811
    calls: list[list] = []

    def counted(policy, asks, sampling):
        calls.append(asks)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", counted)
    client, _, producer = make(loads)
    r = client.post("/chat", json={"user_id": "bad user", "query": "q?"})
    assert r.status_code == 400 and r.json()["detail"].startswith("user_id: ")
    batch = [{"user_id": "good", "query": "q?"}, {"user_id": "bad user", "query": "q?"}, {"user_id": "fine", "query": "q?"}]
    r = client.post("/chat/batch", json=batch)
    assert r.status_code == 400 and r.json()["detail"].startswith("1.user_id: ")
    assert calls == [] and producer.interactions == [] and producer.exposures == []


def test_a_batch_whose_generation_fails_logs_none_of_its_items(loads, monkeypatch):  # noqa: F811
    def partly(policy, asks, sampling):
        if any("boom" in ask.prompt.query for ask in asks):
            raise RuntimeError("the model fell over")
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", partly)
    client, _, producer = make(loads, max_batch=1)  # one query per generate call: the good ones are answered first
    r = client.post("/chat/batch", json=[{"user_id": "u1", "query": "fine"}, {"user_id": "u2", "query": "boom"}])
    assert r.status_code == 500 and producer.interactions == []
    assert client.post("/chat/batch", json=[{"user_id": "u1", "query": "fine"}]).status_code == 200
    assert len(producer.interactions) == 1


# Issue 33, finding 6: feedback sampling is decided when the answer is served, and no verdict is dropped.
def test_an_answer_says_whether_its_feedback_is_collected_and_every_verdict_with_a_token_is_recorded(loads):  # noqa: F811
    client, assistant, producer = make(loads)
    producer.collection_rate = 0.3
    replies = [client.post("/v1/chat/completions", json={**ASK, "user": f"u-{n}"}).json() for n in range(60)]
    collected = [r for r in replies if r["feedback_collected"]]
    assert 0 < len(collected) < 60 and all(r["feedback_token"] for r in collected)
    assert all(r["feedback_token"] is None for r in replies if not r["feedback_collected"])
    assert [e["interaction_id"] for e in producer.interactions] == [r["id"] for r in collected]  # logged where collected
    for r in collected:
        receipt = post_feedback(client, r["feedback_token"], interaction_id=r["id"], type="thumbs_down")
        assert receipt["status"] == 200 and receipt["recorded"] is True
    assert sorted(e.interaction_id for e in producer.feedbacks) == sorted(r["id"] for r in collected)
    outside = next(r for r in replies if not r["feedback_collected"])
    refused = post_feedback(client, None, interaction_id=outside["id"], type="thumbs_up")  # open API, no token
    assert refused["status"] == 409 and "not collected" in message(refused)
    assert len(producer.feedbacks) == len(collected)
    # A token stays good for what it promised, even if the rate changes under it (a restart with another setting).
    producer.collection_rate = 0.0
    again = post_feedback(client, collected[0]["feedback_token"], interaction_id=collected[0]["id"], type="thumbs_up")
    assert again["status"] == 200 and len(producer.feedbacks) == len(collected) + 1


def test_the_chat_page_keeps_the_api_key_out_of_persistent_storage_and_shows_when_feedback_is_not_collected(api):
    """Issue 33, finding 8 (the browser run is tests/integration/assistant/test_chat_page.py)."""
    page = api[0].get("/").text
    assert 'sessionStorage.setItem("rlhf-api-key"' in page
    assert not re.search(r"localStorage\.(setItem|getItem)\(\"rlhf-api-key\"", page)
    assert "feedback_collected" in page


def test_with_replicas_only_vouched_feedback_waits_for_an_interaction_another_replica_served(loads, monkeypatch):  # noqa: F811
    """Issue 37: an id nobody vouches for (open API, no token) is not waited for, so made-up ids cannot
    hold request threads; a token's interaction is, since another replica may have served it."""
    client, assistant, _ = make(loads, replicas=2, feedback_secret=SecretStr("s" * 32))
    waited: list[str] = []

    def wait_for(interaction: str, timeout_s: float) -> bool:
        waited.append(interaction)
        return False

    monkeypatch.setattr(assistant.recent, "wait_for", wait_for)
    assert post_feedback(client, None, interaction_id="made-up", type="thumbs_up")["status"] == 404
    assert waited == []
    token = assistant.tokens.issue("elsewhere", "u-1")  # signed by a peer sharing the secret, not read here yet
    assert post_feedback(client, token, interaction_id="elsewhere", type="thumbs_up")["status"] == 410
    assert waited == ["elsewhere"]
