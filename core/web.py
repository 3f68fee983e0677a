"""What every HTTP surface of the project shares (the assistant, `rlhf serve`; the sink's dashboard
and `/sql`): one exception-to-response policy, and the request-body limit.

The policy (`install_error_policy`), whatever the route:
- a request that fails validation (pydantic, a body that is not JSON) -> 400, the message naming
  each field and why (`messages.0.role: ...`), never echoing the input;
- an `HTTPException` -> its status, message and headers;
- one of our errors the app maps to a status (`statuses`, by the most specific class) -> that status;
- anything else -> 500 saying only "internal error <id>"; the traceback is logged (logger
  `rlhf.http`) under the same id, so an operator finds it from what the client reports.
Each app renders the body in its own shape (`Render`): OpenAI's `{"error": {...}}` under the
assistant's /v1, `{"detail": ...}` on its other routes, `{"error": ...}` on the sink's. JSON is
written ASCII-only, so no text in a message (a lone surrogate from a `\\ud800` escape) can fail to encode.

    install_error_policy(app, render, statuses={UnknownQueryError: 404, AnalyticsError: 400})
    app.add_middleware(BodyLimit, max_bytes=1 << 20, render=render)
    @app.get("/thing", responses=error_responses(ErrorModel, 400, 404))   # what the OpenAPI schema documents

The OpenAPI schema says the same: FastAPI's 422 is gone from it, and each route lists the error
statuses it answers (`error_responses`), so a client (and schemathesis) can check every response.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rlhf.http")
Render = Callable[[str, int, str], Any]  # (request path, status, message) -> the JSON body
# Where a request parameter sits; the field is named without it (`bucket_s`, `messages.0.role`).
_SOURCES = ("body", "query", "path", "header", "cookie")


class AsciiJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """`field: reason` per field, joined by '; '; the field as the client wrote it (body and query alike),
    without pydantic's union branches (`content.function-after[...]`): the first branch's reason speaks for it."""
    described: dict[str, str] = {}
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if not _is_branch(p)]
        if loc[:1] and loc[0] in _SOURCES and (len(loc) > 1 or loc[0] != "body"):
            loc = loc[1:]
        described.setdefault(".".join(loc), str(err.get("msg", "invalid")).removeprefix("Value error, "))
    return "; ".join(f"{field}: {reason}" if field else reason for field, reason in described.items()) or "invalid request"


def _is_branch(part: object) -> bool:
    """A union member's tag in a pydantic error location (`str`, `list[TextPart]`, `function-after[...]`)."""
    return isinstance(part, str) and (part.endswith("]") and "[" in part or part in _TYPE_TAGS)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


ERRORS = {
    400: "The request is malformed: the message names each field, or the limit, and why.",
    401: "Missing or invalid credentials.",
    403: "The credentials do not cover this resource.",
    404: "Not found.",
    409: "Refused in the resource's state (the message says which).",
    410: "Gone: no longer held or no longer open.",
    413: "The request body is larger than the server's limit.",
    429: "Too many requests from this caller in progress or queued; retry after Retry-After seconds.",
    503: "Unavailable for now (busy, starting, or Kafka lost the event); retry after Retry-After seconds if given.",
}


def error_responses(model: type, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` documenting `statuses`, each with the app's error body `model`."""
    return {status: {"model": model, "description": ERRORS[status]} for status in statuses}


def error_response(
    render: Render, path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return AsciiJSONResponse(render(path, status, message), status_code=status, headers=dict(headers or {}))


def internal_error(render: Render, request_line: str, path: str, exc: BaseException) -> JSONResponse:
    """The 500 of an unexpected exception: an id for the client, the traceback under that id in the log."""
    error_id = secrets.token_hex(8)
    log.error("internal error %s on %s", error_id, request_line, exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(render, path, 500, f"internal error {error_id}: the server logged it under this id")


def install_error_policy(app: FastAPI, render: Render, statuses: Mapping[type[Exception], int] | None = None) -> None:
    """Install the policy on `app` (see the module docstring); call it before adding other middleware,
    so that the catch-all sits inside them and their own responses (413, 429, CORS) keep their shape."""
    statuses = dict(statuses or {})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(render, request.url.path, 400, describe(exc.errors()))

    @app.exception_handler(ValidationError)
    async def invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        # A model a handler builds from the request's values (a response model failing is a ResponseValidationError: a 500).
        return error_response(render, request.url.path, 400, describe(exc.errors(include_input=False)))

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(render, request.url.path, exc.status_code, str(exc.detail), exc.headers)

    for kind in statuses:

        @app.exception_handler(kind)
        async def ours(request: Request, exc: Exception) -> JSONResponse:
            status = next((statuses[k] for k in type(exc).__mro__ if k in statuses), None)
            if status is None or status >= 500:
                return internal_error(render, f"{request.method} {request.url.path}", request.url.path, exc)
            return error_response(render, request.url.path, status, str(exc))

    app.add_middleware(CatchAll, render=render)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without its 422s: invalid requests are 400s here, documented per route."""
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class CatchAll:
    """ASGI middleware: an exception no handler took becomes the policy's 500 (if nothing was sent yet)."""

    def __init__(self, app: ASGIApp, render: Render):
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # a streamed body broke off: the client sees it end early; the log says why
                log.exception("response to %s %s broke off", scope["method"], scope["path"])
                return
            response = internal_error(self.render, f"{scope['method']} {scope['path']}", scope["path"], exc)
            await response(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while the body is read: FastAPI passes an HTTPException from a body read on to the handlers."""


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with 413 before the app parses it,
    by its Content-Length, or while it is read when it comes without one."""

    def __init__(self, app: ASGIApp, max_bytes: int, render: Render):
        self.app = app
        self.max_bytes = max_bytes
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_bytes:
                raise _TooLarge(413, self.message)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:  # read by something that let it through
            await self._refuse(scope, receive, send)

    @property
    def message(self) -> str:
        return f"request body: larger than this server's limit of {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(self.render, scope["path"], 413, self.message)(scope, receive, send)
