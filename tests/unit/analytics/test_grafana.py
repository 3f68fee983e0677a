import json
from pathlib import Path

from analytics.grafana import PANELS, dashboard, grafana_sql, render

COMMITTED = Path(__file__).resolve().parents[3] / "docker" / "grafana" / "rlhf-analytics.json"


def test_committed_dashboard_is_generated_from_the_named_queries():
    assert COMMITTED.read_text() == render(), "regenerate: python -m analytics.grafana > docker/grafana/rlhf-analytics.json"


def test_placeholders_become_grafana_variables():
    sql = grafana_sql("positive_rate_over_time")
    assert "'${experiment}'" in sql and "$__interval_s" in sql and "{experiment:" not in sql
    assert "LIMIT 20" in grafana_sql("training_runs")


def test_panels_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        p = panel["gridPos"]
        mine = {(x, y) for x in range(p["x"], p["x"] + p["w"]) for y in range(p["y"], p["y"] + p["h"])}
        assert not cells & mine and p["x"] + p["w"] <= 24
        cells |= mine
    assert len(json.loads(render())["panels"]) == len(PANELS)


def test_the_data_source_is_a_variable_so_a_provisioned_dashboard_resolves_it():
    board = dashboard()
    variables = [v["name"] for v in board["templating"]["list"]]
    assert "__inputs" not in board and variables.index("DS_CLICKHOUSE") < variables.index("experiment")
    assert board["templating"]["list"][0]["query"] == "grafana-clickhouse-datasource"
