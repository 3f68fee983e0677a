"""`stream: true` over stand-in models, driven in-process as an ASGI server drives the app (so a
piece can be read while the batch is still generating, and the client can go away): pieces arrive
before the generate call ends, usage in a last chunk when asked, a client that goes away frees its
row or its place in the queue and is not logged, a failed generation ends the stream with an error."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

from assistant import generation
from assistant.generation import Answer
from assistant.streaming import QueueSink
from tests.unit.assistant.test_api import ASK, make
from tests.unit.assistant.test_routing import started
from tests.unit.assistant.test_service import echo, loads  # noqa: F401 (a fixture)

STREAM = {**ASK, "stream": True}


class Exchange:
    """One POST to /v1/chat/completions as an ASGI server makes it: the body's pieces as they are
    sent, and `leave()` to report the client gone (`http.disconnect`)."""

    def __init__(self, app, body: dict):
        self.app = app
        self.raw = json.dumps(body).encode()
        self.events: asyncio.Queue[dict | str] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.status: int | None = None
        self.head: dict = {}  # the fields every chunk repeats

    async def run(self) -> None:
        path = "/v1/chat/completions"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn's: the app listens for the disconnect
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self.raw)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        read = False

        async def receive() -> dict:
            nonlocal read
            if not read:
                read = True
                return {"type": "http.request", "body": self.raw, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            for line in message.get("body", b"").decode().splitlines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    await self.events.put(data if data == "[DONE]" else json.loads(data))

        await self.app(scope, receive, send)

    async def next_content(self) -> str:
        """The next piece of text (skipping the role chunk)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), 10)
            assert isinstance(event, dict) and "error" not in event, event
            self.head = {k: event[k] for k in ("id", "object", "created", "model")}
            if content := event["choices"][0]["delta"].get("content"):
                return content

    def leave(self) -> None:
        self.gone.set()

    def rest(self) -> list:
        return [self.events.get_nowait() for _ in range(self.events.qsize())]


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))  # type: ignore[arg-type]


def test_pieces_arrive_while_the_batch_is_still_generating(loads, monkeypatch):  # noqa: F811
    release, finished = threading.Event(), threading.Event()

    def slow(policy, asks, sampling):
        for ask in asks:
            ask.sink.put("Open")
        release.wait(10)  # the generate call is still running: the first piece must already be out
        for ask in asks:
            ask.sink.put(" Settings.")
        finished.set()
        return [Answer("Open Settings.", "stop", 7, 3) for _ in asks]

    monkeypatch.setattr(generation, "generate", slow)
    client, _, producer = make(loads)

    async def scenario() -> None:
        exchange = Exchange(client.app, {**STREAM, "stream_options": {"include_usage": True}})
        task = asyncio.create_task(exchange.run())
        assert await exchange.next_content() == "Open"
        assert not finished.is_set() and producer.interactions == []  # mid-generation; nothing logged yet
        release.set()
        assert await exchange.next_content() == " Settings."
        await task
        finish, usage, done = exchange.rest()
        assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        assert done == "[DONE]" and exchange.status == 200

    run(scenario)
    assert [(e["response"], e["turn_index"]) for e in producer.interactions] == [("Open Settings.", 0)]


def until_abandoned(stopped: threading.Event, first: str = ""):
    """A generate call that writes `first`, then runs until its row's reader goes away (`stopped` set then)."""

    def generate(policy, asks, sampling):
        (ask,) = asks
        if first:
            ask.sink.put(first)
        deadline = time.monotonic() + 10
        while not ask.sink.abandoned and time.monotonic() < deadline:  # what generation.RowsDone reads each step
            time.sleep(0.01)
        if ask.sink.abandoned:
            stopped.set()
        return [Answer(first, "length", 7, 1)]

    return generate


def test_a_client_that_goes_away_mid_stream_stops_its_row_and_logs_its_exposure_only(loads, monkeypatch):  # noqa: F811
    stopped = threading.Event()
    monkeypatch.setattr(generation, "generate", until_abandoned(stopped, "Open"))
    client, assistant, producer = make(loads)
    assistant.pool.experiments.apply(started())  # routed: the user is shown a variant's answer
    assistant.pool.refresh()

    async def scenario() -> None:
        exchange = Exchange(client.app, STREAM)
        task = asyncio.create_task(exchange.run())
        assert await exchange.next_content() == "Open"
        exchange.leave()
        await task

    run(scenario)
    assert stopped.wait(10)
    assert producer.interactions == []  # no whole answer, no interaction
    assert [(e["user_id"], e["experiment"]) for e in producer.exposures] == [("u-1", "policy-ab:v2")]


