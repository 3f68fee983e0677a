"""Per-caller limits where a request enters the assistant, so that one client cannot take the
service from everyone else. A caller is the API key a request presents (by its number among
`assistant.api_keys`, never its text), or, without a valid key (none configured, a browser posting
feedback with a token), the client's address.

- `CallerLimit` (ASGI middleware): at most `assistant.max_concurrent_per_key` requests of one caller
  in progress at once, every method but the cheap reads (GET, HEAD, OPTIONS); past it a 429 with
  Retry-After, before the body is read. With no key configured the API is open, which `rlhf serve`
  allows on loopback only: its local callers (the demo's users, a developer) are not counted. It
  also names the caller to the routes (`caller(request)`), which the micro-batcher is fair between
  (assistant/batcher.py), keys or not.
- The request body (core/web.py `BodyLimit`, `assistant.max_body_bytes`: 413), the turns and
  characters per turn of a completion (assistant/openai_api.py: 400), the items of a /chat/batch
  (assistant/service.py: 400) and the queue (assistant/batcher.py: 503, a caller's share 429) are
  limited where they are known.

Each limit is a setting (core/settings.py `AssistantSettings`), and each refusal names it.
"""

from __future__ import annotations

from collections import Counter

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from core.access import ApiKeys, bearer_of_headers
from core.web import Render, error_response

RETRY_AFTER_S = "1"
_CHEAP = frozenset({"GET", "HEAD", "OPTIONS"})


def caller_of(scope: Scope, keys: ApiKeys) -> str:
    number = keys.which(bearer_of_headers(scope.get("headers") or ()))
    if number is not None:
        return f"key-{number}"
    client = scope.get("client")
    return f"address-{client[0] if client else 'unknown'}"


def caller(request: Request) -> str | None:
    """The caller `CallerLimit` counted this request against (None where it does not run)."""
    return request.scope.get("state", {}).get("caller")


class CallerLimit:
    def __init__(self, app: ASGIApp, keys: ApiKeys, max_concurrent: int, render: Render):
        self.app = app
        self.keys = keys
        self.max_concurrent = max_concurrent
        self.render = render
        self._active: Counter[str] = Counter()  # touched on the event loop only: no lock

    def in_progress(self) -> int:
        """Requests admitted and not yet answered, over every caller."""
        return sum(self._active.values())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _CHEAP:
            await self.app(scope, receive, send)
            return
        who = caller_of(scope, self.keys)
        scope.setdefault("state", {})["caller"] = who
        if self.keys.open:
            await self.app(scope, receive, send)
            return
        if self._active[who] >= self.max_concurrent:
            message = (
                f"too many requests in progress from this caller: at most {self.max_concurrent} at once "
                "(`assistant.max_concurrent_per_key`); retry shortly"
            )
            response = error_response(self.render, scope["path"], 429, message, {"Retry-After": RETRY_AFTER_S})
            await response(scope, receive, send)
            return
        self._active[who] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._active[who] -= 1
            if not self._active[who]:
                del self._active[who]
