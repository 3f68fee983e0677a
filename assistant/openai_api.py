"""The OpenAI-compatible face of the assistant: `POST /v1/chat/completions` and `GET /v1/models`,
so chat apps and the official SDKs talk to it as they would to OpenAI.

    client = openai.OpenAI(base_url="http://127.0.0.1:8300/v1", api_key="<key or anything when open>")
    reply = client.chat.completions.create(model="assistant", messages=[...], user="u-42")
    reply.id                   # the interaction id, for feedback
    reply.model                # the version that answered (the A/B arm's, while an experiment is routed)
    reply.feedback_collected   # (extra field) whether feedback on this answer is collected (`feedback.collection_rate`)
    reply.feedback_token       # (extra field; also the X-Feedback-Token header) for POST /v1/feedback, when collected

What the policy answers: the whole conversation. `developer` messages are system messages; the
leading system messages are the app's system prompt (joined), the later user and assistant messages
the earlier turns, and the last message must be the user's question (400 naming `messages.N.role`
otherwise): schemas/messages.py reads the list, trainers/chat_format.py formats it for the policy
(its chat template with the app's system prompt, the project's own only when the app sends none;
the tiny policy, which has no template, the plain multi-turn format). The interaction event carries
the same conversation (schema version 2): the system prompt and earlier turns as `context`, the
question as `query`, `turn_index` (user messages before it) and `conversation_id`: the request's
`conversation_id` (an extra body field: `extra_body={"conversation_id": ...}` in OpenAI's SDKs),
else one derived from the user, system prompt and first question, the same for every turn of the
conversation (a request without `user` is its own conversation). The answer says which
(`conversation_id`). `model` in a request is accepted and ignored: the A/B assignment of `user` picks
the version. A request without `user` counts as a new anonymous user (one request each), never a
shared one, which would put every anonymous request in the same arm.

`usage` (prompt, completion and total tokens: assistant/generation.py) is in every answer; `stop`
(a string or up to 4) ends the answer before the first stop sequence (finish_reason "stop", as at
the policy's end of turn; "length" when `max_tokens` ran out); `min_tokens` (an extra field, as in
vLLM's OpenAI-compatible server) holds the end of turn back until the answer has that many tokens. `stream: true` answers in
server-sent events in OpenAI's chunk format, each piece of text as it is generated while the
question shares a micro-batch with others, `usage` in a last chunk with `stream_options.include_usage`,
ending with `data: [DONE]` (assistant/streaming.py, which also says what a client that goes away
mid-stream leaves behind: its row stops, nothing is logged).

Limits (assistant/limits.py): at most `assistant.max_turns` messages of at most
`assistant.max_turn_chars` characters each (400 naming the limit), and the event's own limits on the
conversation (`context`: turns, characters), checked before anything is generated.
Errors under /v1 are in OpenAI's shape (`{"error": {"message", ...}}`, which its SDKs raise with the
message), through the project's one error policy (core/web.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from assistant.answering import Assistant, ChatRequest, Routed, Sampling
from assistant.generation import Answer
from assistant.limits import caller
from assistant.relay import EngineVersion
from assistant.streaming import QueueSink, Stream, Watch, answered, extra_fields, usage
from core.access import ApiKeys
from core.errors import EventValidationError
from core.settings import AssistantSettings
from core.web import error_responses
from schemas.events import Id, new_id
from schemas.messages import QuestionInContext

FEEDBACK_TOKEN_HEADER = "X-Feedback-Token"
OWNER = "rlhf-stream"
MAX_STOP_SEQUENCES = 4  # as OpenAI


def _unicode(text: str) -> str:
    """Refuse text that is not Unicode: a lone surrogate (a `\\ud800` escape in the JSON) could be neither
    logged nor answered."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode at character {exc.start} (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
