"""The dashboard served by the sink: events of an experiment lasting minutes, as in `rlhf demo`, go
through Kafka and the sink, the page is opened in headless Chromium, every panel renders with data,
the time axes span those minutes, no text or legend covers another, and the screenshot is kept as
an artifact (artifacts/dashboard.png). On a brand-new warehouse the page, /api/ab and `rlhf ab
analyze` say "no data yet"."""

import re
from datetime import datetime, timedelta

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from matplotlib import image
from pydantic import SecretStr

from analytics import plots
from analytics.dashboard import Panel, bucket_for, create_app, panels_page
from core.errors import ConfigError
from devtools.kafka_local import free_port
from tests.integration.analytics.conftest import SinkProcess, produce, rlhf
from tests.integration.analytics.world import START, build_world, compress
from tests.integration.browser import ARTIFACTS, LAYOUT, DevTools, need_chromium

pytestmark = pytest.mark.integration

# Not at midnight: there matplotlib would tick the date, not the time.
DEMO_START, DEMO_SPAN = START + timedelta(hours=14, minutes=15), timedelta(minutes=6)
PLOTTED = ("feedback_volume", "positive_rate", "positive_rate_by_turn", "ab_results", "experiments", "training_runs")
PANELS = (
    "feedback_volume",
    "positive_rate",
    "positive_rate_by_turn",
    "ab_results",
    "experiments",
    "training_runs",
    "consumer_lag",
    "dead_letters",
    "pii_found",
    "variant_daily",
)


@pytest.fixture
def running_sink(settings):
    world = compress(build_world(settings, users=400), DEMO_START, DEMO_SPAN)
    produce(settings, world, bad=3)  # undecodable records: the dead-letter panel has rows (the sink's 2; the feedback one
    # is the stream worker's to dead-letter, which is not running here)
    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        sink.wait_counts(
            {
                "feedback": world.count("feedback"),
                "training_status": world.count("training-status"),
                "experiments": world.count("experiments"),
                "dead_letters": 2,
            }
        )
        yield sink
    finally:
        sink.stop()


def test_dashboard_panels_render_with_data_in_headless_chromium(running_sink, tmp_path):
    page = running_sink.get("/").decode()
    rows = dict(re.findall(r'data-panel="(\w+)" data-rows="(\d+)"', page))
    assert set(rows) == set(PANELS) and all(int(n) > 0 for n in rows.values()), rows
    assert page.count("<svg") >= 4 and "no data yet" not in page
    assert "promote" in page  # the A/B panel shows the decision
    ab = running_sink.get_json("/api/ab")
    assert ab["decision"] == "promote" and set(ab["users"]) == {"control", "variant_a"} and min(ab["users"].values()) > 150
    assert ab["statistics"]["lift_low"] > 0 and ab["statistics"]["users_treatment"] == ab["users"]["variant_a"]
    assert running_sink.get_json("/api/ab?experiment=policy-ab:unknown")["decision"] == "no_data"
    for query in ("training_runs", "training_curve"):  # the training panel reads the keys PPO really reports
        frame = running_sink.get_json(f"/sql/{query}")
        for column in ("reward", "kl"):
            values = [row[frame["columns"].index(column)] for row in frame["data"]]
            assert values and None not in values, (query, column, frame)

    need_chromium()
    browser = DevTools(tmp_path / "chromium-profile", window=(1400, 1000))
    try:
        session = browser.open(running_sink.url + "/")
        plots = {p["where"]: p for p in browser.evaluate(session, LAYOUT)}
        page_width, view_width = browser.evaluate(session, "[document.scrollingElement.scrollWidth, window.innerWidth]")
        browser.screenshot(session, ARTIFACTS / "dashboard.png", full_page=True)
    finally:
        browser.close()

    assert set(PLOTTED) <= set(plots) and page_width <= view_width
    for name in PLOTTED:
        assert plots[name]["box"]["width"] > 400 and plots[name]["box"]["height"] > 150, (name, plots[name]["box"])
        assert plots[name]["overlaps"] == [] and plots[name]["covering"] == [], (name, plots[name])
    span = running_sink.get_json("/sql/time_span")["data"][0]
    bucket = bucket_for((datetime.fromisoformat(span[1]) - datetime.fromisoformat(span[0])).total_seconds())
    assert bucket == 60  # minutes of data: minute bars
    volume = running_sink.get_json(f"/sql/feedback_volume?bucket_s={bucket}")["data"]
    rate = running_sink.get_json(f"/sql/positive_rate_over_time?bucket_s={bucket}&experiment={ab['experiment']}")["data"]
    for name, rows in (("feedback_volume", volume), ("positive_rate", rate)):
        buckets = [datetime.fromisoformat(row[0]) for row in rows]
        first, end = min(buckets), max(buckets) + timedelta(seconds=bucket)
        (ticks,), (offsets,) = plots[name]["xticks"], plots[name]["offsets"]
        # Clock times of the data's day (the date once, beside the axis), all within the plotted buckets.
        assert len(ticks) >= 3 and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", t) for t in ticks), (name, ticks)
        times = [
            datetime.combine(DEMO_START.date(), datetime.strptime(t, "%H:%M:%S" if t.count(":") == 2 else "%H:%M").time())
            for t in ticks
        ]
        assert times == sorted(times) and first <= times[0] and times[-1] <= end, (name, ticks, first, end)
        assert f"{DEMO_START:%Y-%b-%d}" in offsets, (name, offsets)

    pixels = image.imread(ARTIFACTS / "dashboard.png")
    assert pixels.shape[0] >= 1800 and pixels.shape[1] >= 1300
    # Plots put many distinct colours on screen; a blank or error page has a handful.
    colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 200, f"{len(colours)} colours: the page looks empty"


