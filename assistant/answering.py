"""Answering chat requests: the loaded policy versions (`PolicyPool`, hot-swapped from the
registry and the open experiment), and `Assistant`, which routes each user to a version
(assistant/routing.py), generates, logs the interaction and exposure through the producer SDK,
remembers what it served (assistant/recent.py) and signs a feedback token for it (assistant/tokens.py).
Generation goes through the micro-batcher (assistant/batcher.py): concurrent requests share calls
(assistant/generation.py: one generate call per batch, each row streamed as it is written).

What a policy answers is the question in its conversation (`ChatRequest.context`: the app's system
prompt and the earlier turns), formatted by trainers/chat_format.py; the interaction event carries
the same conversation (schema version 2: `context`, `conversation_id`, `turn_index`).

A request fails with no side effect or succeeds with all of them: every item is routed and its
events validated before anything is generated or sent, and events are sent only once every answer
of the request is in. Whether an answer's feedback is collected (`feedback.collection_rate`) is
decided before it is generated, so a streamed answer says so in its first chunk: only then does it
carry a feedback token, and says so (`feedback_collected`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from fastapi import HTTPException
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from assistant import generation
from assistant.batcher import Batcher
from assistant.generation import Answer, Ask, Sink
from assistant.recent import RecentInteractions, ServedInteraction
from assistant.relay import EngineVersion, Relay
from assistant.routing import Route, route
from assistant.tokens import FeedbackTokens
from core.errors import EventValidationError, ModelLoadError
from core.settings import AssistantSettings, Settings
from registry.store import Deployment, Kind
from schemas.events import DEFAULT_POLICY, Event, ExposureEvent, Id, InteractionEvent, Query, Turn, new_id, validate_event
from schemas.experiments import ExperimentBook
from schemas.messages import QuestionInContext
from trainers import policy as policies
from trainers.chat_format import Conversation, Prompt

log = logging.getLogger("rlhf.serve")
DEFAULTS = AssistantSettings()  # the sampling `answer` uses when its caller (the demo's report) names none


class PolicyRegistry(Protocol):
    """What the pool reads of the registry (`registry.store.ModelRegistry`): a policy's serving version,
    and where a version's files are."""

    def serving(self, policy: str) -> str | None: ...
    def path(self, kind: Kind, version: str) -> Path: ...
    def deployments(self, policy: str) -> dict[str, Deployment]: ...


class FeedbackSink(Protocol):
    """What the assistant and its feedback route use of the producer SDK (`sdk.client.FeedbackClient`)."""

    @property
    def collection_rate(self) -> float: ...
    def sampled(self, interaction_id: str) -> bool: ...
    def interaction(self, **fields: Any) -> object: ...
    def exposure(self, **fields: Any) -> object: ...
    def send(self, topic: str, event: Event, key: str | None) -> None: ...
    def flush(self) -> None: ...


@dataclass(frozen=True)
class LoadedPolicy:
    version: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


Servable = LoadedPolicy | EngineVersion  # a version generated in process, or relayed to the engine that serves it


def load_version(registry: PolicyRegistry, version: str) -> LoadedPolicy:
    """A registry version, loaded as training loads it; ModelLoadError naming its path if it cannot be."""
    model, tokenizer = policies.load_policy(str(registry.path("policies", version)))
    return LoadedPolicy(version, model.eval(), tokenizer)


def resolve(registry: PolicyRegistry, version: str, deployments: Mapping[str, Deployment], previous: Servable | None) -> Servable:
    """How `version` is answered now: by the engine its deployment names, else loaded in process
    (`previous`, what answered it before, is kept while that has not changed)."""
    deployment = deployments.get(version)
    if deployment is not None:
        return (
            previous
            if isinstance(previous, EngineVersion) and previous.deployment == deployment
            else EngineVersion(version, deployment)
        )
    return previous if previous is not None and not isinstance(previous, EngineVersion) else load_version(registry, version)


@dataclass(frozen=True)
class Sampling:
    """How one request's answers are generated; temperature 0 is greedy decoding. An answer has at
    least `min_new_tokens` tokens: the end of turn is not written before."""

    max_new_tokens: int
    temperature: float
    top_p: float
    min_new_tokens: int = 1

    @classmethod
    def configured(cls, settings: Settings) -> Sampling:
        """What a request that sets nothing gets."""
        return cls(settings.policy.training.max_new_tokens, settings.assistant.temperature, settings.assistant.top_p)


