"""Subcommands: `rlhf sink run`, `rlhf sql NAME`, `rlhf ab analyze`, `rlhf ab simulate`.

In embedded mode only one process may open the chdb path, and a running sink owns it: `sql` and
`ab analyze` ask that sink over HTTP (analytics.remote) and open the path themselves only when no
sink answers. With a ClickHouse server they query it directly. `sink run` is where the sink and the
dashboard meet: it opens the warehouse once and hands it to both. `ab simulate` needs no warehouse.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import urllib.parse
from contextlib import ExitStack

import pandas as pd

from analytics.errors import AnalyticsError
from core.settings import Settings
from rlhf.arguments import command, group, settings_of


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_of(args)
    if getattr(args, "port", None):
        settings = settings.model_copy(
            update={"clickhouse": settings.clickhouse.model_copy(update={"dashboard_port": args.port})}
        )
    return settings


def _sink_run(args: argparse.Namespace) -> None:
    from analytics.clickhouse import open_warehouse
    from consumers.sink.consumer import GROUP, Sink

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
    print(
        f"sink stopped: {stats.messages} messages in {stats.batches} batches, {stats.inserted} rows stored, "
        f"{stats.dead_letters} dead letters"
    )


def _parse_params(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise AnalyticsError(f"parameters are key=value, got {bad}")
    return dict(p.split("=", 1) for p in pairs)


def _sql(args: argparse.Namespace) -> None:
    from analytics.queries import QUERIES, get_query, run_query
    from analytics.remote import through_owner

    if args.name is None:
        for q in QUERIES.values():
            defaults = ", ".join(f"{k}={v!r}" for k, v in q.defaults.items())
            print(f"{q.name:26} {q.description}{f' [{defaults}]' if defaults else ''}")
        return
    params = _parse_params(args.param)
    get_query(args.name).bind(params)  # a typo fails here, before any connection
    path = f"/sql/{args.name}?{urllib.parse.urlencode(params)}"
    frame = through_owner(
        _settings(args),
        path,
        lambda j: pd.DataFrame(j["data"], columns=j["columns"]),
        lambda wh: run_query(wh, args.name, params),
    )
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", date_format="iso", date_unit="ms"))
    else:
        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            print(frame.to_string(index=False))


def _ab_analyze(args: argparse.Namespace) -> None:
    from analytics.decision import analyze, report
    from analytics.remote import ab_path, through_owner

    settings = _settings(args)
    ab = through_owner(
        settings, ab_path(args.experiment), lambda answer: answer, lambda wh: report(analyze(wh, settings, args.experiment))
    )
    if args.json:
        print(json.dumps(ab, indent=2))
        return
    if ab["decision"] == "no_data":
        print(f"{ab['experiment']}: no data yet (no exposed users and no feedback in the warehouse)")
        return
    for d in ab["decisions"]:
        p = d["primary"]
        print(d["summary"])
        print(
            f"  positive rate per user (CUPED variance x{_num(d['cuped_variance_ratio'])}): "
            f"{d['control']} {_interval(p['control'])} "
            f"n={_num(p['n_control'])} users, {d['treatment']} {_interval(p['treatment'])} n={_num(p['n_treatment'])} users; "
            f"lift {_interval(p['lift'])}; z-test p={_num(p['p_value'])}, always-valid p={_num(p['sequential_p'])}"
        )
        for g in d["guardrails"]:
            print(
                f"  guardrail {g['metric']}: {_interval(g['control'])} -> {_interval(g['treatment'])}, "
                f"always-valid p={_num(g['sequential_p'])}"
            )
        e = d["per_event"]
        print(
            f"  per event, descriptive only: {_num(e['n_control'])} / {_num(e['n_treatment'])} events, "
            f"z-test p={_num(e['p_value'])} "
            f"(ignores that one user's events are alike)"
        )
        print(
            f"  SRM: chi2={_num(d['srm']['chi2'])} p={_num(d['srm']['p_value'])} exposed users={d['srm']['observed']}; "
            f"detectable rise of the positive rate at this size: {_num(d['mde_abs'])}"
        )


_SIMULATE_HELP = """How often the A/B decision is wrong, and how large a lift it finds, on simulated traffic.

Simulated users have their own propensity to give positive feedback (Beta-distributed) and a
heavy-tailed number of feedback events (Zipf, capped), as real users do; some have pre-experiment
feedback (the CUPED covariate). Each experiment is put through the project's own per-user analysis
(analytics.decision, alpha and thresholds from ab_testing in the config) with no warehouse. It prints:
  - A/A (no effect): the share of experiments that promote or roll back, at one look (the last) and
    when decided after every batch of users (--peeks), for the per-user analysis and, on the same
    data, the per-event analysis that counts every event as independent;
  - power: the share promoted at --lift with --users users per arm;
  - the smallest lift promoted with 80% power at --users users per arm (bisection).
