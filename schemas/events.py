"""The event contract: one frozen pydantic model per topic value, each with `schema_version`.

Producers validate before sending and consumers validate on receipt (`parse_event`); a failure
raises `EventValidationError` whose message names every bad field and the reason.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from core.errors import EventValidationError

MAX_QUERY_CHARS = 4_000
MAX_RESPONSE_CHARS = 16_000
MAX_ID_CHARS = 128
MAX_METADATA_KEYS = 32
MAX_CONTEXT_TURNS = 64
MAX_CONTEXT_CHARS = 64_000

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9._:@/+=-]+$")]
Query = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS)]
Response = Annotated[str, StringConstraints(max_length=MAX_RESPONSE_CHARS)]
MetadataValue = str | int | float | bool | None
FeedbackType = Literal["thumbs_up", "thumbs_down", "rating", "correction"]
TrainingState = Literal["started", "progress", "finished", "failed", "guardrail"]
# A guardrail event reports a rolled-back update: the training goes on. Only finished / failed end it.
ACTIVE_TRAINING_STATES = frozenset({"started", "progress", "guardrail"})
PublishDecision = Literal["candidate", "rejected", "promoted", "rolled_back"]


# Ids are dedupe keys, not secrets: a Mersenne Twister seeded from the OS (and reseeded in every
# forked child) is unique enough and ~15x cheaper than a getrandom() syscall per event.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_id() -> str:
    """128 random bits as 32 hex digits, like uuid4().hex (hot path: one per event)."""
    return f"{_ids.getrandbits(128):032x}"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event: frozen, no unknown fields, timestamps in UTC."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    schema_version: Literal[1] = 1
    timestamp: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _timestamp_is_aware(self) -> Event:
        if self.timestamp.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (UTC recommended)")
        return self

    def to_bytes(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)


Role = Literal["system", "user", "assistant"]


class Turn(BaseModel):
    """One earlier message of a conversation: who said it and what."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: Annotated[str, StringConstraints(max_length=MAX_RESPONSE_CHARS)]

    @field_validator("content")
    @classmethod
    def _has_text(cls, content: str) -> str:
        if not content.strip():
            raise ValueError("empty (a turn must say something)")
        return content


class ConversationEvent(Event):
    """An event about one answered turn of a conversation (schema version 2): the turns before it
    (`context`, the app's system prompt first when it sent one), the conversation and the turn's place
    in it. A version 1 event (no conversation fields) is read as a one-turn conversation: no context,
    its own interaction as the conversation, turn 0."""

    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]  # versions 1 and 2 both read here
    context: tuple[Turn, ...] = Field(
        (), max_length=MAX_CONTEXT_TURNS, description="The conversation before the answered question, oldest first."
    )
    conversation_id: Id | None = Field(None, description="The conversation the turn belongs to (v1: the interaction).")
    turn_index: int = Field(0, ge=0, le=10_000, description="How many user questions came before this one in the conversation.")

    @model_validator(mode="after")
    def _conversation_fits(self) -> ConversationEvent:
        if self.schema_version == 1 and (self.context or self.conversation_id is not None or self.turn_index):
            raise ValueError("schema_version: 1 carries no conversation (context, conversation_id, turn_index); send 2")
        for n, turn in enumerate(self.context):
            if turn.role == "system" and n:
                raise ValueError(f"context.{n}.role: a system turn may only come first")
        if (chars := sum(len(t.content) for t in self.context)) > MAX_CONTEXT_CHARS:
            raise ValueError(f"context: {chars} characters in all, at most {MAX_CONTEXT_CHARS}")
        return self

    @property
    def system(self) -> str | None:
        """The app's system prompt, when it sent one."""
        return self.context[0].content if self.context and self.context[0].role == "system" else None

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        """The earlier user and assistant turns as (role, text), oldest first (the system prompt apart)."""
        return tuple((t.role, t.content) for t in self.context if t.role != "system")


class InteractionEvent(ConversationEvent):
    """One question answered by the assistant."""

    interaction_id: Id = Field(default_factory=new_id)
    user_id: Id = Field(description="Pseudonymous user id; never a name or e-mail.")
    query: Query
    response: Response
    model_version: Id
    experiment: Id | None = None
    variant: Id | None = None
    latency_ms: float = Field(ge=0, le=3_600_000)


DEFAULT_POLICY = "assistant"  # the model family a deployment trains unless events name another