def answer(
    policy: LoadedPolicy,
    queries: Sequence[Prompt],
    max_new_tokens: int,
    seed: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> list[str]:
    """The answers the service gives (a given `seed` repeats them); by default with its default sampling settings."""
    if seed is not None:
        torch.manual_seed(seed)
    temperature = DEFAULTS.temperature if temperature is None else temperature
    sampling = Sampling(max_new_tokens, temperature, DEFAULTS.top_p if top_p is None else top_p)
    return [a.text for a in generation.generate(policy, [Ask(q) for q in queries], sampling)]


@dataclass(frozen=True)
class Served:
    """The loaded versions one request is routed over: the serving one and any other it may need."""

    serving: Servable | None = None
    versions: Mapping[str, Servable] = field(default_factory=dict)


class PolicyPool:
    """The serving version and the versions of the policy's open experiment, loaded from the
    registry and swapped in together."""

    def __init__(self, registry: PolicyRegistry, experiments: ExperimentBook, policy: str = DEFAULT_POLICY):
        self.registry = registry
        self.experiments = experiments
        self.policy = policy
        self.served = Served()
        self._unloadable: set[str] = set()  # arm versions whose load failed, so it is logged once
        self.refresh()

    def refresh(self) -> None:
        serving = self.registry.serving(self.policy)
        experiment = self.experiments.open(self.policy)
        previous = self.served.versions
        deployments = self.registry.deployments(self.policy)
        # A serving version that does not load raises: the watch logs it and the previous set stays.
        versions = {serving: resolve(self.registry, serving, deployments, previous.get(serving))} if serving else {}
        for arm in experiment.arms if experiment else ():
            version = arm.model_version
            if version in versions:
                continue
            try:
                versions[version] = resolve(self.registry, version, deployments, previous.get(version))
            except ModelLoadError:
                # Routing leaves the experiment out until every arm loads; serving goes on.
                if version not in self._unloadable:
                    log.exception("cannot load %s, an arm of the open experiment; serving outside it", version)
                self._unloadable.add(version)
        # Swap only once every version is loaded: requests see old or new, never half.
        self.served = Served(versions[serving] if serving else None, versions)

    def watch(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.wait(interval):
            try:
                self.refresh()
            except Exception:
                log.exception("registry refresh failed; still serving the previous versions")


class ChatRequest(BaseModel):
    user_id: Id
    query: Query
    context: tuple[Turn, ...] = Field(
        (), description="The conversation before the question, oldest first, the app's system prompt first when it has one."
    )
    conversation_id: Id | None = Field(
        None,
        description="The conversation the question belongs to; none: derived from the user, system prompt and first question.",
    )

    @property
    def asked(self) -> QuestionInContext:
        return QuestionInContext(self.context, self.query)


class ChatReply(BaseModel):
    interaction_id: str
    user_id: str
    response: str
    model_version: str
    experiment: str | None
    variant: str | None
    conversation_id: str = Field(description="The conversation's id: send it with the next turn to keep the turns together.")
    feedback_collected: bool = Field(
        description="Whether feedback on this answer is collected (`feedback.collection_rate`, decided when it was served)."
    )
    feedback_token: str | None = Field(
        None,
        description="Lets whoever holds it post feedback on this interaction (POST /v1/feedback), until it expires; "
        "none when feedback on it is not collected.",
    )


@dataclass(frozen=True)
class Routed:
    """One question of a request, routed to its version, its events validated and its ids chosen: ready to answer."""

    request: ChatRequest
    policy: Servable
    route: Route
    interaction_id: str
    conversation_id: str
    feedback_collected: bool
    feedback_token: str | None

    @property
    def conversation(self) -> Conversation:
        return Conversation.of(self.request.asked)

    def interaction(self, response: str, latency_ms: float) -> dict[str, Any]:
        """The interaction event's fields."""
        request, route = self.request, self.route
        return {
            "interaction_id": self.interaction_id,
            "user_id": request.user_id,
            "model_version": self.policy.version,
            "experiment": route.experiment,
            "variant": route.variant,
            **request.asked.event_fields(request.user_id, self.conversation_id),
            "response": response,
            "latency_ms": latency_ms,
        }


Pending = list[tuple[list[int], Future]]  # the indices of a request's questions routed to one version, and their answers


class Assistant:
    """Routes each user (assistant/routing.py), answers, and logs interaction + exposure."""

    def __init__(self, settings: Settings, pool: PolicyPool, client: FeedbackSink):
        self.settings = settings
        self.pool = pool
        self.client = client
        a = settings.assistant
        # An unset secret gets a random one: tokens then die with the process, as the held interactions do.
        secret = a.feedback_secret.get_secret_value().encode() if a.feedback_secret else secrets.token_bytes(32)
        self.tokens = FeedbackTokens(secret, a.feedback_token_ttl_s)
        self.recent = RecentInteractions(a.recent_interactions, a.feedback_token_ttl_s)
        # One client (API key, or client address) may hold half the queue: the other half is everyone else's.
        self.batcher = Batcher(
            _generate,
            a.max_batch,
            a.batch_wait_ms / 1000,
            a.queue_size,
            client_share=max(1, a.queue_size // 2),
            shared_slowdown=a.shared_batch_slowdown,
        )
        self.relay = Relay(settings.gateway)  # versions an engine serves (assistant/relay.py)

    def close(self) -> None:
        self.batcher.close()
        self.relay.close()

    def route(self, user_id: str) -> tuple[Servable, Route]:
        served = self.pool.served
        if served.serving is None:
            raise HTTPException(503, "no policy version is serving yet")
        routed = route(user_id, served.serving.version, self.pool.experiments.open(self.pool.policy), served.versions)
        return served.versions[routed.model_version], routed

    def chat(self, requests: list[ChatRequest], sampling: Sampling | None = None, client: Hashable = None) -> list[ChatReply]:
        """Answer `requests` (the items of one HTTP request) for `client` (whom the batcher is fair between):
        all of them, their events sent, or an error and nothing sent."""
        items = self.prepare(requests)
        start = time.perf_counter()
        pending = self.submit(items, sampling or Sampling.configured(self.settings), client)
        try:
            answered = []
            for idx, future in pending:
                answers = future.result()
                answered.append((idx, answers, (time.perf_counter() - start) * 1000 / len(idx)))
        except BaseException:
            for _, future in pending:
                future.cancel()  # its queries not yet taken are dropped (assistant/batcher.py)
            raise
        replies: list[ChatReply | None] = [None] * len(requests)
        for idx, answers, latency_ms in answered:  # latency: queueing included, what the user waited
            for i, answer in zip(idx, answers, strict=True):
                replies[i] = self.served(items[i], answer.text, latency_ms)
        self.client.flush()
        return [r for r in replies if r is not None]

    def prepare(self, requests: list[ChatRequest]) -> list[Routed]:
        """Route each question and validate the events it will send (its answer unknown yet), so a bad one
        fails the request (400 naming the field) before any work."""
        items = []
        for n, request in enumerate(requests):
            policy, routing = self.route(request.user_id)
            interaction_id = new_id()  # returned even when the SDK samples the event out
            conversation_id = request.conversation_id or request.asked.conversation_id(request.user_id)
            collected = self.client.sampled(interaction_id)
            token = self.tokens.issue(interaction_id, request.user_id) if collected else None
            item = Routed(request, policy, routing, interaction_id, conversation_id, collected, token)
            self._check_events(item, f"{n}." if len(requests) > 1 else "")
            items.append(item)
        return items

    def submit(
        self, items: list[Routed], sampling: Sampling, client: Hashable, stop: tuple[str, ...] = (), sink: Sink | None = None
    ) -> Pending:
        """Queue the questions for generation (`sink`: where a single streamed question's text goes);
        every version's questions are queued before any is awaited, so they can share one batch."""
        pending: Pending = []
        try:
            for policy in {id(item.policy): item.policy for item in items}.values():
                idx = [i for i, item in enumerate(items) if item.policy is policy]
                asks = [Ask(items[i].conversation, stop, sink) for i in idx]
                if isinstance(policy, EngineVersion):
                    pending.append((idx, self.relay.submit(policy, asks, sampling)))
                else:
                    pending.append((idx, self.batcher.submit(policy, asks, sampling, client)))
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise
        return pending

    def _check_events(self, item: Routed, where: str) -> None:
        common = {
            "user_id": item.request.user_id,
            "model_version": item.policy.version,
            "interaction_id": item.interaction_id,
            "experiment": item.route.experiment,
            "variant": item.route.variant,
        }
        try:
            validate_event(InteractionEvent, item.interaction("", 0.0))
            if item.route.experiment is not None:
                validate_event(ExposureEvent, common)
        except EventValidationError as exc:
            raise HTTPException(400, f"{where}{str(exc).partition(': ')[2]}") from None

    def expose(self, item: Routed) -> None:
        """Log that the user was shown the variant's answer, while an experiment is routed."""
        routing = item.route
        if routing.experiment is not None:
            labels = {"experiment": routing.experiment, "variant": routing.variant}
            self.client.exposure(
                user_id=item.request.user_id, model_version=item.policy.version, interaction_id=item.interaction_id, **labels
            )

    def served(self, item: Routed, text: str, latency_ms: float, exposed: bool = False) -> ChatReply:
        """Log one answered question (interaction, and exposure unless already `exposed`), remember it for
        feedback, and its reply; the caller flushes the SDK client."""
        request, routing, version = item.request, item.route, item.policy.version
        labels = {"experiment": routing.experiment, "variant": routing.variant}
        event = item.interaction(text, latency_ms)
        self.client.interaction(**event)
        if not exposed:
            self.expose(item)
        self.recent.add(
            ServedInteraction(
                item.interaction_id,
                request.user_id,
                request.query,
                text,
                version,
                routing.experiment,
                routing.variant,
                context=request.context,
                conversation_id=item.conversation_id,
                turn_index=event["turn_index"],
            )
        )
        return ChatReply(
            interaction_id=item.interaction_id,
            user_id=request.user_id,
            response=text,
            model_version=version,
            conversation_id=item.conversation_id,
            feedback_collected=item.feedback_collected,
            feedback_token=item.feedback_token,
            **labels,
        )


def _generate(policy: LoadedPolicy, asks: list[Ask], sampling: Sampling) -> list[Answer]:
    # Looks `generation.generate` up at each call, so tests can stand a fake in for the model.
    return generation.generate(policy, asks, sampling)
