"""The assistant service (`rlhf serve`): answers chat requests with the A/B variant each user is
assigned to, and logs interactions and exposures through the producer SDK.

Each variant serves the model its config names (`ab_testing.variants[].model`): by default control
the registry's serving version and the treatment its current candidate (never a rejected version).
Each candidate is its own experiment (`<experiment>:<candidate>`),
so analyses never mix rounds. A background thread watches the registry pointers and loads new
versions before swapping them in, so a promotion never drops or stalls a request.

    rlhf serve --port 8300        POST /chat {"user_id": "u1", "query": "..."}   GET /versions
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from analytics.assignment import assign_from_settings
from registry.store import ModelRegistry
from core.settings import ABTestingSettings, Settings
from sdk.client import FeedbackClient
from schemas.events import DEFAULT_POLICY, MAX_QUERY_CHARS, new_id
from trainers import policy as policies

log = logging.getLogger("rlhf.serve")
TEMPERATURE, TOP_P = 0.8, 0.95  # PolicyTrainingConfig's defaults: users get the answers the gate measured


@dataclass(frozen=True)
class LoadedPolicy:
    version: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_version(registry: ModelRegistry, version: str) -> LoadedPolicy:
    """A registry version, loaded as training loads it; ModelLoadError naming its path if it cannot be."""
    model, tokenizer = policies.load_policy(str(registry.path("policies", version)))
    return LoadedPolicy(version, model.eval(), tokenizer)


def answer(policy: LoadedPolicy, queries: list[str], max_new_tokens: int, seed: int | None = None) -> list[str]:
    """Sampled answers (a given `seed` repeats them) with the sampling settings of training and evaluation."""
    if seed is not None:
        torch.manual_seed(seed)
    return policies.sample(policy.model, policy.tokenizer, queries, max_new_tokens=max_new_tokens, temperature=TEMPERATURE, top_p=TOP_P).responses


class PolicyPool:
    """The policy versions the experiment's variants name, refreshed from the registry and swapped
    atomically. A variant's `model` is `serving`, `candidate` or a registry version id."""

    def __init__(self, registry: ModelRegistry, ab: ABTestingSettings, policy: str = DEFAULT_POLICY):
        self.registry = registry
        self.policy = policy
        self.specs = tuple(dict.fromkeys(["serving", *(v.model for v in ab.variants)]))
        self._loaded: dict[str, LoadedPolicy] = {}
        self.by_spec: dict[str, LoadedPolicy | None] = {}
        self.refresh()

    @property
    def serving(self) -> LoadedPolicy | None:
        return self.by_spec.get("serving")

    @property
    def candidate(self) -> LoadedPolicy | None:
        return self.by_spec.get("candidate")

    def _version_of(self, spec: str) -> str | None:
        if spec == "serving":
            return self.registry.serving(self.policy)
        if spec == "candidate":
            return self.registry.candidate(self.policy)  # None for rejected versions
        return spec

    def _get(self, version: str | None) -> LoadedPolicy | None:
        if version is None:
            return None
        if version not in self._loaded:
            self._loaded[version] = load_version(self.registry, version)
        return self._loaded[version]

    def refresh(self) -> None:
        by_spec = {spec: self._get(self._version_of(spec)) for spec in self.specs}
        # Swap the whole mapping only once every version is loaded: requests see old or new, never half.
        self.by_spec = by_spec
        keep = {p.version for p in by_spec.values() if p}
        self._loaded = {v: p for v, p in self._loaded.items() if v in keep}

    def watch(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.wait(interval):
            try:
                self.refresh()
            except Exception:
                log.exception("registry refresh failed; still serving the previous versions")


class ChatRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)


class ChatReply(BaseModel):
    interaction_id: str
    response: str
    model_version: str
    experiment: str | None
    variant: str | None


class Assistant:
    """Routes each user to a variant, answers, and logs interaction + exposure."""

    def __init__(self, settings: Settings, pool: PolicyPool, client: FeedbackClient):
        self.settings = settings
        self.pool = pool
        self.client = client

    def route(self, user_id: str) -> tuple[LoadedPolicy, str | None, str | None]:
        """(policy, experiment, variant) for this user. The experiment runs while every variant's
        model resolves (a `candidate` variant needs a candidate); otherwise everyone gets serving."""
        by_spec, ab = self.pool.by_spec, self.settings.ab_testing
        serving = by_spec.get("serving")
        if serving is None:
            raise HTTPException(503, "no policy version is serving yet")
        models = {v.name: by_spec.get(v.model) for v in ab.variants}
        if not ab.enabled or any(m is None for m in models.values()):
            return serving, None, None
        variant = assign_from_settings(ab, user_id)
        # Each set of treatment versions is its own experiment, so analyses never mix rounds.
        treatments = "+".join(dict.fromkeys(m.version for name, m in models.items() if name != ab.variants[0].name))  # type: ignore[union-attr]
        return models[variant], f"{ab.experiment}:{treatments}", variant  # type: ignore[return-value]

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        routed = [self.route(r.user_id) for r in requests]
        replies: list[ChatReply | None] = [None] * len(requests)
        for policy in {id(p): p for p, _, _ in routed}.values():
            idx = [i for i, (p, _, _) in enumerate(routed) if p is policy]
            start = time.perf_counter()
            answers = answer(policy, [requests[i].query for i in idx], self.settings.policy.training.max_new_tokens)
            latency_ms = (time.perf_counter() - start) * 1000 / len(idx)
            for i, text in zip(idx, answers):
                _, experiment, variant = routed[i]
                interaction_id = new_id()  # returned even when the SDK samples the event out
                self.client.interaction(
                    interaction_id=interaction_id, user_id=requests[i].user_id, query=requests[i].query, response=text, model_version=policy.version,
                    experiment=experiment, variant=variant, latency_ms=latency_ms,
                )  # fmt: skip
                if experiment is not None:
                    self.client.exposure(user_id=requests[i].user_id, experiment=experiment, variant=variant,
                                         model_version=policy.version, interaction_id=interaction_id)  # fmt: skip
                replies[i] = ChatReply(interaction_id=interaction_id, response=text, model_version=policy.version, experiment=experiment, variant=variant)
        self.client.flush()
        return [r for r in replies if r is not None]


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    registry = registry or ModelRegistry(settings.registry_path)
    pool = PolicyPool(registry, settings.ab_testing)
    assistant = Assistant(settings, pool, FeedbackClient.from_settings(settings))
    stop = threading.Event()
    app = FastAPI(title="rlhf-stream assistant", on_shutdown=[stop.set, assistant.client.close])
    threading.Thread(target=pool.watch, args=(stop,), daemon=True, name="registry-watch").start()
    lock = threading.Lock()  # one generation at a time: torch already uses every core

    @app.post("/chat", response_model=ChatReply)
    def chat(request: ChatRequest) -> ChatReply:
        with lock:
            return assistant.chat([request])[0]

    @app.post("/chat/batch", response_model=list[ChatReply])
    def chat_batch(requests: list[ChatRequest]) -> list[ChatReply]:
        with lock:
            return assistant.chat(requests)

    @app.get("/versions")
    def versions() -> dict[str, str | None]:
        return {"serving": pool.serving.version if pool.serving else None, "candidate": pool.candidate.version if pool.candidate else None}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok" if pool.serving else "no-policy"}

    return app


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