A progress bar counts the simulated experiments.
"""


def _ab_simulate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from analytics.simulate import SEARCH_STEPS, simulate, smallest_lift

    ab = settings_of(args).ab_testing
    runs = 3 + SEARCH_STEPS  # A/A, the given lift, the search's run at +100%, then its steps
    with tqdm(total=runs * args.experiments, unit="exp", desc="simulating") as bar:
        aa = simulate(args.experiments, args.users, 0.0, args.peeks, ab, args.seed, progress=bar.update)
        given = simulate(args.experiments, args.users, args.lift, args.peeks, ab, args.seed, progress=bar.update)
        smallest = smallest_lift(args.users, args.peeks, ab, args.seed, args.experiments, progress=bar.update)
    print(
        f"A/A: {aa.experiments} experiments, {aa.users} users per arm, {aa.peeks} looks, alpha {ab.alpha}; "
        "share with a promote or rollback"
    )
    for name, rates in (("per user (delta method, CUPED, mSPRT)", aa.per_user), ("per event (every event a unit)", aa.per_event)):
        print(f"  {name:40} {rates.one_look:7.2%} at one look, {rates.peeking:7.2%} peeking after every batch")
    print(
        f"power at lift {given.lift:+.1%} (realised {given.realised_lift:+.1%}), {given.users} users per arm: "
        f"{given.promoted.peeking:.1%} promoted while peeking ({given.promoted.one_look:.1%} at one look)"
    )
    if smallest.promoted.peeking >= 0.8:
        print(
            f"smallest lift promoted with 80% power at {smallest.users} users per arm: {smallest.lift:+.1%} "
            f"(realised {smallest.realised_lift:+.1%}, power {smallest.promoted.peeking:.1%})"
        )
    else:
        print(
            f"no lift up to +100% is promoted with 80% power at {smallest.users} users per arm "
            f"({smallest.promoted.peeking:.1%} at +100%)"
        )


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"  # None: NaN or infinite in the JSON form


def _interval(iv: dict[str, float | None]) -> str:
    return f"{_num(iv['estimate'])} [{_num(iv['low'])}, {_num(iv['high'])}]"


def register(sub: argparse._SubParsersAction) -> None:
    sink = group(sub, "sink", "ClickHouse sink: Kafka events into the analytics tables (serves the dashboard).")
    p = command(
        sink,
        "run",
        "Consume interactions, feedback, exposures, metrics, training status and publishes into ClickHouse.",
        _sink_run,
        log_level=logging.WARNING,
    )
    p.add_argument(
        "--no-dashboard",
        action="store_true",
        help="Do not serve the dashboard and /sql (sensible with a ClickHouse server, which other processes query directly).",
    )
    p.add_argument("--port", type=int, help="Dashboard port (default: clickhouse.dashboard_port).")
    p.add_argument("--verbose", "-v", dest="log_level", action="store_const", const=logging.INFO, help="Log every batch.")

    p = command(sub, "sql", "Run a named analytics query (no NAME: list them).", _sql)
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="Query parameter; repeatable.")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--port", type=int, help="Port of a running sink to ask (default: clickhouse.dashboard_port).")

    ab = group(sub, "ab", "A/B experiment analysis.")
    p = command(
        ab,
        "analyze",
        "Per-user statistics and the promote / rollback / keep-running decision for the configured experiment.",
        _ab_analyze,
    )
    p.add_argument("--json", action="store_true", help="Print the report as JSON (what /api/ab serves and the decider reads).")
    p.add_argument(
        "--experiment", help="Experiment name (default: ab_testing.experiment, or its latest `<experiment>:<candidate>`)."
    )
    p.add_argument("--port", type=int, help="Port of a running sink to ask (default: clickhouse.dashboard_port).")

    p = command(
        ab,
        "simulate",
        _SIMULATE_HELP.split("\n\n", 1)[0],
        _ab_simulate,
        epilog=_SIMULATE_HELP.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--experiments", type=int, default=2000, help="Simulated experiments per run (default 2000); rates move by ~1/sqrt of it."
    )
    p.add_argument("--users", type=int, default=500, help="Users per arm at the last look (default 500).")
    p.add_argument(
        "--lift",
        type=float,
        default=0.1,
        help="Relative lift of the treated users' positive propensity for the power run (default 0.1 = +10%%).",
    )
    p.add_argument(
        "--peeks",
        type=int,
        default=10,
        help="Looks per experiment: users arrive in this many equal batches, decided after each (default 10).",
    )
    p.add_argument("--seed", type=int, default=0, help="Random seed; the same seed gives the same figures (default 0).")
