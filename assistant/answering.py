"""Answering chat requests: the loaded policy versions (`PolicyPool`, hot-swapped from the
registry and the open experiment), and `Assistant`, which routes each user to a version
(assistant/routing.py), generates, logs the interaction and exposure through the producer SDK,
remembers what it served (assistant/recent.py) and signs a feedback token for it (assistant/tokens.py).
Generation goes through the micro-batcher (assistant/batcher.py): concurrent requests share calls.

A request fails with no side effect or succeeds with all of them: every item is routed and its
events validated before anything is generated or sent, and events are sent only once every answer
of the request is in. Whether an answer's feedback is collected (`feedback.collection_rate`) is
decided when it is served: only then does it carry a feedback token, and says so (`feedback_collected`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from fastapi import HTTPException
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from assistant.batcher import Batcher
from assistant.recent import RecentInteractions, ServedInteraction
from assistant.routing import Route, route
from assistant.tokens import FeedbackTokens
from core.errors import EventValidationError, ModelLoadError
from core.settings import AssistantSettings, Settings
from registry.store import Kind
from schemas.events import DEFAULT_POLICY, Event, ExposureEvent, Id, InteractionEvent, Query, new_id, validate_event
from schemas.experiments import ExperimentBook
from trainers import policy as policies

log = logging.getLogger("rlhf.serve")
DEFAULTS = AssistantSettings()  # the sampling `answer` uses when its caller (the demo's report) names none


class PolicyRegistry(Protocol):
    """What the pool reads of the registry (`registry.store.ModelRegistry`): a policy's serving version,
    and where a version's files are."""

    def serving(self, policy: str) -> str | None: ...
    def path(self, kind: Kind, version: str) -> Path: ...


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


def load_version(registry: PolicyRegistry, version: str) -> LoadedPolicy:
    """A registry version, loaded as training loads it; ModelLoadError naming its path if it cannot be."""
    model, tokenizer = policies.load_policy(str(registry.path("policies", version)))
    return LoadedPolicy(version, model.eval(), tokenizer)


@dataclass(frozen=True)
class Sampling:
    """How one request's answers are generated; temperature 0 is greedy decoding."""

    max_new_tokens: int
    temperature: float
    top_p: float

    @classmethod
    def configured(cls, settings: Settings) -> Sampling:
        """What a request that sets nothing gets."""
        return cls(settings.policy.training.max_new_tokens, settings.assistant.temperature, settings.assistant.top_p)


