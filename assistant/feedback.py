"""`POST /v1/feedback`: a user's verdict on one answer, over HTTP, into the `feedback` topic.

The request names the interaction and the verdict; the server fills in what it served (the question
in its conversation, as the interaction event carries it: `context`, `conversation_id`, `turn_index`;
the response, model version, experiment, variant, user: assistant/recent.py), so a client cannot
forge them, and produces the `FeedbackEvent` through the SDK, flushed: a 2xx means Kafka has it, or,
while Kafka is away, the SDK's local spool has it, fsynced, to be re-sent (sdk/pump.py). A 503 means
the event was lost (refused by the broker, or dropped at the spool's cap): send it again.

Nothing is dropped silently. Whether an answer's feedback is collected (`feedback.collection_rate`)
was decided when it was served, and the answer said so (`feedback_collected`, a token only then):
every verdict presented with a valid token is recorded; one on an answer outside the sample (from a
key holder, or on an open API, without a token) is refused with 409, never accepted and dropped.

Who may post: an API key holder, or whoever holds the interaction's feedback token (Bearer or a
`token` field: a browser needs no key); with no key configured, anyone. A token is checked even
then: expired or forged is a 401, issued for another interaction or user a 403.

One event id per verdict: the interaction id, the slot (a verdict, or a correction:
`FeedbackEvent.verdict_key`) and the verdict's number among this user's verdicts on the answer
(`RecentInteractions.verdict_number`). A double click repeats the last verdict: the same id, and
every consumer dedupes by event id, so it counts once. A change of mind (thumbs up, then down) is a
new event; the trainers (`schemas.events.latest_verdicts`) and the A/B analysis and positive rate in
ClickHouse (`analytics.queries._verdicts`) count each answer's latest verdict only. The feedback
table keeps both events, and volumes and `variant_daily` count both.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from assistant.answering import Assistant
from assistant.openai_api import OpenAIError
from assistant.peers import PEER_WAIT_S, VERDICT_NUMBER
from assistant.recent import ExpiredInteraction, RecentInteractions, ServedInteraction, UnknownInteraction
from assistant.tokens import MAX_TOKEN_CHARS, Claims, TokenError
from core.access import WWW_AUTHENTICATE, ApiKeys, bearer
from core.errors import DeliveryError, EventValidationError
from core.web import error_responses
from schemas.events import MAX_RESPONSE_CHARS, FeedbackEvent, FeedbackType, Id, validate_event

MAX_COMMENT_CHARS = 2_000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interaction_id: Id
    type: FeedbackType
    rating: int | None = Field(None, ge=1, le=5)
    correction: str | None = Field(None, min_length=1, max_length=MAX_RESPONSE_CHARS)
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)
    token: str | None = Field(
        None,
        max_length=MAX_TOKEN_CHARS,
        description="The interaction's feedback token, when not sent as `Authorization: Bearer`.",
    )
    user: Id | None = Field(None, description="If given, must be the user the interaction was served to.")


class FeedbackReceipt(BaseModel):
    event_id: str
    interaction_id: str
    recorded: bool = Field(
        description="Always true: a verdict is recorded, or refused with an error (409: its answer's feedback is not collected)."
    )


def feedback_event_id(verdict_key: tuple[str, str], number: int) -> str:
    """One id per distinct verdict on an answer, the same in every process (see the module docstring)."""
    interaction_id, slot = verdict_key
    return "fb-" + hashlib.sha256(f"feedback:{interaction_id}:{slot}:{number}".encode()).hexdigest()[:32]


def authorise(body: FeedbackRequest, credential: str | None, keys: ApiKeys, assistant: Assistant) -> Claims | None:
    """The token's claims (None for a key holder or an open API); 401/403 saying why not."""
    if credential is not None and keys.matches(credential):
        return None
    if credential is None:
        if keys.open:
            return None
        missing = "missing credentials: send the interaction's feedback token (Authorization: Bearer or `token`) or an API key"
        raise HTTPException(401, missing, headers=WWW_AUTHENTICATE)
    try:
        claims = assistant.tokens.verify(credential)
    except TokenError as exc:
        raise HTTPException(401, f"{exc}" if keys.open else f"not an API key, and {exc}", headers=WWW_AUTHENTICATE) from None
    if claims.interaction_id != body.interaction_id:
        raise HTTPException(403, f"feedback token was issued for interaction {claims.interaction_id}, not {body.interaction_id}")
    return claims


