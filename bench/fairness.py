"""Fairness under a flood: another user's latency while one API key floods the assistant, next to
that user's latency with the service idle, in one run (issue 33).

    python -m bench.fairness [--flood-seconds 20] [--idle-requests 40] [--threads 2] [--stand-in 40,0.3]
                             [--shared-batch-slowdown F]

The real app (assistant.service.build_app) under uvicorn on a free local port, the tiny policy,
default limits, two API keys (no Kafka: the SDK client and registry are bench/serve.py's stand-ins).
`--stand-in A,B` answers with a stand-in generate call instead that sleeps A + B x queries ms: a
cost that hardly grows with the batch, as small models decoding on a GPU have, and that keeps the
figures clear of CPU contention (the tiny policy on a shared CPU measures the machine's load too).
One user of the second key asks one question at a time: first alone (the idle baseline), then
while the first key floods for --flood-seconds with
  - one /chat/batch of 2,000 items (refused whole: `assistant.max_batch_items`),
  - its replacement, the same 2,000 items as /chat/batch requests of 32, all sent at once,
  - 200 concurrent /v1/chat/completions, each sent again until answered,
the flood's clients waiting Retry-After when refused (429 or 503), as a well-behaved client does.
Figures: the other user's p50/p99 (ms) idle and flooded, their ratio (goal: p99 within 2x), and
what the flood got (answers, refusals by status).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import httpx
import torch
from pydantic import SecretStr

from assistant import generation
from assistant.generation import Answer
from bench.policy_gain import quiet
from bench.serve import served
from core.settings import AssistantSettings
from trainers.synthetic import split_questions
from trainers.tiny_policy import ensure_tiny_policy

FLOOD, OTHER = "sk-flood", "sk-other"


def stand_in(fixed_ms: float, per_query_ms: float):
    def generate(policy, asks, sampling):
        time.sleep((fixed_ms + per_query_ms * len(asks)) / 1000)
        return [Answer(f"{policy.version}: {ask.prompt.query}", "stop", 1, 1) for ask in asks]

    return generate


def ask(http: httpx.Client, question: str, user: str) -> float:
    sent = time.perf_counter()
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}], "user": user})
    r.raise_for_status()
    return time.perf_counter() - sent


def percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


class Flood:
    """The first key's clients, each retrying after Retry-After until answered or the flood ends."""

    def __init__(self, url: str, questions: list[str], until: float):
        self.url, self.questions, self.until = url, questions, until
        self.statuses: Counter[str] = Counter()
        self.answered = 0
        self.lock = threading.Lock()

    def note(self, what: str, answers: int = 0) -> None:
        with self.lock:
            self.statuses[what] += 1
            self.answered += answers

    def send(self, path: str, body: object, answers: int) -> None:
        headers = {"Authorization": f"Bearer {FLOOD}"}
        with httpx.Client(base_url=self.url, timeout=300, headers=headers) as http:
            while time.monotonic() < self.until:
                r = http.post(path, json=body)
                self.note(f"{path} {r.status_code}", answers if r.status_code == 200 else 0)
                if r.status_code == 200:
                    return
                if r.status_code not in (429, 503):
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
                time.sleep(float(r.headers.get("retry-after", "1")))

    def start(self) -> list[threading.Thread]:
        q = self.questions
        items = [{"user_id": f"flood-{n}", "query": q[n % len(q)]} for n in range(2000)]
        with httpx.Client(base_url=self.url, timeout=300, headers={"Authorization": f"Bearer {FLOOD}"}) as http:
            whole = http.post("/chat/batch", json=items)
            self.note(f"/chat/batch of 2000: {whole.status_code}")
        jobs: list[tuple[str, object, int]] = [
            ("/chat/batch", items[i : i + 32], len(items[i : i + 32])) for i in range(0, 2000, 32)
        ]
        jobs += [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": q[n % len(q)]}], "user": f"fc-{n}"}, 1)
            for n in range(200)
        ]
        threads = [threading.Thread(target=self.send, args=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        return threads


def flood_from_elsewhere(url: str, questions: list[str], until: float) -> tuple[int, dict[str, int]]:
    """The flood, from a process of its own at the lowest CPU priority: an attacker's client runs on
    its own machine, and on a 2-core one, in the server's process, it took a whole core (its own
    HTTP work) and the server's GIL from the service it was measured against. Its answers and
    responses by status."""
    os.nice(19)
    flood = Flood(url, questions, until)
    for thread in flood.start():
        thread.join()
    return flood.answered, dict(flood.statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--idle-requests", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--shared-batch-slowdown",
        type=float,
        help="assistant.shared_batch_slowdown (default: the setting's; 1000: in effect no cap)",
    )
    parser.add_argument("--stand-in", help="A,B: generate sleeps A + B x queries ms instead of running the tiny policy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    model_dir = ensure_tiny_policy()
    if args.stand_in:
        fixed, per_query = (float(v) for v in args.stand_in.split(","))
        generation.generate = stand_in(fixed, per_query)  # looked up at each call (assistant.answering._generate)
    _, held_out = split_questions()
    questions = [q.text for q in held_out]
    keys = AssistantSettings(api_keys=(SecretStr(FLOOD), SecretStr(OTHER)))
    if args.shared_batch_slowdown is not None:
        keys = keys.model_copy(update={"shared_batch_slowdown": args.shared_batch_slowdown})
    other = {"Authorization": f"Bearer {OTHER}"}
    with (
        served(model_dir, keys, backlog=4096, limit_concurrency=None) as url,
        httpx.Client(base_url=url, timeout=300, headers=other) as http,
    ):
        for n in range(5):
            ask(http, questions[n], "warm-up")
        idle = [ask(http, questions[n % len(questions)], "other") for n in range(args.idle_requests)]
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as elsewhere:
            elsewhere.submit(time.sleep, 0).result()  # the flood's process is up before its time starts
            until = time.monotonic() + args.flood_seconds
            flooding = elsewhere.submit(flood_from_elsewhere, url, questions, until)
            time.sleep(1.0)  # the flood is queued: every request below meets it
            flooded, n = [], 0
            while time.monotonic() < until - 0.5:
                flooded.append(ask(http, questions[n % len(questions)], "other"))
                n += 1
            answered, statuses = flooding.result()
    idle_p50, idle_p99 = percentiles(idle)
    load_p50, load_p99 = percentiles(flooded)
    device = f"stand-in {args.stand_in} ms" if args.stand_in else "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"\nassistant defaults (limits: {AssistantSettings().max_concurrent_per_key} requests in progress per key, "
        f"{AssistantSettings().max_batch_items} items per batch, half the queue per caller), shared batch slowdown "
        f"{keys.shared_batch_slowdown}, {device}, {args.threads} torch threads"
    )
    print(f"{'other user':<22} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'idle (baseline)':<22} {len(idle):>8} {idle_p50:8.0f} {idle_p99:8.0f}")
    print(f"{'during the flood':<22} {len(flooded):>8} {load_p50:8.0f} {load_p99:8.0f}")
    print(f"p99 flooded / idle: {load_p99 / idle_p99:.2f}x (goal <= 2x); p50: {load_p50 / idle_p50:.2f}x")
    print(f"flood: {answered} answers in {args.flood_seconds:.0f} s; responses {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
