"""Analytics from any process, whoever owns the warehouse.

With a ClickHouse server (`clickhouse.url`) any process may connect, so the work is done here.
Embedded chdb admits one process per path and a running sink owns it: other processes ask the
sink's dashboard over HTTP (`clickhouse.dashboard_host:dashboard_port`), which serves the same
JSON from the same code.

    ab_report(settings, "policy-ab:assistant-v7")   # analytics.decision.report's JSON, or OwnerUnreachableError
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from analytics.clickhouse import Warehouse, mode_of, open_warehouse
from analytics.decision import analyze, report
from analytics.errors import AnalyticsError, OwnerUnreachableError
from core.settings import Settings

T = TypeVar("T")


def ask_owner(settings: Settings, path: str, timeout_s: float = 120.0) -> Any:
    """JSON from the sink's dashboard; OwnerUnreachableError when nothing answers there."""
    c = settings.clickhouse
    url = f"http://{c.dashboard_host}:{c.dashboard_port}{path}"
    keys = {"Authorization": f"Bearer {c.dashboard_keys[0].get_secret_value()}"} if c.dashboard_keys else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=keys), timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:  # it answered, with an error of ours (analytics.dashboard) or a refusal
        body = json.loads(exc.read() or b"{}")
        raise AnalyticsError(f"sink at {url}: {body.get('error') or body.get('detail') or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OwnerUnreachableError(
            f"no sink answers at {url} ({reason}); with embedded ClickHouse only the sink's process may open the "
            "database: start `rlhf sink run` (it serves the dashboard there), or set clickhouse.url to a ClickHouse server"
        ) from None


def through_owner(settings: Settings, path: str, remote: Callable[[Any], T], local: Callable[[Warehouse], T]) -> T:
    """Ask the sink when it may own the embedded database; open the warehouse here with a server,
    or when no sink answers (then no process holds the path)."""
    if mode_of(settings) == "chdb":
        try:
            return remote(ask_owner(settings, path))
        except OwnerUnreachableError:
            pass
    return _here(settings, local)


def _here(settings: Settings, work: Callable[[Warehouse], T]) -> T:
    warehouse = open_warehouse(settings)
    try:
        return work(warehouse)
    finally:
        warehouse.close()


def ab_path(experiment: str | None) -> str:
    return "/api/ab" + (f"?{urllib.parse.urlencode({'experiment': experiment})}" if experiment else "")


def ab_report(settings: Settings, experiment: str) -> dict[str, Any]:
    """analytics.decision.report for one experiment: computed here with a ClickHouse server, else
    asked of the sink, never by opening the embedded path (a long-running caller would hold it)."""
    if mode_of(settings) == "chdb":
        answer: dict[str, Any] = ask_owner(settings, ab_path(experiment))
        return answer
    return _here(settings, lambda warehouse: report(analyze(warehouse, settings, experiment)))
