"""The assistant service (`rlhf serve`): answers chat requests with the A/B variant each user is
assigned to, and logs interactions and exposures through the producer SDK.

The experiments topic says what is tested: while the policy's experiment is open (from its
`ExperimentStarted` to its `ExperimentDecided`), users are assigned to its arms by its own salt and
weights and answered by the arm's model version, their interactions and exposures labelled with the
experiment id and arm name (assistant/routing.py); otherwise everyone gets the registry's serving
version, unlabelled. A background consumer follows the topic (assistant/experiments.py) and another
thread watches the registry's serving pointer; versions are loaded before they are swapped in, so
neither a promotion nor an experiment's start drops or stalls a request.

Routes: the OpenAI-compatible API (assistant/openai_api.py: whole conversations, streamed if
asked), feedback over HTTP with signed per-interaction tokens (assistant/feedback.py), the chat page
at `/` (assistant/static/chat.html: a conversation of several turns, streamed, feedback on every
answer), and the original routes, which the demo's users call: a question, with its conversation
before it as `context` if it has one. API keys (core/access.py)
guard every route that generates; with none configured the service is open, and `serve` refuses to
listen beyond loopback (as the sink's dashboard does). Concurrent requests are micro-batched
(assistant/batcher.py): one generate call per version and sampling setting, fair between callers.
Every request is limited where it enters (assistant/limits.py) and every error answered by the
project's one policy (core/web.py): 4xx naming the field or limit, 500 with an id that is in the log.

    rlhf serve --port 8300        POST /v1/chat/completions   GET /v1/models   POST /v1/feedback   GET /
                                  POST /chat {"user_id": "u1", "query": "...", "context": [...]}   GET /versions
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from collections.abc import Callable
from importlib.resources import files

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse

from assistant import feedback, openai_api
from assistant.answering import Assistant, ChatReply, ChatRequest, PolicyPool, answer, load_version
from assistant.experiments import experiment_follower
from assistant.limits import CallerLimit, caller
from assistant.openai_api import FEEDBACK_TOKEN_HEADER, Detail, feedback_link, render_error
from assistant.peers import peer_follower
from assistant.routing import routed_experiment
from core.access import ApiKeys, require_keys_beyond_loopback
from core.settings import Settings
from core.web import BodyLimit, error_responses, install_error_policy
from registry.store import ModelRegistry
from schemas.experiments import ExperimentBook
from sdk.client import FeedbackClient

__all__ = [
    "answer",
    "create_app",
    "load_version",
    "serve",
]  # answer and load_version: the demo's report scores versions with them
log = logging.getLogger("rlhf.serve")
CATCH_UP_S = 10.0  # how long startup waits for the experiments topic to be read before answering anyway
CHAT_PAGE = files("assistant") / "static" / "chat.html"


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    registry = registry or ModelRegistry.of(settings)
    book = ExperimentBook()
    follower = experiment_follower(settings, book)
    pool = PolicyPool(registry, book)
    client = FeedbackClient.from_settings(settings)
    assistant = Assistant(settings, pool, client)
    stop = threading.Event()

    def catch_up() -> None:
        # A user answered before the open experiment is known would be served outside it.
        if not follower.caught_up.wait(CATCH_UP_S):
            log.warning("the experiments topic was not read within %.0f s; answering meanwhile", CATCH_UP_S)
        pool.refresh()

    app = build_app(settings, assistant)
    app.router.on_startup.append(catch_up)
    app.router.on_shutdown.extend([stop.set, assistant.close, client.close])
    threading.Thread(target=follower.run, args=(stop,), daemon=True, name="experiments-follow").start()
    threading.Thread(target=pool.watch, args=(stop,), daemon=True, name="registry-watch").start()
    if settings.assistant.replicas > 1:
        peers = peer_follower(settings, assistant.recent)
        threading.Thread(target=peers.run, args=(stop,), daemon=True, name="peers-follow").start()
    return app


def build_app(settings: Settings, assistant: Assistant) -> FastAPI:
    """The routes over an `Assistant`, without the background threads that keep it current."""
    app = FastAPI(title="rlhf-stream assistant")
    pool = assistant.pool
    limits = settings.assistant
    keys = ApiKeys(limits.api_keys)
    # Outermost last: CORS, then the body's size, then the caller's concurrency, then the error policy's catch-all.
    install_error_policy(app, render_error)
    app.add_middleware(CallerLimit, keys=keys, max_concurrent=limits.max_concurrent_per_key, render=render_error)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, render=render_error)
    if limits.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(limits.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[FEEDBACK_TOKEN_HEADER],
        )
    app.include_router(openai_api.router(assistant, keys))
    app.include_router(feedback.router(assistant, keys))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return CHAT_PAGE.read_text(encoding="utf-8")

    answered = {200: {"links": feedback_link("interaction_id")}, **error_responses(Detail, 400, 401, 413, 429, 503)}

    @app.post("/chat", response_model=ChatReply, dependencies=[Depends(keys.require)], responses=answered)
    def chat(body: ChatRequest, request: Request) -> ChatReply:
        return assistant.chat([body], client=caller(request))[0]

    @app.post(
        "/chat/batch",
        response_model=list[ChatReply],
        dependencies=[Depends(keys.require)],
        responses=error_responses(Detail, 400, 401, 413, 429, 503),
    )
    def chat_batch(body: list[ChatRequest], request: Request) -> list[ChatReply]:
        """Several answers in one request, all or none; its queries wait their turn beside other callers'."""
        if len(body) > limits.max_batch_items:
            raise HTTPException(400, f"body: {len(body)} items, at most {limits.max_batch_items} (`assistant.max_batch_items`)")
        return assistant.chat(body, client=caller(request))

    @app.get("/versions")
    def versions() -> dict[str, str | None]:
        """The serving version and, while an experiment is routed, its id and treatment version."""
        served = pool.served
        experiment = routed_experiment(pool.experiments.open(pool.policy), served.versions)
        return {
            "serving": served.serving.version if served.serving else None,
            "experiment": experiment.experiment_id if experiment else None,
            "candidate": experiment.treatment_version if experiment else None,
        }

    # Which replica answered, behind a load balancer: the host (a container's is its id) and the process.
    replica = f"{socket.gethostname()}:{os.getpid()}"

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok" if pool.served.serving else "no-policy", "replica": replica}

    return app


def serve(settings: Settings, args: argparse.Namespace, prepare: Callable[[Settings], object] = lambda settings: None) -> None:
    """Serve on `args.host`, after `prepare(settings)` (e.g. building the base policy); ConfigError,
    before anything is prepared or loaded, for an open API beyond loopback."""
    import uvicorn

    require_keys_beyond_loopback(args.host, ApiKeys(settings.assistant.api_keys), "assistant.api_keys")
    prepare(settings)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
