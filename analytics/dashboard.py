"""The dashboard and the named-SQL endpoint, served by the process that owns the warehouse (the sink).

Routes:
    GET /                  HTML page: feedback volume, positive rate by variant, positive rate on
                           first turns vs follow-ups per model version, A/B results and decision,
                           experiments (open and decided, with their intervals), training runs
                           (reward / KL), the per-day materialized view
    GET /sql/{name}?k=v    a named query (analytics.queries) as JSON {"columns": [...], "data": [[...]]}
    GET /api/queries       the named queries with their parameters
    GET /                  ?experiment=NAME shows that experiment (default: the current one)
    GET /api/ab            ?experiment=NAME: analytics.decision.report as JSON, {"experiment",
                           "decision" (promote | rollback | keep_running | no_data), "reason",
                           "users": {variant: exposed users}, "statistics": {name: number}, "decisions": [...]}
    GET /healthz           {"status": "ok", "mode": "chdb" | "server"}: the only route without a key

With `clickhouse.dashboard_keys`, every other route takes `Authorization: Bearer KEY` or `?key=KEY`;
listening beyond loopback without one is refused at start (core/access.py). Errors follow the
project's one policy (core/web.py) as `{"error": message}`: a bad parameter is a 400 naming it, an
unknown query a 404, anything unexpected a 500 with an id that is in the log.

Plots are server-rendered inline SVG, so the page works offline and needs no JavaScript.
"""

from __future__ import annotations

import html
import socket
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

import pandas as pd
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from analytics.clickhouse import Warehouse
from analytics.decision import Decision, analyze, current_experiment, report
from analytics.errors import AnalyticsError, ClickHouseError, UnknownQueryError
from analytics.queries import MAX_TEXT_PARAMETER, PARAMETER_BOUNDS, QUERIES, run_query
from core.access import WWW_AUTHENTICATE, ApiKeys, bearer, require_keys_beyond_loopback
from core.settings import Settings
from core.web import error_responses, install_error_policy

# Time buckets the page may pick; it takes the smallest giving at most ~60 bars over the data's span.
_BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400)


def bucket_for(span_s: float) -> int:
    return next((b for b in _BUCKETS_S if span_s / b <= 60), _BUCKETS_S[-1])


def _duration(seconds: int) -> str:
    return (
        f"{seconds // 86_400} d" if seconds >= 86_400 else f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min"
    )


class ErrorReply(BaseModel):
    """An error of the dashboard's routes."""

    error: str


def render_error(_path: str, _status: int, message: str) -> dict[str, str]:
    return {"error": message}


def frame_json(frame: pd.DataFrame) -> Response:
    # pandas writes NaN as null and timestamps as ISO strings, which strict JSON needs.
    return Response(frame.to_json(orient="split", index=False, date_format="iso", date_unit="ms"), media_type="application/json")


def create_app(warehouse: Warehouse, settings: Settings) -> FastAPI:
    keys = ApiKeys(settings.clickhouse.dashboard_keys)
    require_keys_beyond_loopback(settings.clickhouse.dashboard_host, keys, "clickhouse.dashboard_keys")

    def key_holder(request: Request) -> None:
        """A browser cannot set a header on a link: the key may come as `?key=` too."""
        if not keys.open and not keys.matches(bearer(request) or request.query_params.get("key")):
            raise HTTPException(
                401,
                "missing or invalid dashboard key: send `Authorization: Bearer <key>` or `?key=<key>`",
                headers=WWW_AUTHENTICATE,
            )

    app = FastAPI(title="rlhf-stream analytics", docs_url=None, redoc_url=None)
    private = APIRouter(dependencies=[Depends(key_holder)], responses=error_responses(ErrorReply, 400, 401))

    # A warehouse that fails is the server's fault (500, logged with an id), a bad name or parameter the client's.
    install_error_policy(app, render_error, statuses={UnknownQueryError: 404, ClickHouseError: 500, AnalyticsError: 400})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "mode": warehouse.mode, "database": warehouse.database}

    @private.get("/api/queries")
    def queries() -> list[dict[str, Any]]:
        return [{"name": q.name, "description": q.description, "parameters": dict(q.defaults)} for q in QUERIES.values()]

    @private.get("/sql/{name}", responses=error_responses(ErrorReply, 404))
    def sql(
        name: Annotated[str, Path(json_schema_extra={"enum": sorted(QUERIES)})],
        request: Request,
        # Declared for the OpenAPI schema (clients, schemathesis); every parameter given is passed on and bound below.
        bucket_s: Annotated[int | None, Query(ge=PARAMETER_BOUNDS["bucket_s"][0], le=PARAMETER_BOUNDS["bucket_s"][1])] = None,
        limit: Annotated[int | None, Query(ge=PARAMETER_BOUNDS["limit"][0], le=PARAMETER_BOUNDS["limit"][1])] = None,
        experiment: Annotated[str | None, Query(max_length=MAX_TEXT_PARAMETER)] = None,
        user: Annotated[str | None, Query(max_length=MAX_TEXT_PARAMETER)] = None,
        conversation: Annotated[str | None, Query(max_length=MAX_TEXT_PARAMETER)] = None,
    ) -> Response:
        """The named query's rows; it takes the parameters `/api/queries` lists for it (others are a 400)."""
        return frame_json(run_query(warehouse, name, {k: v for k, v in request.query_params.items() if k != "key"}))

    @private.get("/api/ab")
    def ab(experiment: str | None = None) -> dict[str, Any]:
        return report(analyze(warehouse, settings, experiment))

    @private.get("/", response_class=HTMLResponse)
    def page(experiment: str | None = None) -> str:
        return render_page(warehouse, settings, experiment)

    app.include_router(private)
    return app


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    rows: int
    body: str  # HTML
    wide: bool = False


