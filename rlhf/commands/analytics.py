"""Subcommands: `rlhf sink run`, `rlhf sql NAME`, `rlhf ab analyze`.

In embedded mode only one process may open the chdb path, and a running sink owns it: `sql` and
`ab analyze` ask that sink over HTTP (`clickhouse.dashboard_host:dashboard_port`) and open the
path themselves only when no sink answers. With a ClickHouse server they query it directly.
`sink run` is where the sink and the dashboard meet: it opens the warehouse once and hands it to both.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar

import pandas as pd

from analytics.errors import AnalyticsError
from rlhf.arguments import command, group, settings_of
from core.settings import Settings

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_of(args)
    if getattr(args, "port", None):
        settings = settings.model_copy(update={"clickhouse": settings.clickhouse.model_copy(update={"dashboard_port": args.port})})
    return settings


def ask_sink(settings: Settings, path: str) -> Any | None:
    """JSON from the running sink's HTTP endpoint, or None when no sink listens there."""
    url = f"http://{settings.clickhouse.dashboard_host}:{settings.clickhouse.dashboard_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise AnalyticsError(f"sink at {url}: {json.loads(exc.read() or b'{}').get('error', exc.reason)}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        raise AnalyticsError(f"sink at {url}: {exc.reason}") from None


def through_owner(settings: Settings, path: str, remote: Callable[[Any], T], local: Callable[[Any], T]) -> T:
    """Ask the sink when it owns the embedded database, else open the warehouse here."""
    from analytics.clickhouse import mode_of, open_warehouse

    if mode_of(settings) == "chdb":
        answer = ask_sink(settings, path)
        if answer is not None:
            return remote(answer)
    warehouse = open_warehouse(settings)
    try:
        return local(warehouse)
    finally:
        warehouse.close()


def _sink_run(args: argparse.Namespace) -> None:
    from analytics.clickhouse import open_warehouse
    from consumers.sink.consumer import GROUP, Sink

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    settings = _settings(args)
    # Set before anything opens, so a stop during start-up still ends in a clean, committed exit.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ExitStack() as started:
        warehouse = open_warehouse(settings)
        started.callback(warehouse.close)
        if not args.no_dashboard:
            from analytics.dashboard import serve_dashboard

            # Embedded chdb admits one process per path: the dashboard and /sql share the sink's warehouse.
            server = serve_dashboard(warehouse, settings)
            started.callback(server.stop)
            print(f"dashboard: {server.url}", flush=True)
        sink = Sink(settings, warehouse)
        print(f"sink: group {GROUP!r} on {settings.kafka.bootstrap_servers}, ClickHouse {warehouse.mode}", flush=True)
        sink.run(stop)
    stats = sink.stats
    print(f"sink stopped: {stats.messages} messages in {stats.batches} batches, {stats.inserted} rows stored, {stats.dead_letters} dead letters")


def _parse_params(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise AnalyticsError(f"parameters are key=value, got {bad}")
    return dict(p.split("=", 1) for p in pairs)


def _sql(args: argparse.Namespace) -> None:
    from analytics.queries import QUERIES, get_query, run_query

    if args.name is None:
        for q in QUERIES.values():
            params = ", ".join(f"{k}={v!r}" for k, v in q.defaults.items())
            print(f"{q.name:26} {q.description}{f' [{params}]' if params else ''}")
        return
    params = _parse_params(args.param)
    get_query(args.name).bind(params)  # a typo fails here, before any connection
    path = f"/sql/{args.name}?{urllib.parse.urlencode(params)}"
    frame = through_owner(_settings(args), path, lambda j: pd.DataFrame(j["data"], columns=j["columns"]),
                          lambda wh: run_query(wh, args.name, params))  # fmt: skip
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", date_format="iso", date_unit="ms"))
    else:
        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            print(frame.to_string(index=False))


def _ab_analyze(args: argparse.Namespace) -> None:
    from analytics.decision import analyze, report

    settings = _settings(args)
    path = "/api/ab" + (f"?{urllib.parse.urlencode({'experiment': args.experiment})}" if args.experiment else "")
    decisions = through_owner(settings, path, lambda j: j["decisions"], lambda wh: report(analyze(wh, settings, args.experiment))["decisions"])
    if args.json:
        print(json.dumps(decisions, indent=2))
        return
    for d in decisions:
        p = d["primary"]
        print(d["summary"])
        print(f"  positive rate: {d['control']} {_interval(p['control'])} n={p['n_control']}, "
              f"{d['treatment']} {_interval(p['treatment'])} n={p['n_treatment']}; lift {_interval(p['lift'])}; "
              f"z-test p={_num(p['p_value'])}, always-valid p={_num(p['sequential_p'])}")  # fmt: skip
        for g in d["guardrails"]:
            print(f"  guardrail {g['metric']}: {_interval(g['control'])} -> {_interval(g['treatment'])}, always-valid p={_num(g['sequential_p'])}")
        print(f"  SRM: chi2={_num(d['srm']['chi2'])} p={_num(d['srm']['p_value'])} users={d['srm']['observed']}; "
              f"detectable rise of the positive rate at this size: {_num(d['mde_abs'])}")  # fmt: skip


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"  # None: NaN or infinite in the JSON form


def _interval(iv: dict[str, float | None]) -> str:
    return f"{_num(iv['estimate'])} [{_num(iv['low'])}, {_num(iv['high'])}]"


def register(sub: argparse._SubParsersAction) -> None:
    sink = group(sub, "sink", "ClickHouse sink: Kafka events into the analytics tables (serves the dashboard).")
    p = command(sink, "run", "Consume interactions, feedback, exposures, metrics, training status and publishes into ClickHouse.", _sink_run)
    p.add_argument("--no-dashboard", action="store_true", help="Do not serve the dashboard and /sql (sensible with a ClickHouse server, which other processes query directly).")
    p.add_argument("--port", type=int, help="Dashboard port (default: clickhouse.dashboard_port).")
    p.add_argument("--verbose", "-v", action="store_true", help="Log every batch.")

    p = command(sub, "sql", "Run a named analytics query (no NAME: list them).", _sql)
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="Query parameter; repeatable.")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--port", type=int, help="Port of a running sink to ask (default: clickhouse.dashboard_port).")

    ab = group(sub, "ab", "A/B experiment analysis.")
    p = command(ab, "analyze", "Statistics and the promote / rollback / keep-running decision for the configured experiment.", _ab_analyze)
    p.add_argument("--json", action="store_true", help="Print the decisions as JSON.")
    p.add_argument("--experiment", help="Experiment name (default: ab_testing.experiment, or its latest `<experiment>:<candidate>`).")
    p.add_argument("--port", type=int, help="Port of a running sink to ask (default: clickhouse.dashboard_port).")