class FeedbackEvent(ConversationEvent):
    """A user's judgement of one interaction (with the interaction's conversation)."""

    event_id: Id = Field(default_factory=new_id)
    interaction_id: Id
    user_id: Id
    query: Query
    response: Response
    model_version: Id
    policy: Id = Field(DEFAULT_POLICY, description="Model family the feedback trains.")
    experiment: Id | None = None
    variant: Id | None = None
    feedback_type: FeedbackType
    rating: int | None = Field(None, ge=1, le=5)
    correction: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RESPONSE_CHARS)] | None = None
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], MetadataValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _type_fits_payload(self) -> FeedbackEvent:
        if self.feedback_type == "rating" and self.rating is None:
            raise ValueError("rating: required when feedback_type is 'rating'")
        if self.feedback_type != "rating" and self.rating is not None:
            raise ValueError(f"rating: only allowed when feedback_type is 'rating', not {self.feedback_type!r}")
        if self.feedback_type == "correction" and not self.correction:
            raise ValueError("correction: required when feedback_type is 'correction'")
        if self.feedback_type != "correction" and self.correction is not None:
            raise ValueError(f"correction: only allowed when feedback_type is 'correction', not {self.feedback_type!r}")
        if len(self.metadata) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata: at most {MAX_METADATA_KEYS} keys, got {len(self.metadata)}")
        return self

    def is_positive(self, min_rating: int) -> bool:
        """The one rule for "positive feedback": a thumbs up, or a rating of at least `min_rating`.
        A thumbs down, a lower rating and a correction (the user had to fix the answer) are not."""
        return self.feedback_type == "thumbs_up" or (self.rating is not None and self.rating >= min_rating)

    @property
    def reward(self) -> float:
        """The feedback as a reward in [0, 1]: thumbs up 1, thumbs down 0, rating 1..5 -> 0..1, a correction 0."""
        if self.feedback_type == "thumbs_up":
            return 1.0
        if self.rating is not None:
            return (self.rating - 1) / 4
        return 0.0

    @property
    def verdict_key(self) -> tuple[str, str]:
        """What a later event on the same answer replaces: a user's verdict (thumbs or rating; a
        change of mind replaces it) and, separately, their correction (a demonstration, not a verdict)."""
        return self.interaction_id, "correction" if self.feedback_type == "correction" else "verdict"


def latest_verdicts(events: Iterable[FeedbackEvent]) -> list[FeedbackEvent]:
    """One event per `verdict_key`, the latest (by timestamp; of equal timestamps the later one
    given), in the order the kept events were given. A user who changes their mind (thumbs up,
    then down) counts once, with the latest verdict; analytics.queries does the same in SQL."""
    latest: dict[tuple[str, str], tuple[int, FeedbackEvent]] = {}
    for n, event in enumerate(events):
        held = latest.get(event.verdict_key)
        if held is None or event.timestamp >= held[1].timestamp:
            latest[event.verdict_key] = (n, event)
    return [event for _, event in sorted(latest.values(), key=lambda kept: kept[0])]


class ErasureRequest(Event):
    """A user's data is to be forgotten (`rlhf privacy forget`): kept on a compacted topic, keyed by
    the user, so every reader at any time sees each erased user once, for as long as the topic lives."""

    user_id: Id
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class ExposureEvent(Event):
    """A user was shown a variant of an experiment (logged at assignment, before any feedback)."""

    exposure_id: Id = Field(default_factory=new_id)
    user_id: Id
    experiment: Id
    variant: Id
    model_version: Id
    interaction_id: Id | None = None


class OffsetRange(BaseModel):
    """Half-open range [start, end) of offsets on one partition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str = Field(min_length=1, max_length=249)
    partition: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> OffsetRange:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not be before start ({self.start})")
        return self


class TrainTrigger(Event):
    """Enough accepted feedback arrived for a policy: train on exactly these records."""

    trigger_id: Id = Field(default_factory=new_id)
    policy: Id
    model_version: Id
    counts: dict[FeedbackType, int] = Field(default_factory=dict)
    ranges: tuple[OffsetRange, ...] = Field(description="Replayable offset ranges of the feedback the trigger covers.")
    event_ids: tuple[Id, ...] = Field(default=(), description="Accepted event ids in the ranges (duplicates excluded).")


# The stage of the `finished` status of a training whose version passed the gate: the round stays
# open (no next trigger) until its experiment is decided (schemas/experiments.py), whichever of the
# two the stream worker reads first.
CANDIDATE_STAGE = "candidate"


class TrainingStatus(Event):
    """Progress of a training job; the stream app blocks re-triggering while one is active."""

    trigger_id: Id
    policy: Id
    state: TrainingState
    stage: str = Field("", max_length=64)
    message: str = Field("", max_length=4_000)
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def active(self) -> bool:
        """The training is still running, so it holds back the policy's next trigger."""
        return self.state in ACTIVE_TRAINING_STATES


class ModelPublished(Event):
    """A new model version entered the registry."""

    version: Id
    policy: Id
    trigger_id: Id
    parent_version: Id | None = None
    reward_model_version: Id | None = None
    decision: PublishDecision
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str = Field("", max_length=4_000)


class DeadLetter(BaseModel):
    """A record that could not be processed, kept with where it came from and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    reason: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    key: str | None = None
    value: str = Field(description="The original bytes, decoded as UTF-8 with replacement.")
    timestamp: datetime = Field(default_factory=utc_now)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class WindowMetrics(Event):
    """Tumbling-window feedback counts emitted by the stream app."""

    window_start: datetime
    window_end: datetime
    model_version: Id
    experiment: str = ""
    variant: str = ""
    feedback_type: FeedbackType
    count: int = Field(ge=0)
    rating_sum: int = Field(0, ge=0)
    rating_count: int = Field(0, ge=0)
    pii: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="PII found in these events' text, per type (core/redaction.py)."
    )


E = TypeVar("E", bound=BaseModel)


def describe_errors(exc: ValidationError) -> str:
    """`field: reason` for each problem, joined by '; ' (what users and the DLQ see)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate_event(model: type[E], data: Any) -> E:
    """Validate a mapping (or an instance) into `model`, raising EventValidationError naming fields."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EventValidationError(f"invalid {model.__name__}: {describe_errors(exc)}") from None


def parse_event(model: type[E], raw: bytes | str | None) -> E:
    """Parse wire bytes (JSON) into `model`; every failure is an EventValidationError."""
    if raw is None:
        raise EventValidationError(f"invalid {model.__name__}: empty record (no value)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise EventValidationError(f"invalid {model.__name__}: {describe_errors(exc)}") from None