StopSequence = Annotated[str, StringConstraints(min_length=1), AfterValidator(_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    include_usage: bool = False


class CompletionRequest(BaseModel):
    # Fields OpenAI defines that change nothing here (seed, logprobs, ...) are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Text | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="One answer per request: each answer is its own interaction.")
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description="Where the answer ends: it is cut before the first of these sequences."
    )
    min_tokens: int = Field(
        1, ge=1, description="(extra field, as vLLM's) The answer's least length: its end is not written before (tokens)."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Id | None = None
    conversation_id: Id | None = Field(
        None, description="(extra field) The conversation's id; none: derived from the user, system prompt and first question."
    )

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


def question_of(messages: list[Message]) -> QuestionInContext:
    """The user's question in its conversation (schemas/messages.py); 400 naming the message that does not fit."""
    try:
        return QuestionInContext.of([{"role": m.role, "content": m.text} for m in messages])
    except EventValidationError as exc:
        raise HTTPException(400, str(exc)) from None


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
    if request.min_tokens > max_tokens:
        raise HTTPException(400, f"min_tokens: {request.min_tokens} is more than max_tokens ({max_tokens})")
    temperature = default.temperature if request.temperature is None else request.temperature
    top_p = default.top_p if request.top_p is None else request.top_p
    return Sampling(max_tokens, temperature, top_p, request.min_tokens)


def completion(item: Routed, answer: Answer, created: int) -> dict:
    message = {"role": "assistant", "content": answer.text}
    return {
        "id": item.interaction_id,
        "object": "chat.completion",
        "created": created,
        "model": item.policy.version,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": usage(answer),
        **extra_fields(item),
    }


def router(assistant: Assistant, keys: ApiKeys) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(keys.require)])

    # Async: a streamed answer's pieces arrive on this event loop, and a client that goes away cancels its stream.
    @api.post("/chat/completions", response_model=None, responses=COMPLETION_RESPONSES)
    async def chat_completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_limits(body.messages, assistant.settings.assistant)
        asked, sampling = question_of(body.messages), sampling_of(body, assistant)
        user = body.user or f"anon-{new_id()}"
        question = ChatRequest(user_id=user, query=asked.query, context=asked.context, conversation_id=body.conversation_id)
        item = assistant.prepare([question])[0]
        headers = {FEEDBACK_TOKEN_HEADER: item.feedback_token} if item.feedback_token else {}
        created, started = int(time.time()), time.perf_counter()
        sink = QueueSink(asyncio.get_running_loop()) if body.stream else Watch()
        [(_, future)] = assistant.submit([item], sampling, caller(request), body.stop_sequences, sink)
        if isinstance(sink, QueueSink):
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            stream = Stream(assistant, item, future, sink, include_usage, started, created, STREAM_FAILED)
            if isinstance(item.policy, EngineVersion):
                await stream.opened()
            return StreamingResponse(stream.chunks(), media_type="text/event-stream", headers=headers)
        answer = await answered(future, sink, request.is_disconnected)
        if answer is None:  # nobody is reading: nothing logged, nothing to send
            return JSONResponse(openai_error(499, "the client closed the request"), status_code=499)
        assistant.served(item, answer.text, (time.perf_counter() - started) * 1000)
        await run_in_threadpool(assistant.client.flush)
        return JSONResponse(completion(item, answer, created), headers=headers)

    @api.get("/models", responses=error_responses(OpenAIError, 401))
    def models() -> dict:
        served = assistant.pool.served
        versions = sorted(served.versions, key=lambda v: v != (served.serving.version if served.serving else None))
        return {"object": "list", "data": [{"id": v, "object": "model", "created": 0, "owned_by": OWNER} for v in versions]}

    return api


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


STREAM_FAILED = openai_error(500, "internal error: generating the answer failed (the server log says why)")


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
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """What `POST /v1/chat/completions` answers (without `stream`): OpenAI's `chat.completion` and our extra fields."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    feedback_collected: bool
    feedback_token: str | None
    experiment: str | None
    variant: str | None
    conversation_id: str


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