def answer(
    policy: LoadedPolicy,
    queries: list[str],
    max_new_tokens: int,
    seed: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> list[str]:
    """Sampled answers (a given `seed` repeats them); by default with the assistant's default sampling settings."""
    if seed is not None:
        torch.manual_seed(seed)
    temperature = DEFAULTS.temperature if temperature is None else temperature
    top_p = DEFAULTS.top_p if top_p is None else top_p
    return policies.sample(
        policy.model,
        policy.tokenizer,
        queries,
        max_new_tokens=max_new_tokens,
        temperature=temperature or 1.0,
        top_p=top_p,
        greedy=temperature == 0,
    ).responses


@dataclass(frozen=True)
class Served:
    """The loaded versions one request is routed over: the serving one and any other it may need."""

    serving: LoadedPolicy | None = None
    versions: Mapping[str, LoadedPolicy] = field(default_factory=dict)


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
        # A serving version that does not load raises: the watch logs it and the previous set stays.
        versions = {serving: previous.get(serving) or load_version(self.registry, serving)} if serving else {}
        for arm in experiment.arms if experiment else ():
            version = arm.model_version
            if version in versions:
                continue
            try:
                versions[version] = previous.get(version) or load_version(self.registry, version)
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


class ChatReply(BaseModel):
    interaction_id: str
    user_id: str
    response: str
    model_version: str
    experiment: str | None
    variant: str | None
    feedback_collected: bool = Field(
        description="Whether feedback on this answer is collected (`feedback.collection_rate`, decided when it was served)."
    )
    feedback_token: str | None = Field(
        None,
        description="Lets whoever holds it post feedback on this interaction (POST /v1/feedback), until it expires; "
        "none when feedback on it is not collected.",
    )


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
            _generate, a.max_batch, a.batch_wait_ms / 1000, a.queue_size, client_share=max(1, a.queue_size // 2)
        )

    def close(self) -> None:
        self.batcher.close()

    def route(self, user_id: str) -> tuple[LoadedPolicy, Route]:
        served = self.pool.served
        if served.serving is None:
            raise HTTPException(503, "no policy version is serving yet")
        routed = route(user_id, served.serving.version, self.pool.experiments.open(self.pool.policy), served.versions)
        return served.versions[routed.model_version], routed

    def chat(self, requests: list[ChatRequest], sampling: Sampling | None = None, client: Hashable = None) -> list[ChatReply]:
        """Answer `requests` (the items of one HTTP request) for `client` (whom the batcher is fair between):
        all of them, their events sent, or an error and nothing sent."""
        sampling = sampling or Sampling.configured(self.settings)
        routed = [self.route(r.user_id) for r in requests]
        ids = [new_id() for _ in requests]  # returned even when the SDK samples the event out
        for n, (request, (policy, routing), interaction_id) in enumerate(zip(requests, routed, ids, strict=True)):
            self._check_events(request, policy, routing, interaction_id, f"{n}." if len(requests) > 1 else "")
        start = time.perf_counter()
        # Every version's queries are queued before any is awaited, so they can share one batch.
        pending: list[tuple[LoadedPolicy, list[int], Future]] = []
        try:
            for policy in {id(p): p for p, _ in routed}.values():
                idx = [i for i, (p, _) in enumerate(routed) if p is policy]
                pending.append((policy, idx, self.batcher.submit(policy, [requests[i].query for i in idx], sampling, client)))
            answered = []
            for policy, idx, future in pending:
                answers = future.result()
                answered.append((policy, idx, answers, (time.perf_counter() - start) * 1000 / len(idx)))
        except BaseException:
            for _, _, future in pending:
                future.cancel()  # its queries not yet taken are dropped (assistant/batcher.py)
            raise
        replies: list[ChatReply | None] = [None] * len(requests)
        for policy, idx, answers, latency_ms in answered:  # latency: queueing included, what the user waited
            for i, text in zip(idx, answers, strict=True):
                replies[i] = self._served(requests[i], policy, routed[i][1], ids[i], text, latency_ms)
        self.client.flush()
        return [r for r in replies if r is not None]

    def _check_events(self, request: ChatRequest, policy: LoadedPolicy, routing: Route, interaction_id: str, where: str) -> None:
        """Validate the events this request will send (its answer unknown yet), so a bad one fails it before any work."""
        labels = {"experiment": routing.experiment, "variant": routing.variant}
        common = {"user_id": request.user_id, "model_version": policy.version, "interaction_id": interaction_id, **labels}
        try:
            validate_event(InteractionEvent, {**common, "query": request.query, "response": "", "latency_ms": 0.0})
            if routing.experiment is not None:
                validate_event(ExposureEvent, common)
        except EventValidationError as exc:
            raise HTTPException(400, f"{where}{str(exc).partition(': ')[2]}") from None

    def _served(
        self, request: ChatRequest, policy: LoadedPolicy, routing: Route, interaction_id: str, text: str, latency_ms: float
    ) -> ChatReply:
        """Log one answered item (interaction, exposure), remember it for feedback, and its reply."""
        labels = {"experiment": routing.experiment, "variant": routing.variant}
        user_id = request.user_id
        self.client.interaction(
            interaction_id=interaction_id,
            user_id=user_id,
            query=request.query,
            response=text,
            model_version=policy.version,
            latency_ms=latency_ms,
            **labels,
        )
        if routing.experiment is not None:
            self.client.exposure(user_id=user_id, model_version=policy.version, interaction_id=interaction_id, **labels)
        self.recent.add(
            ServedInteraction(interaction_id, user_id, request.query, text, policy.version, routing.experiment, routing.variant)
        )
        collected = self.client.sampled(interaction_id)
        return ChatReply(
            interaction_id=interaction_id,
            user_id=user_id,
            response=text,
            model_version=policy.version,
            feedback_collected=collected,
            feedback_token=self.tokens.issue(interaction_id, user_id) if collected else None,
            **labels,
        )


def _generate(policy: LoadedPolicy, queries: list[str], sampling: Sampling) -> list[str]:
    # Looks `answer` up at each call, so tests can stand a fake in for the model.
    return answer(policy, queries, sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p)
