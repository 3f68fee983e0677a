"""Serving throughput: the assistant service micro-batched (`assistant.max_batch`, default 32)
next to one generation at a time (`max_batch` 1), same model (the tiny policy), same requests,
in one run.

    python -m bench.serve [--repeats 3] [--concurrency 1 8 32] [--requests 64] [--max-batch 32] [--threads 2]

Each variant is the real app (assistant.service.build_app) under uvicorn on a free local port,
called over HTTP by N client threads (httpx), each sending `POST /v1/chat/completions` one after
another with the default sampling settings. No Kafka: the SDK client is a stand-in that drops the
events, and the registry a stand-in serving the tiny policy's directory. A level sends
max(--requests, 4 x N) requests after a warm-up; figures are requests/s (completed / wall time)
and client-side p50/p99 latency, each the median over repeats (the variants alternate within a
repeat, so drift hits both), with the batched/one-at-a-time ratio of requests/s.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

from assistant.answering import Assistant, PolicyPool
from assistant.service import build_app
from bench.policy_gain import quiet
from core.settings import AssistantSettings, Settings
from schemas.experiments import ExperimentBook
from trainers.synthetic import split_questions
from trainers.tiny_policy import ensure_tiny_policy

VERSION = "tiny"


class OneVersion:
    """The registry, as the pool sees it: one serving version, loaded from `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory

    def serving(self, policy: str) -> str:
        return VERSION

    def path(self, kind: str, version: str) -> Path:
        return self.directory


class DroppedEvents:
    """The SDK client, as the assistant uses it, without a broker: events are dropped."""

    collection_rate = 1.0

    def sampled(self, interaction_id: str) -> bool:
        return True

    def interaction(self, **event: object) -> None: ...
    def exposure(self, **event: object) -> None: ...
    def send(self, topic: str, event: object, key: str | None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


@contextmanager
def served(model_dir: Path, assistant_settings: AssistantSettings, **options: Any) -> Iterator[str]:
    """The assistant app with `assistant_settings` over stand-ins for the registry and the SDK client,
    under uvicorn (`options`: more of its settings) on a free port; yields its base URL."""
    settings = Settings(assistant=assistant_settings)
    assistant = Assistant(settings, PolicyPool(OneVersion(model_dir), ExperimentBook()), DroppedEvents())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound before the server starts: no race for the port
    server = uvicorn.Server(uvicorn.Config(build_app(settings, assistant), log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        assistant.close()


def load(url: str, clients: int, requests: int, questions: list[str]) -> dict[str, float]:
    """`requests` completions from `clients` threads, each one request at a time."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = itertools.count()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            while (n := next(counter)) < requests:
                body = {"messages": [{"role": "user", "content": questions[n % len(questions)]}], "user": f"bench-{n}"}
                sent = time.perf_counter()
                r = http.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - sent)
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} of {requests} requests failed, e.g. {failures[0]}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": requests / elapsed, "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per level, at least 4 per client")
    parser.add_argument("--max-batch", type=int, default=AssistantSettings().max_batch)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    model_dir = ensure_tiny_policy()
    _, held_out = split_questions()
    questions = [q.text for q in held_out]
    variants = {"one-at-a-time": 1, "batched": args.max_batch}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with (
        served(model_dir, AssistantSettings(max_batch=1)) as single,
        served(model_dir, AssistantSettings(max_batch=args.max_batch)) as batched,
    ):
        urls = {"one-at-a-time": single, "batched": batched}
        for url in urls.values():
            load(url, 4, 8, questions)  # warm-up: first calls pay for allocation and lazy imports
        for repeat in range(args.repeats):
            for clients in args.concurrency:
                for name in variants:
                    result = load(urls[name], clients, max(args.requests, 4 * clients), questions)
                    runs.setdefault((name, clients), []).append(result)
                    print(
                        f"repeat {repeat + 1} clients {clients:>2} {name:<14} {result['rps']:7.1f} req/s  "
                        f"p50 {result['p50_ms']:7.0f} ms  p99 {result['p99_ms']:7.0f} ms",
                        flush=True,
                    )
    print(
        f"\nmedian of {args.repeats} repeats; batched = max_batch {args.max_batch}, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(f"{'clients':>7} | {'one-at-a-time req/s  p50 ms  p99 ms':>36} | {'batched req/s  p50 ms  p99 ms':>30} | ratio")
    for clients in args.concurrency:
        cells = []
        for name in variants:
            m = {k: statistics.median(r[k] for r in runs[(name, clients)]) for k in ("rps", "p50_ms", "p99_ms")}
            cells.append(m)
        one, many = cells
        print(
            f"{clients:>7} | {one['rps']:20.1f} {one['p50_ms']:7.0f} {one['p99_ms']:7.0f} | "
            f"{many['rps']:13.1f} {many['p50_ms']:7.0f} {many['p99_ms']:7.0f} | {many['rps'] / one['rps']:4.1f}x"
        )


if __name__ == "__main__":
    main()
