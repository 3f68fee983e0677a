"""The gateway in front of the engine: what relaying through the assistant adds to SmolLM2 answers
served by vLLM, next to the engine called directly, and the engine next to in-process generation
(issue 35).

    python -m bench.engine_gateway [--concurrency 1 32] [--requests 16] [--max-tokens 48] [--repeats 3]
                                   [--engine-url URL] [--skip-embedded] [--threads 2] [--out FILE.json]

The engine is the local vLLM CPU server serving SmolLM2 as `smollm2` (devtools/engine.py, as
`rlhf engine up` starts it): one already running on the data directory is used as it is, otherwise
it is started and stopped at the end; `--engine-url` uses another one instead (it must serve
`smollm2`). Three variants, the same streamed request body (bench/serve.py `streamed`: its
`LONG_ANSWER`, model `smollm2`, every answer `--max-tokens` long through `min_tokens`, temperature
`--temperature`, the assistant's default top_p):

  - direct: `POST /v1/chat/completions` straight to the engine;
  - gateway: the real assistant app (assistant.service.build_app) under uvicorn on a free port, its
    registry a stand-in whose serving version `smollm2` is deployed on the engine (so the `openai`
    backend relays it, assistant/relay.py), its SDK client a stand-in that drops the events;
  - embedded: the same app generating SmolLM2 in process (no deployment, micro-batched), for the
    engine-vs-embedded figures only (`--skip-embedded` leaves it out: at 32 clients it takes minutes).

Per level (`--concurrency` clients, each one request at a time, max(--requests, 4 x clients)
requests after a warm-up), all measured by the client threads, in a process of their own: the p50
of the time to the first piece of text (TTFT) and to the whole answer, requests/s and completion
tokens/s (the sum of `usage.completion_tokens` over the wall time). Within a repeat the variants run
one after another at each level (direct and gateway swap places every repeat, so drift hits both);
what the issue asks is derived within each repeat, then its median over `--repeats` is printed:
added latency = gateway p50 - direct p50 (TTFT and whole answer; goal: at most 5 ms), throughput =
gateway tokens/s / direct tokens/s (goal: at least 0.90), and the engine (direct) next to embedded:
tokens/s and TTFT.

The machine's cores are shared: engine, gateway and clients run on the same CPUs (2 cores on the
development machine), so the gateway's own work (parsing and re-sending each piece) competes with
the engine's decoding, and the figures include that contention; a gateway on its own host would add
less. A few milliseconds is also within the drift of a shared machine: read the added latency
against its spread over the repeats (`--out` keeps every run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.policy_gain import quiet
from bench.serve import served, streamed
from core.settings import AssistantSettings, Settings
from devtools.engine import LocalEngine
from registry.store import Deployment
from rlhf.commands.engine import engine_of
from trainers.base_models import SMOLLM2, resolve_base_model

DIRECT, GATEWAY, EMBEDDED = "direct", "gateway", "embedded"
ADDED_MS_GOAL = 5.0  # issue 35: gateway p50 - direct p50
THROUGHPUT_GOAL = 0.90  # issue 35: gateway tokens/s over direct tokens/s
Run = dict[str, float]


@contextmanager
def engine_serving(url: str | None) -> Iterator[str]:
    """The base URL of an engine serving SmolLM2 as `smollm2`: `url`, else the local one, started
    here (and stopped on exit) unless it already runs."""
    if url:
        yield url.rstrip("/")
        return
    engine = engine_of(Settings(), SMOLLM2)
    already = LocalEngine.running(engine.data_dir) is not None
    print(f"{'using' if already else 'starting'} vLLM on {engine.url} (log {engine.log_file}) ...", flush=True)
    took = engine.up()
    if not already:
        print(f"vLLM ready in {took:.0f} s", flush=True)
    try:
        yield engine.url
    finally:
        if not already:
            engine.down()


def derived(runs: Mapping[str, Run]) -> Run:
    """What the issue asks of one repeat at one level, from its variants' runs."""
    direct, gateway = runs[DIRECT], runs[GATEWAY]
    figures = {
        "added_ttft_ms": gateway["ttft_p50_ms"] - direct["ttft_p50_ms"],
        "added_whole_ms": gateway["whole_p50_ms"] - direct["whole_p50_ms"],
        "throughput_ratio": gateway["tokens_per_s"] / direct["tokens_per_s"],
    }
    if (embedded := runs.get(EMBEDDED)) is not None:
        figures["engine_over_embedded_tokens_per_s"] = direct["tokens_per_s"] / embedded["tokens_per_s"]
        figures["embedded_over_engine_ttft"] = embedded["ttft_p50_ms"] / direct["ttft_p50_ms"]
    return figures


