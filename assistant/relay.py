"""The `openai` backend: a version an inference engine serves (its deployment record in the registry,
registry/deployment.py) is answered by relaying the question to the engine's
`/v1/chat/completions`, streamed, and handing each piece to the question's sink as it arrives, the
way assistant/generation.py hands the pieces it generates. Everything else the assistant does
(routing, events, feedback tokens, usage) stays as it is for in-process versions.

    relay = Relay(settings.gateway)
    future = relay.submit(EngineVersion("v-abc", deployment), [Ask(conversation, stop, sink)], sampling)

What is sent: the conversation in OpenAI's messages (trainers/chat_format.py `messages`: the engine
applies the model's own chat template, as training does), the model name the deployment records,
and the sampling the gateway owns (max_tokens, min_tokens, temperature, top_p, stop), with
`stream_options.include_usage` for `usage`. The answer is treated as in-process generation treats
its own: leading and trailing whitespace stripped, trailing whitespace held back while streaming so
the pieces join to exactly the final text.

Failures: an engine that cannot be reached, times out, answers 503 or 429, or drops the stream
(killed mid-answer) is unavailable: HTTP 503 with `Retry-After: gateway.retry_after_s` (a stream
already started ends with an error event instead, assistant/streaming.py). So is a model it does
not serve (404: an engine restarted since the version was deployed forgets it), the message naming
the command that deploys it again. A request the engine refuses (400, 422: a prompt longer than its
context, a sampling value it rejects) is answered 400 with the engine's own message; any other
status 502. None of them logs an interaction. A reader that goes away closes the engine's stream,
which makes the engine abort the request. Each question holds one thread while relayed; more than
`gateway.max_relayed` at once are refused (503).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import HTTPException

from assistant.generation import Answer, Ask, FinishReason, GenerationSettings
from core.serving_settings import GatewaySettings
from registry.deployment import engine_message
from registry.store import Deployment
from trainers.chat_format import messages


@dataclass(frozen=True)
class EngineVersion:
    """A policy version served by an engine: what the assistant routes to instead of a loaded model."""

    version: str
    deployment: Deployment


class Relay:
    """Relays questions to the engines that serve their versions, one HTTP stream per question."""

    def __init__(self, gateway: GatewaySettings):
        self.gateway = gateway
        key = gateway.engine_api_key.get_secret_value() if gateway.engine_api_key else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(gateway.read_timeout_s, connect=gateway.connect_timeout_s)
        self._clients: dict[str, httpx.Client] = {}  # per engine URL: its connection pool
        self._pool = ThreadPoolExecutor(gateway.max_relayed, thread_name_prefix="relay")
        self._lock = threading.Lock()
        self._in_flight = 0

    def submit(self, target: EngineVersion, asks: Sequence[Ask], sampling: GenerationSettings) -> Future:
        """The future of the answers to `asks` (503 at once when `max_relayed` questions are in flight)."""
        with self._lock:
            if self._in_flight + len(asks) > self.gateway.max_relayed:
                raise self.unavailable(f"{self._in_flight} questions are being relayed to engines, the limit")
            self._in_flight += len(asks)
        try:
            return self._pool.submit(self._answer_all, target, list(asks), sampling)
        except RuntimeError:  # shut down
            self._settle(len(asks))
            raise self.unavailable("the assistant is shutting down") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()

    def unavailable(self, why: str) -> HTTPException:
        return HTTPException(503, why, headers={"Retry-After": str(self.gateway.retry_after_s)})

    def _settle(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count

    def _client(self, url: str) -> httpx.Client:
        with self._lock:
            if url not in self._clients:
                limits = httpx.Limits(max_connections=self.gateway.max_relayed, max_keepalive_connections=64)
                self._clients[url] = httpx.Client(base_url=url, headers=self._headers, timeout=self._timeout, limits=limits)
            return self._clients[url]

    def _answer_all(self, target: EngineVersion, asks: list[Ask], sampling: GenerationSettings) -> list[Answer]:
        try:
            return [self._answer(target, ask, sampling) for ask in asks]
        finally:
            self._settle(len(asks))

    def _answer(self, target: EngineVersion, ask: Ask, sampling: GenerationSettings) -> Answer:
        url, model = target.deployment.url, target.deployment.model
        body: dict[str, Any] = {
            "model": model,
            "messages": messages(ask.prompt),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_new_tokens,
            "min_tokens": sampling.min_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if ask.stop:
            body["stop"] = list(ask.stop)
        text = RelayedText(ask)
        try:
            with self._client(url).stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._refusal(url, model, response)
                for line in response.iter_lines():
                    if text.abandoned:
                        break  # closing the stream makes the engine abort the request
                    if line.startswith("data: ") and line != "data: [DONE]":
                        text.add(json.loads(line[len("data: ") :]))
        except httpx.HTTPError as exc:
            raise self.unavailable(f"the engine at {url} serving {target.version} failed: {type(exc).__name__}") from None
        return text.end()

    def _refusal(self, url: str, model: str, response: httpx.Response) -> HTTPException:
        status, reason = response.status_code, engine_message(response)
        if status in (429, 503):
            return self.unavailable(f"the engine at {url} is overloaded ({status}): {reason}")
        if status == 404:  # an engine restart forgets run-time adapters: the version must be deployed again
            return self.unavailable(f"the engine at {url} does not serve {model} (`rlhf engine deploy {model}`): {reason}")
        if status in (400, 422):
            return HTTPException(400, f"the engine refused the request: {reason}")
        return HTTPException(502, f"the engine at {url} failed to answer for {model} ({status}): {reason}")


class RelayedText:
    """One relayed answer as its chunks arrive: the pieces handed to the sink, and the answer."""

    def __init__(self, ask: Ask):
        self.sink = ask.sink
        self.text = ""
        self.sent = 0
        self.finish: FinishReason = "length"
        self.prompt_tokens = self.completion_tokens = 0

    @property
    def abandoned(self) -> bool:
        return self.sink is not None and self.sink.abandoned

    def add(self, chunk: dict[str, Any]) -> None:
        if usage := chunk.get("usage"):
            self.prompt_tokens, self.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        for choice in chunk.get("choices", ()):
            self.text = (self.text + (choice.get("delta", {}).get("content") or "")).lstrip()
            if choice.get("finish_reason") in ("stop", "length"):
                self.finish = choice["finish_reason"]
        self._send(len(self.text.rstrip()))

    def end(self) -> Answer:
        self.text = self.text.rstrip()
        self._send(len(self.text))
        answer = Answer(self.text, self.finish, self.prompt_tokens, self.completion_tokens)
        if self.sink is not None:
            self.sink.done(answer)
        return answer

    def _send(self, upto: int) -> None:
        if upto > self.sent and self.sink is not None:
            self.sink.put(self.text[self.sent : upto])
        self.sent = max(self.sent, upto)