def _panel_html(p: Panel) -> str:
    body = p.body if p.rows else '<p class="empty">no data yet</p>'
    wide = " wide" if p.wide else ""
    return (
        f'<section class="panel{wide}" data-panel="{p.name}" data-rows="{p.rows}"><h2>{html.escape(p.title)}</h2>{body}</section>'
    )


def _table(frame: pd.DataFrame, max_rows: int = 30) -> str:
    return str(frame.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0, classes="data"))


def _decision_html(decisions: tuple[Decision, ...]) -> str:
    items = []
    for d in decisions:
        p, (down, rating), e = d.primary, d.guardrails, d.per_event
        items.append(
            f'<div class="decision {d.action}"><b>{html.escape(d.treatment)} vs {html.escape(d.control)}: '
            f"{d.action.replace('_', ' ')}</b>"
            f" &mdash; {html.escape('; '.join(d.reasons))}<br>"
            f"per user: positive rate {p.control.estimate:.3f} &rarr; {p.treatment.estimate:.3f} "
            f"({p.n_control:.0f} / {p.n_treatment:.0f} users), "
            f"lift {p.lift.estimate:+.1%} [{p.lift.low:+.1%}, {p.lift.high:+.1%}], z-test p={p.p_value:.3g}, "
            f"always-valid p={p.sequential_p:.3g}, "
            f"CUPED variance &times;{d.cuped_variance_ratio:.2f}; "
            f"thumbs-down {down.control.estimate:.3f} &rarr; {down.treatment.estimate:.3f} "
            f"(p={down.sequential_p:.3g}); mean rating {rating.control.estimate:.2f} &rarr; {rating.treatment.estimate:.2f} "
            f"(p={rating.sequential_p:.3g}); SRM p={d.srm.p_value:.3g}; detectable rise {d.mde_abs:.3f}. "
            f"Per event (descriptive, ignores users): {e.n_control:.0f} / {e.n_treatment:.0f} events, "
            f"z-test p={e.p_value:.3g}</div>"
        )
    return "".join(items)