def test_time_axes_keep_their_first_tick_clear_of_the_lowest_rate_label(tmp_path):
    """An experiment decided in seconds puts clock-time ticks (00:43:00) on the axis's left corner, under
    the y axis's "0.0" unless the axis leaves room; checked on the dashboard's page, as a browser lays it out."""
    need_chromium()
    panels = []
    for bucket_s, span_s in ((10, 10), (10, 60), (10, 300), (60, 60), (60, 120), (60, 360), (60, 3600), (300, 7200)):
        for start in (DEMO_START, DEMO_START - timedelta(seconds=10), DEMO_START + timedelta(seconds=30)):
            buckets = pd.date_range(start, periods=max(1, span_s // bucket_s), freq=f"{bucket_s}s")
            rates = pd.DataFrame({"bucket": buckets, "variant": "control", "feedback": 9, "positive_rate": 0.5})
            volume = pd.DataFrame({"bucket": buckets, "feedback_type": "thumbs_up", "events": 9})
            name = f"{bucket_s}s-{span_s}s-{start:%H%M%S}"
            panels += [
                Panel(f"rate-{name}", name, 1, plots.positive_rate(rates, bucket_s)),
                Panel(f"volume-{name}", name, 1, plots.feedback_volume(volume, bucket_s)),
            ]
    page = tmp_path / "axes.html"
    page.write_text(panels_page(panels, "synthetic time axes."))

    browser = DevTools(tmp_path / "chromium-profile", window=(1400, 1000))
    try:
        laid_out = browser.evaluate(browser.open(page.as_uri()), LAYOUT)
    finally:
        browser.close()

    assert len(laid_out) == len(panels)
    assert [(p["where"], p["overlaps"]) for p in laid_out if p["overlaps"]] == []


def test_a_brand_new_warehouse_shows_no_data_yet(warehouse, warehouse_settings):
    client = TestClient(create_app(warehouse, warehouse_settings))
    ab = client.get("/api/ab")
    assert ab.status_code == 200 and ab.json()["decision"] == "no_data", ab.text
    page = client.get("/")
    assert page.status_code == 200 and "no data yet" in page.text
    rows = dict(re.findall(r'data-panel="(\w+)" data-rows="(\d+)"', page.text))
    assert set(rows) == set(PANELS) and set(rows.values()) == {"0"}


def test_ab_analyze_on_a_brand_new_warehouse_says_no_data(warehouse_settings):
    done = rlhf(warehouse_settings, free_port(), "ab", "analyze")  # no sink answers: opens a fresh chdb path of its own
    assert done.returncode == 0 and "no data yet" in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr
    as_json = rlhf(warehouse_settings, free_port(), "ab", "analyze", "--json")
    assert as_json.returncode == 0 and '"decision": "no_data"' in as_json.stdout, as_json.stderr


def test_with_keys_everything_but_healthz_needs_one_and_an_open_dashboard_stays_on_loopback(warehouse, warehouse_settings):
    keyed = warehouse_settings.model_copy(
        update={
            "clickhouse": warehouse_settings.clickhouse.model_copy(
                update={"dashboard_keys": (SecretStr("dash-key"),), "dashboard_host": "0.0.0.0"}
            )
        }
    )
    client = TestClient(create_app(warehouse, keyed))
    assert client.get("/healthz").status_code == 200
    for path in ("/", "/sql/table_counts", "/api/ab", "/api/queries"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer dash-key"}).status_code == 200, path
    assert client.get("/sql/table_counts?key=dash-key").json()["columns"] == ["table", "rows"]  # a browser's link
    open_beyond_loopback = keyed.model_copy(update={"clickhouse": keyed.clickhouse.model_copy(update={"dashboard_keys": ()})})
    with pytest.raises(ConfigError, match="clickhouse.dashboard_keys: none configured, but the server would listen on 0.0.0.0"):
        create_app(warehouse, open_beyond_loopback)
    assert "dash-key" not in keyed.model_dump_json() and "dash-key" not in repr(keyed)  # secrets print as ****
