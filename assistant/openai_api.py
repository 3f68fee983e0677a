"""The OpenAI-compatible face of the assistant: `POST /v1/chat/completions` and `GET /v1/models`,
so chat apps and the official SDKs talk to it as they would to OpenAI.

    client = openai.OpenAI(base_url="http://127.0.0.1:8300/v1", api_key="<key or anything when open>")
    reply = client.chat.completions.create(model="assistant", messages=[...], user="u-42")
    reply.id                   # the interaction id, for feedback
    reply.model                # the version that answered (the A/B arm's, while an experiment is routed)
    reply.feedback_collected   # (extra field) whether feedback on this answer is collected (`feedback.collection_rate`)
    reply.feedback_token       # (extra field; also the X-Feedback-Token header) for POST /v1/feedback, when collected

What the policy answers: the tiny policy is single-turn (trained on `Query: ... Response:`), so it
is asked the conversation's last user turn alone, and that turn is the interaction's query. Earlier
turns and system prompts are accepted but not shown to it: prefixing them would ask it something
it was never trained on, and the trainers would learn from prompts the service never answers.
`model` in a request is accepted and ignored: the A/B assignment of `user` picks the version.
A request without `user` counts as a new anonymous user (one request each), never a shared one,
which would put every anonymous request in the same arm.

`stream: true` answers in server-sent events in OpenAI's chunk format ending with `data: [DONE]`;
the answer is generated first (micro-batched with concurrent requests), then sent in word-sized chunks.

Limits (assistant/limits.py): at most `assistant.max_turns` messages of at most
`assistant.max_turn_chars` characters each (400 naming the limit), checked before anything is generated.
Errors under /v1 are in OpenAI's shape (`{"error": {"message", ...}}`, which its SDKs raise with the
message), through the project's one error policy (core/web.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from assistant.answering import Assistant, ChatReply, ChatRequest, Sampling
from assistant.limits import caller
from core.access import ApiKeys
from core.settings import AssistantSettings
from core.web import error_responses
from schemas.events import MAX_QUERY_CHARS, Id, new_id

FEEDBACK_TOKEN_HEADER = "X-Feedback-Token"
OWNER = "rlhf-stream"


def _unicode(text: str) -> str:
    """Refuse text that is not Unicode: a lone surrogate (a `\\ud800` escape in the JSON) could be neither
    logged nor answered."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode at character {exc.start} (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class CompletionRequest(BaseModel):
    # Fields OpenAI defines that change nothing here (seed, stream_options, ...) are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Text | None = None
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


def check_limits(messages: list[Message], limits: AssistantSettings) -> None:
    """400 naming the limit when the conversation has more turns, or a turn more characters, than allowed."""
    if len(messages) > limits.max_turns:
        raise HTTPException(400, f"messages: {len(messages)} messages, at most {limits.max_turns} (`assistant.max_turns`)")
    for n, message in enumerate(messages):
        if (chars := len(message.text)) > limits.max_turn_chars:
            raise HTTPException(
                400, f"messages.{n}.content: {chars} characters, at most {limits.max_turn_chars} (`assistant.max_turn_chars`)"
            )


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
        "feedback_collected": reply.feedback_collected,
        "feedback_token": reply.feedback_token,
        "experiment": reply.experiment,
        "variant": reply.variant,
    }


def chunks(reply: ChatReply, created: int) -> Iterator[str]:
    """The reply as OpenAI's `chat.completion.chunk` events: the role, the words, the finish, [DONE]."""
    head = {"id": reply.interaction_id, "object": "chat.completion.chunk", "created": created, "model": reply.model_version}
    extra = {
        "feedback_collected": reply.feedback_collected,
        "feedback_token": reply.feedback_token,
        "experiment": reply.experiment,
        "variant": reply.variant,
    }
    deltas = [{"role": "assistant", "content": ""}, *({"content": w} for w in re.findall(r"\s*\S+", reply.response))]
    for n, delta in enumerate(deltas):
        chunk = {**head, **(extra if n == 0 else {}), "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
    yield "data: [DONE]\n\n"


def router(assistant: Assistant, keys: ApiKeys) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(keys.require)])

    @api.post("/chat/completions", response_model=None, responses=COMPLETION_RESPONSES)
    def chat_completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_limits(body.messages, assistant.settings.assistant)
        query, sampling = prompt_of(body.messages), sampling_of(body, assistant)
        user = body.user or f"anon-{new_id()}"
        reply = assistant.chat([ChatRequest(user_id=user, query=query)], sampling, caller(request))[0]
        created = int(time.time())
        headers = {FEEDBACK_TOKEN_HEADER: reply.feedback_token} if reply.feedback_token else {}
        if body.stream:
            return StreamingResponse(chunks(reply, created), media_type="text/event-stream", headers=headers)
        return JSONResponse(completion(reply, created), headers=headers)

    @api.get("/models", responses=error_responses(OpenAIError, 401))
    def models() -> dict:
        served = assistant.pool.served
        versions = sorted(served.versions, key=lambda v: v != (served.serving.version if served.serving else None))
        return {"object": "list", "data": [{"id": v, "object": "model", "created": 0, "owned_by": OWNER} for v in versions]}

    return api


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def render_error(path: str, status: int, message: str) -> dict:
    """The assistant's error bodies (core/web.py): OpenAI's shape under /v1, FastAPI's `{"detail": ...}` elsewhere."""
    return openai_error(status, message) if path.startswith("/v1/") else {"detail": message}


class ErrorBody(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None
    code: int


class OpenAIError(BaseModel):
    """An error under /v1, in OpenAI's shape."""

    error: ErrorBody


class Detail(BaseModel):
    """An error on the assistant's other routes, in FastAPI's shape."""

    detail: str


class AnswerMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: Literal["stop"]


class Completion(BaseModel):
    """What `POST /v1/chat/completions` answers (without `stream`): OpenAI's `chat.completion` and our extra fields."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    feedback_collected: bool
    feedback_token: str | None
    experiment: str | None
    variant: str | None


def feedback_link(interaction: str) -> dict[str, Any]:
    """An OpenAPI link from an answer to `POST /v1/feedback` with its interaction id and token (schemathesis follows it)."""
    body = {"interaction_id": f"$response.body#/{interaction}", "token": "$response.body#/feedback_token", "type": "thumbs_up"}
    return {"feedback": {"operationId": FEEDBACK_OPERATION, "requestBody": body}}


FEEDBACK_OPERATION = "post_feedback"
COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Completion,
        # Each server-sent event: `data` is a chunk's JSON, the last one `[DONE]`.
        "content": {"text/event-stream": {"schema": {"type": "object", "properties": {"data": {"type": "string"}}}}},
        "description": "The answer; with `stream: true`, OpenAI's chunks as server-sent events.",
        "links": feedback_link("id"),
    },
    **error_responses(OpenAIError, 400, 401, 413, 429, 503),
}