def median_of(runs: list[Run]) -> Run:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    body = {"model": SMOLLM2, "temperature": args.temperature, "top_p": AssistantSettings().top_p}
    model_dir = Path(resolve_base_model(SMOLLM2))
    runs: dict[tuple[str, int], list[Run]] = {}  # (variant, clients): one run per repeat
    with ExitStack() as stack:
        engine_url = stack.enter_context(engine_serving(args.engine_url))
        deployed = {SMOLLM2: Deployment(engine_url, SMOLLM2, adapter=False)}
        urls = {
            DIRECT: engine_url,
            GATEWAY: stack.enter_context(served(model_dir, AssistantSettings(), version=SMOLLM2, deployed=deployed)),
        }
        if not args.skip_embedded:
            urls[EMBEDDED] = stack.enter_context(served(model_dir, AssistantSettings(), version=SMOLLM2))
        # The clients run in a process of their own: parsing 32 streams must not hold the gateway's GIL.
        clients_process = stack.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))

        def measure(variant: str, clients: int, requests: int) -> Run:
            cpu, wall = time.process_time(), time.perf_counter()
            job = clients_process.submit(streamed, urls[variant], clients, requests, args.max_tokens, args.max_tokens, body)
            result = job.result()
            # This process holds the gateway and the embedded server (the clients and the engine run
            # elsewhere): its CPU time over the run is theirs, as a share of one core.
            return {**result, "server_cores": (time.process_time() - cpu) / (time.perf_counter() - wall)}

        for variant in urls:
            measure(variant, 2, 4)  # warm-up: connections, lazy imports, the engine's prefix cache
        for repeat in range(args.repeats):
            order = [DIRECT, GATEWAY] if repeat % 2 == 0 else [GATEWAY, DIRECT]
            for clients in args.concurrency:
                requests = max(args.requests, 4 * clients)
                for variant in order + [v for v in urls if v not in order]:
                    result = measure(variant, clients, requests)
                    runs.setdefault((variant, clients), []).append(result)
                    print(
                        f"repeat {repeat + 1} clients {clients:>2} {variant:<8}  TTFT p50 {result['ttft_p50_ms']:7.0f} ms  "
                        f"whole p50 {result['whole_p50_ms']:7.0f} ms  {result['tokens_per_s']:6.1f} tokens/s  "
                        f"{result['rps']:5.2f} req/s  {result['tokens']:4.1f} tokens  "
                        f"this process {result['server_cores']:.2f} cores",
                        flush=True,
                    )
    levels = []
    for clients in args.concurrency:
        per_variant = {variant: runs[(variant, clients)] for variant in urls}
        per_repeat = [derived({v: r[n] for v, r in per_variant.items()}) for n in range(args.repeats)]
        levels.append(
            {
                "clients": clients,
                "requests": max(args.requests, 4 * clients),
                "median": {variant: median_of(r) for variant, r in per_variant.items()},
                "derived_median": median_of(per_repeat),
                "derived_runs": per_repeat,
                "runs": per_variant,
            }
        )
    return {
        "settings": {
            "engine_url": engine_url,
            "model": SMOLLM2,
            "max_tokens": args.max_tokens,
            "min_tokens": args.max_tokens,
            "sampling": body,
            "repeats": args.repeats,
            "torch_threads": args.threads,
            "cpus": os.cpu_count(),
            "embedded_device": "cuda" if torch.cuda.is_available() else "cpu",
        },
        "levels": levels,
    }


def report(figures: dict[str, Any]) -> None:
    s = figures["settings"]
    print(
        f"\nSmolLM2, median of {s['repeats']} repeats; every answer {s['max_tokens']} tokens, temperature "
        f"{s['sampling']['temperature']:g}, top_p {s['sampling']['top_p']:g}; engine {s['engine_url']}; "
        f"{s['cpus']} CPUs shared by engine, gateway and clients"
    )
    print(
        f"{'clients':>7} | {'direct TTFT / whole ms  tok/s':>29} | {'gateway TTFT / whole ms  tok/s':>30} | "
        f"{'added TTFT / whole ms':>21} | gateway/direct tok/s | goals (≤ {ADDED_MS_GOAL:g} ms, ≥ {THROUGHPUT_GOAL:.2f})"
    )
    for level in figures["levels"]:
        d, g, x = level["median"][DIRECT], level["median"][GATEWAY], level["derived_median"]
        met = x["added_ttft_ms"] <= ADDED_MS_GOAL and x["added_whole_ms"] <= ADDED_MS_GOAL
        print(
            f"{level['clients']:>7} | {d['ttft_p50_ms']:10.0f} / {d['whole_p50_ms']:7.0f} {d['tokens_per_s']:8.1f} | "
            f"{g['ttft_p50_ms']:11.0f} / {g['whole_p50_ms']:7.0f} {g['tokens_per_s']:8.1f} | "
            f"{x['added_ttft_ms']:9.1f} / {x['added_whole_ms']:9.1f} | {x['throughput_ratio']:20.3f} | "
            f"latency {'met' if met else 'missed'}, throughput {'met' if x['throughput_ratio'] >= THROUGHPUT_GOAL else 'missed'}"
        )
    if any(EMBEDDED in level["median"] for level in figures["levels"]):
        print(
            f"\n{'clients':>7} | {'engine TTFT ms  tok/s':>21} | {'embedded TTFT ms  tok/s':>23} | "
            "engine/embedded tok/s | embedded/engine TTFT"
        )
        for level in figures["levels"]:
            d, e, x = level["median"][DIRECT], level["median"][EMBEDDED], level["derived_median"]
            print(
                f"{level['clients']:>7} | {d['ttft_p50_ms']:13.0f} {d['tokens_per_s']:7.1f} | "
                f"{e['ttft_p50_ms']:15.0f} {e['tokens_per_s']:7.1f} | "
                f"{x['engine_over_embedded_tokens_per_s']:21.2f} | {x['embedded_over_engine_ttft']:20.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="clients per level")
    parser.add_argument("--requests", type=int, default=16, help="requests per level, at least 4 per client")
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens and min_tokens of every answer")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of every answer")
    parser.add_argument("--engine-url", help="an engine already serving `smollm2` (default: the local vLLM, started if need be)")
    parser.add_argument("--skip-embedded", action="store_true", help="leave out SmolLM2 generated in process")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the embedded variant")
    parser.add_argument("--out", type=Path, help="write the figures, every run included, to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    figures = benchmark(args)
    report(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
