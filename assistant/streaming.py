"""`stream: true` answers of `/v1/chat/completions`, in OpenAI's server-sent events: the text of an
answer is sent as it is generated, while its question still shares a micro-batch with others.

The batcher's worker writes each new piece of the row's text into the request's `QueueSink`
(assistant/generation.py calls `put` from the generating thread; the pieces cross to the request's
event loop), and `chunks` sends each piece as one `chat.completion.chunk`:

    data: {"id": ..., "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, ...}],
           "feedback_collected": ..., "feedback_token": ..., "conversation_id": ...}     first, at once
    data: {"id": ..., "choices": [{"index": 0, "delta": {"content": " Open"}, "finish_reason": null}]}   each piece
    data: {"id": ..., "choices": [{"index": 0, "delta": {}, "finish_reason": "stop" | "length"}]}
    data: {"id": ..., "choices": [], "usage": {...}}              with `stream_options.include_usage`
    data: [DONE]

The interaction is logged once the answer is complete (and the SDK flushed) before the finish chunk,
so a client that read `[DONE]` knows its interaction is recorded. A client that goes away before
the answer is complete frees its slot: its row stops generating (or, still queued, is dropped) and
no interaction is logged for it: the user saw no whole answer, and an interaction event is a whole
answer (a feedback token it already received then names an interaction this server never recorded:
410). Its exposure is: while an experiment is routed, the exposure is logged with the answer's first
piece of text, so a user who leaves a variant's answer midway still counts as exposed to it (the
A/B analysis would otherwise lose exactly the users a bad variant drives away). A non-streamed
request whose client goes away (`answered` looks every `DISCONNECT_POLL_S`) stops its row too, and
logs nothing at all: its user was shown nothing.
A generation that fails after the stream has started ends it with an error event in OpenAI's shape
(`{"error": {...}}`, which its SDKs raise), without `[DONE]`. A relayed answer (a version an engine
serves) starts its stream with its first piece, so an engine that is down fails the request (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from assistant.answering import Assistant, Routed
from assistant.generation import Answer

log = logging.getLogger("rlhf.serve")
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request looks whether its client is still there


class QueueSink:
    """A streamed row's pieces of text, then its `Answer`, handed from the generating thread to the
    request's event loop; `None` once the batch's generate call is over (after the answer, or instead
    of it when the call failed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[str | Answer | None] = asyncio.Queue()
        self.abandoned = False  # set on the loop when the reader goes away, read by the generating thread
        self._next: list[str | Answer | None] = []  # an item taken while joining pieces, not yet read

    async def get(self) -> str | Answer | None:
        """The next item; pieces of text that already wait come joined, one chunk for them all (a reader
        that falls behind the generation, on a busy server, catches up in fewer, larger chunks)."""
        item = self._next.pop() if self._next else await self.queue.get()
        while isinstance(item, str) and not self.queue.empty():
            following = self.queue.get_nowait()
            if not isinstance(following, str):
                self._next.append(following)
                break
            item += following
        return item

    def push_back(self, item: str | Answer | None) -> None:
        """Return an item taken with `get`: the next `get` gives it again."""
        self._next.append(item)

    def put(self, item: str | Answer | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed (the server stopped): nobody reads on
            self.abandoned = True

    def done(self, answer: Answer) -> None:
        self.put(answer)

    def settled(self, _: object = None) -> None:
        self.put(None)


class Watch:
    """A non-streamed answer's sink: nothing is sent as it is written; it only tells the generation
    (or the relay) that the reader went away, so its row stops."""

    abandoned = False

    def put(self, delta: str) -> None:
        pass

    def done(self, answer: Answer) -> None:
        pass


async def answered(future: Future, watch: Watch, gone: Callable[[], Awaitable[bool]]) -> Answer | None:
    """The answer of a non-streamed request, or None once its client has gone away (`gone`, polled
    while waiting): the row stops, and as for a stream, no interaction is logged."""
    waiting = asyncio.wrap_future(future)
    while not (await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S))[0]:
        if await gone():
            watch.abandoned = True
            future.cancel()
            return None
    answer: Answer = waiting.result()[0]
    return answer


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.total_tokens,
    }


def extra_fields(item: Routed) -> dict[str, Any]:
    """Our fields beside OpenAI's, in an answer and in the first chunk of a streamed one."""
    return {
        "feedback_collected": item.feedback_collected,
        "feedback_token": item.feedback_token,
        "experiment": item.route.experiment,
        "variant": item.route.variant,
        "conversation_id": item.conversation_id,
    }


@dataclass
class Stream:
    """One streamed answer in flight: its question, its answers' future and its sink."""

    assistant: Assistant
    item: Routed
    future: Future
    sink: QueueSink
    include_usage: bool
    started: float  # perf_counter when the question was queued: its latency counts the wait
    created: int
    failed: dict[str, Any]  # the error event that ends a stream whose generation failed

    def __post_init__(self) -> None:
        self.future.add_done_callback(self.sink.settled)  # after every piece: the worker puts them before it settles

    async def opened(self) -> None:
        """Wait for the answer's first piece: a relayed answer (assistant/relay.py) whose engine fails
        before answering then fails the request with the relay's status (503 with Retry-After, 400)
        instead of an error event after a 200."""
        first = await self.sink.get()
        self.sink.push_back(first)
        failure = self.future.exception() if first is None else None
        if isinstance(failure, HTTPException):
            raise failure

    async def chunks(self) -> AsyncIterator[str]:
        item = self.item
        head = {
            "id": item.interaction_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": item.policy.version,
        }
        recorded = exposed = False
        try:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            yield sse({**head, **extra_fields(item), "choices": [first]})
            while isinstance(piece := await self.sink.get(), str):
                if not exposed:  # the user is shown the variant's answer from its first piece, whether or not they stay
                    self.assistant.expose(item)
                    exposed = True
                yield sse({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            try:  # the row's answer, as soon as the row is over; else the batch's (a generate that streams nothing)
                answer: Answer = piece if piece is not None else self.future.result()[0]
            except Exception:
                log.exception("the streamed answer %s failed after it started", item.interaction_id)
                yield sse(self.failed)
                return
            latency_ms = (time.perf_counter() - self.started) * 1000
            self.assistant.served(item, answer.text, latency_ms, exposed)
            recorded = True
            await run_in_threadpool(self.assistant.client.flush)
            yield sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]})
            if self.include_usage:
                yield sse({**head, "choices": [], "usage": usage(answer)})
            yield sse("[DONE]")
        finally:
            if not recorded:  # the client went away (or generation failed): free the row, log nothing
                self.sink.abandoned = True
                self.future.cancel()