def test_a_stream_whose_client_goes_away_while_it_is_queued_is_never_generated(loads, monkeypatch):  # noqa: F811
    entered, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def held(policy, asks, sampling):
        seen.extend(ask.prompt.query for ask in asks)
        entered.set()
        release.wait(10)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", held)
    client, assistant, producer = make(loads, max_batch=1)

    async def scenario() -> None:
        first = Exchange(client.app, {**ASK, "messages": [{"role": "user", "content": "first"}]})
        busy = asyncio.create_task(first.run())
        await asyncio.to_thread(entered.wait, 10)  # the worker is generating: the stream below waits in the queue
        queued = Exchange(client.app, {**STREAM, "messages": [{"role": "user", "content": "queued"}]})
        task = asyncio.create_task(queued.run())
        role = await asyncio.wait_for(queued.events.get(), 10)  # its first chunk comes at once, before generation
        assert isinstance(role, dict) and role["choices"][0]["delta"]["role"] == "assistant"
        queued.leave()
        await task
        release.set()
        await busy
        # The next generate call is for a later request, not the abandoned one.
        await Exchange(client.app, {**ASK, "messages": [{"role": "user", "content": "later"}]}).run()

    run(scenario)
    assert seen == ["first", "later"]
    assert [e["query"] for e in producer.interactions] == ["first", "later"]


def test_a_generation_that_fails_mid_stream_ends_it_with_an_error_event_and_logs_nothing(loads, monkeypatch):  # noqa: F811
    def broken(policy, asks, sampling):
        asks[0].sink.put("Open")
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(generation, "generate", broken)
    client, _, producer = make(loads)

    async def scenario() -> None:
        exchange = Exchange(client.app, STREAM)
        await exchange.run()
        events = exchange.rest()
        assert events[-1]["error"]["type"] == "server_error" and "[DONE]" not in events

    run(scenario)
    assert producer.interactions == []


def test_a_plain_answer_has_usage_and_its_finish_reason(loads):  # noqa: F811
    client, _, _ = make(loads)
    body = client.post("/v1/chat/completions", json=ASK).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13}  # as `echo` counts: words


def test_stop_is_a_string_or_up_to_four_and_reaches_generation(loads, monkeypatch):  # noqa: F811
    seen = []

    def recorded(policy, asks, sampling):
        seen.append(asks[0].stop)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", recorded)
    client, _, _ = make(loads)
    assert client.post("/v1/chat/completions", json={**ASK, "stop": "\n"}).status_code == 200
    assert client.post("/v1/chat/completions", json={**ASK, "stop": ["a", "b"]}).status_code == 200
    assert seen == [("\n",), ("a", "b")]
    for bad in (["a"] * 5, "", [""]):
        r = client.post("/v1/chat/completions", json={**ASK, "stop": bad})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("stop"), r.text


def test_a_stream_ends_with_its_own_row_not_with_the_batch(loads, monkeypatch):  # noqa: F811
    release, finished = threading.Event(), threading.Event()

    def longer_rows_go_on(policy, asks, sampling):
        (ask,) = asks
        ask.sink.put("Open Settings.")
        ask.sink.done(Answer("Open Settings.", "stop", 7, 3))  # this row is over; the batch's other rows are not
        release.wait(10)
        finished.set()
        return [Answer("Open Settings.", "stop", 7, 3)]

    monkeypatch.setattr(generation, "generate", longer_rows_go_on)
    client, _, producer = make(loads)

    async def scenario() -> None:
        exchange = Exchange(client.app, STREAM)
        task = asyncio.create_task(exchange.run())
        assert await exchange.next_content() == "Open Settings."
        assert await asyncio.wait_for(exchange.events.get(), 10) == {
            **exchange.head,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        assert await asyncio.wait_for(exchange.events.get(), 10) == "[DONE]"
        assert not finished.is_set() and len(producer.interactions) == 1  # logged while the batch still generates
        release.set()
        await task

    run(scenario)


def test_min_tokens_reaches_generation_and_may_not_exceed_max_tokens(loads, monkeypatch):  # noqa: F811
    seen = []

    def recorded(policy, asks, sampling):
        seen.append(sampling)
        return echo(policy, asks, sampling)

    monkeypatch.setattr(generation, "generate", recorded)
    client, _, _ = make(loads)
    assert client.post("/v1/chat/completions", json={**ASK, "max_tokens": 48, "min_tokens": 48}).status_code == 200
    assert (seen[0].min_new_tokens, seen[0].max_new_tokens) == (48, 48)
    r = client.post("/v1/chat/completions", json={**ASK, "max_tokens": 8, "min_tokens": 9})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("min_tokens: 9 is more than max_tokens (8)")


def test_pieces_that_already_wait_are_sent_as_one_chunk():
    answer = Answer("Open Settings.", "stop", 7, 3)

    async def scenario() -> None:
        sink = QueueSink(asyncio.get_running_loop())
        for item in ("Open", " Settings", ".", answer, None):
            sink.queue.put_nowait(item)
        assert [await sink.get() for _ in range(3)] == ["Open Settings.", answer, None]

    run(scenario)


def test_a_client_that_goes_away_before_a_non_streamed_answer_stops_its_row_and_logs_nothing(loads, monkeypatch):  # noqa: F811
    stopped = threading.Event()
    monkeypatch.setattr(generation, "generate", until_abandoned(stopped))
    client, assistant, producer = make(loads)
    assistant.pool.experiments.apply(started())
    assistant.pool.refresh()

    async def scenario() -> None:
        exchange = Exchange(client.app, ASK)
        task = asyncio.create_task(exchange.run())
        await asyncio.sleep(0.3)  # queued and generating
        exchange.leave()
        await task

    run(scenario)
    assert stopped.wait(10)
    assert producer.interactions == [] and producer.exposures == []
