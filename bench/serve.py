"""Serving: the throughput of micro-batching, and the time to the first streamed piece of an answer.

    python -m bench.serve [--repeats 3] [--concurrency 1 8 32] [--requests 64] [--max-batch 32] [--threads 2]
    python -m bench.serve --streaming [--models tiny smollm2] [--concurrency 1 32] [--max-tokens 48] [--repeats 3]
                          [--min-tokens N] [--batch-wait-ms 5]

Each variant is the real app (assistant.service.build_app) under uvicorn on a free local port,
called over HTTP by N client threads (httpx), each sending `POST /v1/chat/completions` one after
another with the default sampling settings. No Kafka: the SDK client is a stand-in that drops the
events, and the registry a stand-in serving one base model's directory. A level sends
max(--requests, 4 x N) requests after a warm-up; each figure is the median over repeats.

Throughput (the tiny policy): the service micro-batched (`assistant.max_batch`, default 32) next
to one generation at a time (`max_batch` 1), same requests, in one run (the variants alternate
within a repeat, so drift hits both): requests/s (completed / wall time), client-side p50/p99
latency, and the batched/one-at-a-time ratio of requests/s.

Streaming (`--streaming`, each model of `--models`, micro-batched): `stream: true` requests of
`--max-tokens` with `stream_options.include_usage`, a question that asks for a long answer
(`LONG_ANSWER`), every answer held to `--min-tokens` (the API's `min_tokens`; by default the whole
`--max-tokens`, the answer length the figure is about: the tiny policy ends its answers after ~14
tokens on its own; `--min-tokens 1` lets each model end when it will), the client threads in a
process of their own; per request the time to the first piece of text (TTFT) and to the whole
answer (`[DONE]`), both measured by the client; per level their p50/p99, the ratio of the p50s
(TTFT / whole, taken within each run, then its median) and the answers' mean length in tokens
(`usage.completion_tokens`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
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
from registry.store import Deployment
from schemas.experiments import ExperimentBook
from trainers.base_models import SMOLLM2, TINY, resolve_base_model
from trainers.synthetic import split_questions
from trainers.tiny_policy import ensure_tiny_policy

LONG_ANSWER = [
    {"role": "system", "content": "You are the help desk of Mail, the e-mail app."},
    {
        "role": "user",
        "content": "Explain in detail, step by step, how to set up Mail on a new phone: adding the account, the "
        "password, syncing contacts and calendars, notifications and a signature.",
    },
]


class OneVersion:
    """The registry, as the pool sees it: one serving version, `version`, loaded from `directory`,
    or relayed to the engine that `deployed` names for it."""

    def __init__(self, directory: Path, version: str = "tiny", deployed: Mapping[str, Deployment] | None = None):
        self.directory = directory
        self.version = version
        self.deployed = dict(deployed or {})

    def serving(self, policy: str) -> str:
        return self.version

    def path(self, kind: str, version: str) -> Path:
        return self.directory

    def deployments(self, policy: str) -> dict[str, Deployment]:
        return self.deployed


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
def served(
    model_dir: Path,
    assistant_settings: AssistantSettings,
    version: str = "tiny",
    deployed: Mapping[str, Deployment] | None = None,
    **options: Any,
) -> Iterator[str]:
    """The assistant app with `assistant_settings` over stand-ins for the registry (`deployed`: the
    versions an engine serves) and the SDK client, under uvicorn (`options`: more of its settings)
    on a free port; yields its base URL."""
    settings = Settings(assistant=assistant_settings)
    registry = OneVersion(model_dir, version, deployed)
    assistant = Assistant(settings, PolicyPool(registry, ExperimentBook()), DroppedEvents())
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


def streamed(
    url: str,
    clients: int,
    requests: int,
    max_tokens: int,
    min_tokens: int,
    extra: Mapping[str, Any] | None = None,
    think_s: float = 0.0,
) -> dict[str, float]:
    """`requests` streamed completions of `LONG_ANSWER` from `clients` threads, each one request at a time
    (`extra`: more fields of the request body; `think_s`: the mean of an exponential pause before each
    next request, seeded, none by default): the p50/p99 of the time to the first piece of text and
    to the whole answer, the answers' mean length, requests/s and completion tokens/s."""
    first: list[float] = []
    whole: list[float] = []
    tokens: list[int] = []
    failures: list[str] = []
    counter = itertools.count()
    start = threading.Barrier(clients + 1)

    def client(seed: int) -> None:
        pauses = random.Random(seed)
        with httpx.Client(base_url=url, timeout=600) as http:
            start.wait()
            while (n := next(counter)) < requests:
                if think_s:
                    time.sleep(pauses.expovariate(1 / think_s))
                body = {
                    "messages": LONG_ANSWER,
                    "user": f"bench-{n}",
                    "max_tokens": max_tokens,
                    "min_tokens": min_tokens,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **(extra or {}),
                }
                sent, seen = time.perf_counter(), False
                with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.read()[:200]!r}")
                        continue
                    for line in r.iter_lines():
                        data = line.removeprefix("data: ")
                        if data == "[DONE]":
                            whole.append(time.perf_counter() - sent)
                            break
                        if not line.startswith("data: "):
                            continue
                        chunk = json.loads(data)
                        if not seen and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            first.append(time.perf_counter() - sent)
                            seen = True
                        if chunk.get("usage"):
                            tokens.append(chunk["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if failures or len(whole) != requests or len(first) != requests:
        raise RuntimeError(f"{len(failures)} of {requests} requests failed ({failures[:1]}); {len(first)} had text")
    ttft = statistics.quantiles(first, n=100, method="inclusive")
    total = statistics.quantiles(whole, n=100, method="inclusive")
    return {
        "ttft_p50_ms": ttft[49] * 1000,
        "ttft_p99_ms": ttft[98] * 1000,
        "whole_p50_ms": total[49] * 1000,
        "whole_p99_ms": total[98] * 1000,
        "ratio": ttft[49] / total[49],  # per run: a busy spell slows both of a run's figures alike
        "tokens": statistics.mean(tokens),
        "rps": requests / elapsed,
        "tokens_per_s": sum(tokens) / elapsed,
    }


def streaming(args: argparse.Namespace) -> None:
    min_tokens = args.min_tokens or args.max_tokens
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    # The clients run in a process of their own: parsing 32 streams must not hold the server's GIL.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients_process:
        for model in args.models:
            options = AssistantSettings(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
            with served(Path(resolve_base_model(model)), options, version=model) as url:
                clients_process.submit(streamed, url, 2, 4, args.max_tokens, min_tokens).result()  # warm-up
                for repeat in range(args.repeats):
                    for clients in args.concurrency:
                        requests = max(args.requests, 4 * clients)
                        result = clients_process.submit(
                            streamed, url, clients, requests, args.max_tokens, min_tokens, None, args.think_ms / 1000
                        ).result()
                        runs.setdefault((model, clients), []).append(result)
                        print(
                            f"repeat {repeat + 1} {model:<8} clients {clients:>2}  first piece p50 "
                            f"{result['ttft_p50_ms']:6.0f} ms  whole p50 {result['whole_p50_ms']:6.0f} ms  "
                            f"ratio {result['ratio']:.2f}  {result['tokens']:4.1f} tokens",
                            flush=True,
                        )
    print(
        f"\nmedian of {args.repeats} repeats; max_tokens {args.max_tokens}, min_tokens {min_tokens}, "
        f"max_batch {args.max_batch}, batch_wait_ms {args.batch_wait_ms:g}, think_ms {args.think_ms:g}, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, {args.threads} torch threads"
    )
    print(f"{'model':<8} {'clients':>7} | {'TTFT p50 / p99 ms':>17} | {'whole p50 / p99 ms':>18} | TTFT/whole | tokens")
    for (model, clients), results in runs.items():
        m = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(
            f"{model:<8} {clients:>7} | {m['ttft_p50_ms']:7.0f} / {m['ttft_p99_ms']:7.0f} | "
            f"{m['whole_p50_ms']:8.0f} / {m['whole_p99_ms']:7.0f} | {m['ratio']:10.2f} | "
            f"{m['tokens']:6.1f}"
        )


def throughput(args: argparse.Namespace) -> None:
    model_dir = ensure_tiny_policy()
    _, held_out = split_questions()
    questions = [q.text for q in held_out]
    variants = {"one-at-a-time": 1, "batched": args.max_batch}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with (
        served(model_dir, AssistantSettings(max_batch=1)) as single,
        served(model_dir, AssistantSettings(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)) as batched,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", help="clients per level (default 1 8 32; streaming: 1 32)")
    parser.add_argument("--requests", type=int, default=64, help="requests per level, at least 4 per client")
    parser.add_argument("--max-batch", type=int, default=AssistantSettings().max_batch)
    parser.add_argument("--batch-wait-ms", type=float, default=AssistantSettings().batch_wait_ms)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--streaming", action="store_true", help="time to the first piece of a streamed answer")
    parser.add_argument("--models", nargs="+", default=[TINY, SMOLLM2], help="base models streamed (trainers/base_models.py)")
    parser.add_argument("--max-tokens", type=int, default=48, help="streaming: max_tokens of each answer")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="streaming: mean pause of each client before its next request (ms)"
    )
    parser.add_argument("--min-tokens", type=int, help="streaming: min_tokens of each answer (default: --max-tokens)")
    args = parser.parse_args()
    args.concurrency = args.concurrency or ([1, 32] if args.streaming else [1, 8, 32])
    torch.set_num_threads(args.threads)
    quiet()
    (streaming if args.streaming else throughput)(args)


if __name__ == "__main__":
    main()