def build_panels(warehouse: Warehouse, settings: Settings, experiment: str | None = None) -> list[Panel]:
    from analytics import plots  # matplotlib is only needed when a page is rendered

    experiment = experiment or current_experiment(warehouse, settings.ab_testing)
    span = run_query(warehouse, "time_span").iloc[0]
    bucket = bucket_for((span["last"] - span["first"]).total_seconds()) if span["rows"] else 3600
    volume = run_query(warehouse, "feedback_volume", {"bucket_s": bucket})
    rate = run_query(warehouse, "positive_rate_over_time", {"experiment": experiment, "bucket_s": bucket})
    by_turn = run_query(warehouse, "positive_rate_by_turn")
    decisions = analyze(warehouse, settings, experiment)
    exposed = sum(decisions[0].srm.observed.values()) if decisions else 0  # users exposed, over all variants
    lifecycle = run_query(warehouse, "experiment_lifecycle")
    runs = run_query(warehouse, "training_runs")
    curve = run_query(warehouse, "training_curve")
    daily = run_query(warehouse, "variant_daily", {"experiment": experiment})
    lag = run_query(warehouse, "consumer_lag")
    letters = run_query(warehouse, "dead_letters_by_topic")
    pii = run_query(warehouse, "pii_found", {"bucket_s": bucket})
    return [
        Panel(
            "feedback_volume",
            f"Feedback volume (per {_duration(bucket)})",
            len(volume),
            plots.feedback_volume(volume, bucket) if len(volume) else "",
        ),
        Panel(
            "positive_rate",
            f"Positive rate over time by variant ({experiment})",
            len(rate),
            plots.positive_rate(rate, bucket) if len(rate) else "",
        ),
        Panel(
            "positive_rate_by_turn",
            "Positive rate on first turns and on follow-ups, per model version and variant",
            len(by_turn),
            plots.positive_rate_by_turn(by_turn) + _table(by_turn) if len(by_turn) else "",
        ),
        Panel(
            "ab_results",
            f"A/B results per user: {experiment}",
            exposed,
            plots.ab_intervals(decisions, settings.ab_testing.alpha) + _decision_html(decisions) if exposed else "",
        ),
        Panel(
            "experiments",
            "Experiments: open, and decided with the lift they were decided on",
            len(lifecycle),
            (plots.experiment_lifts(lifecycle) if lifecycle["lift"].notna().any() else "") + _table(lifecycle)
            if len(lifecycle)
            else "",
        ),
        Panel(
            "training_runs",
            "Training runs: reward and KL",
            len(runs),
            (plots.training(curve) if len(curve) else "") + _table(runs) if len(runs) else "",
        ),
        Panel("consumer_lag", "Consumer lag per group and topic (sampled by the sink)", len(lag), _table(lag)),
        Panel("dead_letters", "Dead letters per DLQ and origin topic", len(letters), _table(letters)),
        Panel(
            "pii_found",
            f"PII found in feedback per type (per {_duration(bucket)}; privacy.mode {settings.privacy.mode})",
            len(pii),
            _table(pii.pivot_table(index="bucket", columns="pii_type", values="found", aggfunc="sum", fill_value=0).reset_index())
            if len(pii)
            else "",
        ),
        Panel(
            "variant_daily",
            "Per experiment, variant, model version and day (materialized view)",
            len(daily),
            _table(daily),
            wide=True,
        ),
    ]


_STYLE = """
body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(620px, 1fr)); gap: 16px; }
.panel { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; overflow: auto; }
.panel.wide { grid-column: 1 / -1; }
.panel h2 { font-size: 15px; margin: 4px 0 8px; }
.panel svg { width: 100%; height: auto; }
table.data { border-collapse: collapse; font-size: 11px; }
table.data td, table.data th { padding: 2px 6px; border-bottom: 1px solid #eee; }
.decision { font-size: 12px; margin: 6px 0; padding: 6px; border-left: 5px solid #757575; background: #f5f5f5; }
.decision.promote { border-color: #2e7d32; } .decision.rollback { border-color: #c62828; }
.empty { color: #999; }
"""


def render_page(warehouse: Warehouse, settings: Settings, experiment: str | None = None) -> str:
    started = time.perf_counter()
    panels = build_panels(warehouse, settings, experiment)
    took = time.perf_counter() - started
    about = f"ClickHouse {warehouse.mode}, database {html.escape(warehouse.database)}; rendered in {took:.2f} s."
    return panels_page(panels, about)


def panels_page(panels: list[Panel], about: str) -> str:
    """The dashboard's page around its panels; `about` (HTML) says where the figures came from."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf-stream analytics</title><style>{_STYLE}</style></head>"
        f"<body><h1>rlhf-stream analytics</h1><p>{about} Named queries: <a href='/api/queries'>/api/queries</a>.</p>"
        f"<main>{''.join(_panel_html(p) for p in panels)}</main></body></html>"
    )


@dataclass
class DashboardServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_dashboard(warehouse: Warehouse, settings: Settings, port: int | None = None) -> DashboardServer:
    """Serve the app from a daemon thread of this process; returns once it accepts connections."""
    host = settings.clickhouse.dashboard_host
    port = settings.clickhouse.dashboard_port if port is None else port
    # Bind here so a taken port fails now, in this thread, with a clear message.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AnalyticsError(f"dashboard cannot listen on {host}:{port}: {exc} (set clickhouse.dashboard_port)") from None
    server = uvicorn.Server(uvicorn.Config(create_app(warehouse, settings), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise AnalyticsError(f"dashboard on {host}:{port} failed to start")
        time.sleep(0.02)
    return DashboardServer(server, thread, f"http://{host}:{sock.getsockname()[1]}")
