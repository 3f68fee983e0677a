"""The assistant service (`rlhf serve`): answers chat requests with the A/B variant each user is
assigned to, and logs interactions and exposures through the producer SDK.

The experiments topic says what is tested: while the policy's experiment is open (from its
`ExperimentStarted` to its `ExperimentDecided`), users are assigned to its arms by its own salt and
weights and answered by the arm's model version, their interactions and exposures labelled with the
experiment id and arm name (assistant/routing.py); otherwise everyone gets the registry's serving
version, unlabelled. A background consumer follows the topic (assistant/experiments.py) and another
thread watches the registry's serving pointer; versions are loaded before they are swapped in, so
neither a promotion nor an experiment's start drops or stalls a request.

    rlhf serve --port 8300        POST /chat {"user_id": "u1", "query": "..."}   GET /versions
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from assistant.experiments import ExperimentBook, ExperimentFollower
from assistant.routing import Route, route, routed_experiment
from registry.store import ModelRegistry
from core.errors import ModelLoadError
from core.settings import Settings
from sdk.client import FeedbackClient
from schemas.events import DEFAULT_POLICY, MAX_QUERY_CHARS, new_id
from trainers import policy as policies

log = logging.getLogger("rlhf.serve")
TEMPERATURE, TOP_P = 0.8, 0.95  # PolicyTrainingConfig's defaults: users get the answers the gate measured
CATCH_UP_S = 10.0  # how long startup waits for the experiments topic to be read before answering anyway


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


@dataclass(frozen=True)
class Served:
    """The loaded versions one request is routed over: the serving one and any other it may need."""

    serving: LoadedPolicy | None = None
    versions: Mapping[str, LoadedPolicy] = field(default_factory=dict)


class PolicyPool:
    """The serving version and the versions of the policy's open experiment, loaded from the
    registry and swapped in together."""

    def __init__(self, registry: ModelRegistry, experiments: ExperimentBook, policy: str = DEFAULT_POLICY):
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
    user_id: str = Field(min_length=1, max_length=128)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)


class ChatReply(BaseModel):
    interaction_id: str
    response: str
    model_version: str
    experiment: str | None
    variant: str | None


class Assistant:
    """Routes each user (assistant/routing.py), answers, and logs interaction + exposure."""

    def __init__(self, settings: Settings, pool: PolicyPool, client: FeedbackClient):
        self.settings = settings
        self.pool = pool
        self.client = client

    def route(self, user_id: str) -> tuple[LoadedPolicy, Route]:
        served = self.pool.served
        if served.serving is None:
            raise HTTPException(503, "no policy version is serving yet")
        routed = route(user_id, served.serving.version, self.pool.experiments.open(self.pool.policy), served.versions)
        return served.versions[routed.model_version], routed

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        routed = [self.route(r.user_id) for r in requests]
        replies: list[ChatReply | None] = [None] * len(requests)
        for policy in {id(p): p for p, _ in routed}.values():
            idx = [i for i, (p, _) in enumerate(routed) if p is policy]
            start = time.perf_counter()
            answers = answer(policy, [requests[i].query for i in idx], self.settings.policy.training.max_new_tokens)
            latency_ms = (time.perf_counter() - start) * 1000 / len(idx)
            for i, text in zip(idx, answers):
                labels = {"experiment": routed[i][1].experiment, "variant": routed[i][1].variant}
                interaction_id = new_id()  # returned even when the SDK samples the event out
                self.client.interaction(
                    interaction_id=interaction_id, user_id=requests[i].user_id, query=requests[i].query, response=text, model_version=policy.version,
                    latency_ms=latency_ms, **labels,
                )  # fmt: skip
                if labels["experiment"] is not None:
                    self.client.exposure(user_id=requests[i].user_id, model_version=policy.version, interaction_id=interaction_id, **labels)
                replies[i] = ChatReply(interaction_id=interaction_id, response=text, model_version=policy.version, **labels)
        self.client.flush()
        return [r for r in replies if r is not None]


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    registry = registry or ModelRegistry(settings.registry_path)
    book = ExperimentBook()
    follower = ExperimentFollower(settings, book)
    pool = PolicyPool(registry, book)
    assistant = Assistant(settings, pool, FeedbackClient.from_settings(settings))
    stop = threading.Event()

    def catch_up() -> None:
        # A user answered before the open experiment is known would be served outside it.
        if not follower.caught_up.wait(CATCH_UP_S):
            log.warning("the experiments topic was not read within %.0f s; answering meanwhile", CATCH_UP_S)
        pool.refresh()

    app = FastAPI(title="rlhf-stream assistant", on_startup=[catch_up], on_shutdown=[stop.set, assistant.client.close])
    threading.Thread(target=follower.run, args=(stop,), daemon=True, name="experiments-follow").start()
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
        """The serving version and, while an experiment is routed, its id and treatment version."""
        served = pool.served
        experiment = routed_experiment(book.open(pool.policy), served.versions)
        return {
            "serving": served.serving.version if served.serving else None,
            "experiment": experiment.experiment_id if experiment else None,
            "candidate": experiment.treatment_version if experiment else None,
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok" if pool.served.serving else "no-policy"}

    return app


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
