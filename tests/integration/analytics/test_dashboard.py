"""The dashboard served by the sink: events go through Kafka and the sink, the page is opened in
headless Chromium, every panel renders with data, and the screenshot is kept as an artifact
(artifacts/dashboard.png). On a brand-new warehouse the page, /api/ab and `rlhf ab analyze` say
"no data yet"."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from matplotlib import image
from pydantic import SecretStr

from analytics.dashboard import create_app
from core.errors import ConfigError
from devtools.kafka_local import free_port
from tests.integration.analytics.conftest import REPO, SinkProcess, produce, rlhf
from tests.integration.analytics.world import build_world

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
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


def screenshot(url: str, out: Path, profile: Path) -> None:
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            "--window-size=1400,1900",
            "--virtual-time-budget=5000",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def running_sink(settings):
    world = build_world(settings, users=400)
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

    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install -y chromium); page checked over HTTP only")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    screenshot(running_sink.url + "/", shot, tmp_path / "chromium-profile")
    pixels = image.imread(shot)
    assert pixels.shape[0] >= 1800 and pixels.shape[1] >= 1300
    # Plots put many distinct colours on screen; a blank or error page has a handful.
    colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 200, f"{len(colours)} colours: the page looks empty"


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
