"""The assistant service (`rlhf serve`): answers chat requests with the A/B variant each user is
assigned to, and logs interactions and exposures through the producer SDK.

Control is the registry's serving version; the treatment is the registry's current candidate
(never a rejected version). Each candidate is its own experiment (`<experiment>:<candidate>`),
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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from analytics.assignment import assign_from_settings
from registry.store import ModelRegistry
from core.settings import Settings
from core.errors import ModelLoadError
from sdk.client import FeedbackClient
from schemas.events import MAX_QUERY_CHARS, new_id
from trainers.tiny_policy import format_prompt

log = logging.getLogger("rlhf.serve")
POLICY = "assistant"


@dataclass(frozen=True)
class LoadedPolicy:
    version: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_policy(registry: ModelRegistry, version: str) -> LoadedPolicy:
    path = registry.path("policies", version)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot load policy version {version!r}: {exc}") from None
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    return LoadedPolicy(version, model, tokenizer)


@torch.inference_mode()
def generate(policy: LoadedPolicy, queries: list[str], max_new_tokens: int, seed: int | None = None) -> list[str]:
    """Sample answers with the plan's settings (top_p 0.95, temperature 0.8)."""
    tok = policy.tokenizer
    batch = tok([format_prompt(q) for q in queries], return_tensors="pt", padding=True)
    if seed is not None:
        torch.manual_seed(seed)
    out = policy.model.generate(
        **batch, do_sample=True, top_p=0.95, temperature=0.8, max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return [text.strip() for text in tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]


class PolicyPool:
    """Serving and candidate policies, refreshed from the registry and swapped atomically."""

    def __init__(self, registry: ModelRegistry, policy: str = POLICY):
        self.registry = registry
        self.policy = policy
        self._loaded: dict[str, LoadedPolicy] = {}
        self.serving: LoadedPolicy | None = None
        self.candidate: LoadedPolicy | None = None
        self.refresh()

    def _get(self, version: str | None) -> LoadedPolicy | None:
        if version is None:
            return None
        if version not in self._loaded:
            self._loaded[version] = load_policy(self.registry, version)
        return self._loaded[version]

    def refresh(self) -> None:
        serving = self._get(self.registry.serving(self.policy))
        candidate = self._get(self.registry.candidate(self.policy))  # None for rejected versions
        # Swap both references only once both are loaded: requests see old or new, never half.
        self.serving, self.candidate = serving, candidate
        keep = {p.version for p in (serving, candidate) if p}
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
        serving, candidate = self.pool.serving, self.pool.candidate
        if serving is None:
            raise HTTPException(503, "no policy version is serving yet")
        ab = self.settings.ab_testing
        if candidate is None or not ab.enabled:
            return serving, None, None
        variant = assign_from_settings(ab, user_id)
        treatment = variant != ab.variants[0].name
        return (candidate if treatment else serving), f"{ab.experiment}:{candidate.version}", variant

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        routed = [self.route(r.user_id) for r in requests]
        replies: list[ChatReply | None] = [None] * len(requests)
        for policy in {id(p): p for p, _, _ in routed}.values():
            idx = [i for i, (p, _, _) in enumerate(routed) if p is policy]
            start = time.perf_counter()
            answers = generate(policy, [requests[i].query for i in idx], self.settings.ppo.training.max_new_tokens)
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
    pool = PolicyPool(registry)
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