def served_interaction(body: FeedbackRequest, claims: Claims | None, vouched: bool, assistant: Assistant) -> ServedInteraction:
    """What was served for the feedback's interaction. With replicas, one `vouched` for (a token that
    proves the answer was given, or an API key's holder) may have been served by another replica and
    not be read here yet: it is waited for. An unvouched id on an open API is not, so that made-up
    ids cannot hold request threads for PEER_WAIT_S each."""
    if assistant.settings.assistant.replicas > 1 and vouched:
        assistant.recent.wait_for(body.interaction_id, PEER_WAIT_S)
    try:
        served = assistant.recent.get(body.interaction_id)
    except UnknownInteraction as exc:
        # A valid token proves the answer was given: it is gone (restart, or forgotten for room), not unknown.
        raise HTTPException(404 if claims is None else 410, str(exc)) from None
    except ExpiredInteraction as exc:
        raise HTTPException(410, str(exc)) from None
    for who in (claims.user_id if claims else None, body.user):
        if who is not None and who != served.user_id:
            raise HTTPException(403, f"interaction {body.interaction_id} was served to another user than {who!r}")
    return served


def event_of(body: FeedbackRequest, served: ServedInteraction, recent: RecentInteractions) -> FeedbackEvent:
    fields = {
        "interaction_id": served.interaction_id,
        "user_id": served.user_id,
        "query": served.query,
        **served.conversation_fields(),
        "response": served.response,
        "model_version": served.model_version,
        "experiment": served.experiment,
        "variant": served.variant,
        "feedback_type": body.type,
        "rating": body.rating,
        "correction": body.correction,
        "metadata": {"source": "http", **({"comment": body.comment} if body.comment else {})},
    }
    event = validate_event(FeedbackEvent, fields)  # the event's own rules (a rating only with type rating, ...) name the field
    number = recent.verdict_number(event.verdict_key, (body.type, body.rating, body.correction))
    return event.model_copy(
        update={"event_id": feedback_event_id(event.verdict_key, number), "metadata": {**event.metadata, VERDICT_NUMBER: number}}
    )


def router(assistant: Assistant, keys: ApiKeys) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.post(
        "/feedback",
        response_model=FeedbackReceipt,
        operation_id="post_feedback",
        responses=error_responses(OpenAIError, 400, 401, 403, 404, 409, 410, 413, 429, 503),
    )
    def feedback(body: FeedbackRequest, request: Request) -> FeedbackReceipt:
        claims = authorise(body, body.token or bearer(request), keys, assistant)
        served = served_interaction(body, claims, claims is not None or not keys.open, assistant)
        # A token is issued only for an answer whose feedback is collected: what it was promised is kept.
        if claims is None and not assistant.client.sampled(served.interaction_id):
            raise HTTPException(
                409,
                f"interaction_id: feedback on {served.interaction_id} is not collected: its answer was outside the "
                f"feedback sample (`feedback.collection_rate` {assistant.client.collection_rate}) and said so "
                "(`feedback_collected: false`)",
            )
        try:
            event = event_of(body, served, assistant.recent)
        except EventValidationError as exc:
            raise HTTPException(400, str(exc).removeprefix("invalid FeedbackEvent: ")) from None
        try:
            assistant.client.send("feedback", event, key=event.user_id)  # validated above; decided at serving, not sampled again
            assistant.client.flush()  # acknowledged by the broker, or spooled and fsynced
        except DeliveryError as exc:
            raise HTTPException(503, f"feedback not delivered, send it again: {exc}") from None
        return FeedbackReceipt(event_id=event.event_id, interaction_id=event.interaction_id, recorded=True)

    return api
