"""The OpenAI-compatible face of the assistant: `POST /v1/chat/completions` and `GET /v1/models`,
so chat apps and the official SDKs talk to it as they would to OpenAI.

    client = openai.OpenAI(base_url="http://127.0.0.1:8300/v1", api_key="<key or anything when open>")
    reply = client.chat.completions.create(model="assistant", messages=[...], user="u-42")
    reply.id                   # the interaction id, for feedback
    reply.model                # the version that answered (the A/B arm's, while an experiment is routed)
    reply.feedback_token       # (extra field; also the X-Feedback-Token header) for POST /v1/feedback

What the policy answers: the tiny policy is single-turn (trained on `Query: ... Response:`), so it
is asked the conversation's last user turn alone, and that turn is the interaction's query. Earlier
turns and system prompts are accepted but not shown to it: prefixing them would ask it something
it was never trained on, and the trainers would learn from prompts the service never answers.
`model` in a request is accepted and ignored: the A/B assignment of `user` picks the version.
A request without `user` counts as a new anonymous user (one request each), never a shared one,
which would put every anonymous request in the same arm.

`stream: true` answers in server-sent events in OpenAI's chunk format ending with `data: [DONE]`;
the answer is generated first (micro-batched with concurrent requests), then sent in word-sized chunks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.answering import Assistant, ChatReply, ChatRequest, Sampling
from core.access import ApiKeys
from schemas.events import MAX_QUERY_CHARS, Id, describe_errors, new_id

FEEDBACK_TOKEN_HEADER = "X-Feedback-Token"
OWNER = "rlhf-stream"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class CompletionRequest(BaseModel):
    # Fields OpenAI defines that change nothing here (seed, stream_options, ...) are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="One answer per request: each answer is its own interaction.")
    stream: bool = False
    user: Id | None = None


def prompt_of(messages: list[Message]) -> str:
    """The text the single-turn policy answers: the last turn, which must be the user's."""
    last = messages[-1]
    if last.role != "user":
        raise HTTPException(
            400, f"messages.{len(messages) - 1}.role: the last message must be the user's turn to answer, not {last.role!r}"
        )
    text = last.text.strip()
    if not text:
        raise HTTPException(400, f"messages.{len(messages) - 1}.content: the question is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise HTTPException(400, f"messages.{len(messages) - 1}.content: {len(text)} characters, at most {MAX_QUERY_CHARS}")
    return text


def sampling_of(request: CompletionRequest, assistant: Assistant) -> Sampling:
    default = Sampling.configured(assistant.settings)
    limit = assistant.settings.assistant.max_tokens
    max_tokens = request.max_completion_tokens or request.max_tokens or default.max_new_tokens
    if max_tokens > limit:
        raise HTTPException(400, f"max_tokens: {max_tokens} is more than this server's limit of {limit}")
    temperature = default.temperature if request.temperature is None else request.temperature
    return Sampling(max_tokens, temperature, default.top_p if request.top_p is None else request.top_p)


def completion(reply: ChatReply, created: int) -> dict:
    return {
        "id": reply.interaction_id,
        "object": "chat.completion",
        "created": created,
        "model": reply.model_version,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.response}, "finish_reason": "stop"}],
        "feedback_token": reply.feedback_token,
        "experiment": reply.experiment,
        "variant": reply.variant,
    }


def chunks(reply: ChatReply, created: int) -> Iterator[str]:
    """The reply as OpenAI's `chat.completion.chunk` events: the role, the words, the finish, [DONE]."""
    head = {"id": reply.interaction_id, "object": "chat.completion.chunk", "created": created, "model": reply.model_version}
    extra = {"feedback_token": reply.feedback_token, "experiment": reply.experiment, "variant": reply.variant}
    deltas = [{"role": "assistant", "content": ""}, *({"content": w} for w in re.findall(r"\s*\S+", reply.response))]
    for n, delta in enumerate(deltas):
        yield f"data: {json.dumps({**head, **(extra if n == 0 else {}), 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
    yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
    yield "data: [DONE]\n\n"


def router(assistant: Assistant, keys: ApiKeys) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(keys.require)])

    @api.post("/chat/completions", response_model=None)
    def chat_completions(request: CompletionRequest) -> JSONResponse | StreamingResponse:
        query, sampling = prompt_of(request.messages), sampling_of(request, assistant)
        user = request.user or f"anon-{new_id()}"
        reply = assistant.chat([ChatRequest(user_id=user, query=query)], sampling)[0]
        created, headers = int(time.time()), {FEEDBACK_TOKEN_HEADER: reply.feedback_token}
        if request.stream:
            return StreamingResponse(chunks(reply, created), media_type="text/event-stream", headers=headers)
        return JSONResponse(completion(reply, created), headers=headers)

    @api.get("/models")
    def models() -> dict:
        served = assistant.pool.served
        versions = sorted(served.versions, key=lambda v: v != (served.serving.version if served.serving else None))
        return {"object": "list", "data": [{"id": v, "object": "model", "created": 0, "owned_by": OWNER} for v in versions]}

    return api


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def install_error_shape(app: FastAPI) -> None:
    """Errors under /v1 in OpenAI's shape (`{"error": {"message", ...}}`, which its SDKs raise with
    the message); a malformed body is a 400 naming each field and the reason. Other routes keep FastAPI's."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        if not request.url.path.startswith("/v1/"):
            return await request_validation_exception_handler(request, exc)
        message = describe_errors(ValidationError.from_exception_data("request", [_strip_body(e) for e in exc.errors()]))
        return JSONResponse(openai_error(400, message), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException):
        if not request.url.path.startswith("/v1/"):
            return await http_exception_handler(request, exc)
        return JSONResponse(openai_error(exc.status_code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def _strip_body(error: dict) -> dict:
    """A validation error located in the body, re-rooted at the body's fields (`messages.0.role`)."""
    loc = tuple(error.get("loc", ()))
    return {
        "type": "value_error",
        "loc": loc[1:] if loc[:1] == ("body",) else loc,
        "input": error.get("input"),
        "ctx": {"error": error.get("msg", "")},
    }
