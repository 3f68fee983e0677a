"""The Grafana dashboard for ClickHouse-server users, generated from the named queries so the two
never drift. The committed file is docker/grafana/rlhf-analytics.json; regenerate it with

    python -m analytics.grafana > docker/grafana/rlhf-analytics.json

Grafana's ClickHouse plugin has no server-side parameters, so each `{name:Type}` placeholder
becomes a dashboard variable or macro: experiment -> '${experiment}' (a drop-down of the
`experiments` query), bucket_s -> $__interval_s, anything else -> its default. The A/B decision
itself (statistics in Python) is only on the built-in dashboard and `rlhf ab analyze`; Grafana
shows the per-user sums behind it (`ab_users`) and the decisions made (`experiment_lifecycle`).
Consumer lag and dead letters are not in ClickHouse, so not here either. docker/compose.yaml's
Grafana provisions it with the data source of docker/grafana/datasource.yaml.
"""

from __future__ import annotations

import json
import re
from typing import Any

from analytics.queries import get_query

DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "${DS_CLICKHOUSE}"}
_TIME_SERIES, _TABLE = 0, 1  # the plugin's `format` values

# (query, title, panel type, width, height); laid out left to right, wrapping at 24 columns.
PANELS: tuple[tuple[str, str, str, int, int], ...] = (
    ("feedback_volume", "Feedback volume by type", "timeseries", 12, 8),
    ("positive_rate_over_time", "Positive rate over time by variant", "timeseries", 12, 8),
    ("positive_rate_by_turn", "Positive rate on first turns vs follow-ups, per model version and variant", "table", 24, 6),
    ("ab_users", "A/B per-user sums per variant (inputs of the decision)", "table", 24, 6),
    ("experiment_lifecycle", "Experiments: open, and decided with their lift and interval", "table", 24, 8),
    ("training_curve", "Training runs: reward and KL", "timeseries", 12, 8),
    ("training_runs", "Training runs", "table", 12, 8),
    ("variant_daily", "Per experiment, variant, model version and day (materialized view)", "table", 24, 9),
    ("model_versions", "Published model versions", "table", 24, 6),
    ("pii_found", "PII found in feedback per type", "timeseries", 24, 6),
)


def grafana_sql(name: str) -> str:
    query = get_query(name)

    def substitute(match: re.Match[str]) -> str:
        param = match.group(1)
        if param == "experiment":
            return "'${experiment}'"
        if param == "bucket_s":
            return "$__interval_s"
        return str(query.defaults[param])

    body = "\n".join(line.strip() for line in query.sql.strip().splitlines())
    return re.sub(r"\{(\w+):[^}]+\}", substitute, body)


def _panel(panel_id: int, name: str, title: str, kind: str, pos: dict[str, int]) -> dict[str, Any]:
    target = {
        "datasource": DATASOURCE,
        "editorType": "sql",
        "queryType": "sql",
        "refId": "A",
        "rawSql": grafana_sql(name),
        "format": _TIME_SERIES if kind == "timeseries" else _TABLE,
    }
    return {
        "id": panel_id,
        "type": kind,
        "title": title,
        "description": get_query(name).description,
        "datasource": DATASOURCE,
        "gridPos": pos,
        "targets": [target],
    }


def dashboard() -> dict[str, Any]:
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, (name, title, kind, width, height) in enumerate(PANELS, start=1):
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(panel_id, name, title, kind, {"x": x, "y": y, "w": width, "h": height}))
        x, row_height = x + width, max(row_height, height)
    return {
        "title": "rlhf-stream analytics",
        "uid": "rlhf-stream-analytics",
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-7d", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                # The data source is a variable, not an import-time input: a provisioned dashboard
                # (docker/grafana/dashboards.yaml) gets no import step, and this resolves either way.
                {
                    "name": "DS_CLICKHOUSE",
                    "label": "ClickHouse",
                    "type": "datasource",
                    "query": "grafana-clickhouse-datasource",
                    "current": {},
                },
                # The assistant starts one experiment per candidate (`policy-ab:<version>`): offer them, latest first.
                {
                    "name": "experiment",
                    "label": "experiment",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": f"SELECT experiment FROM ({grafana_sql('experiments')})",
                    "refresh": 2,
                    "sort": 0,
                    "current": {},
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
