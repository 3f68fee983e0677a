"""The embedded warehouse: migrations are idempotent, redelivery never double counts (tables and
materialized views), and every named query runs on an empty and on a filled database."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from analytics.clickhouse import MIGRATIONS, apply_migrations, get_client
from analytics.decision import analyze, report
from analytics.errors import ClickHouseError
from analytics.queries import QUERIES, run_query
from analytics.tables import EVENT_TABLES
from consumers.sink.rows import ROUTES
from schemas import ExposureEvent, FeedbackEvent, WindowMetrics
from schemas.events import latest_verdicts
from tests.integration.analytics.world import World, build_world, insert_world

pytestmark = pytest.mark.integration


def test_migrations_are_idempotent(warehouse, warehouse_settings):
    with warehouse.locked() as client:
        assert apply_migrations(client) == []
        client.command("DELETE FROM schema_migrations WHERE id = {id:String}", parameters={"id": MIGRATIONS[-1].id})
        assert apply_migrations(client) == [MIGRATIONS[-1].id]  # statements are IF NOT EXISTS: re-running is harmless
    assert {r[0] for r in warehouse.client.query("SELECT id FROM schema_migrations FINAL").result_rows} == {
        m.id for m in MIGRATIONS
    }


def test_the_migrated_tables_are_as_declared(warehouse):
    for table in EVENT_TABLES:
        stored = warehouse.query_df(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
            {"t": table.name},
        )
        assert list(stored.itertuples(index=False, name=None)) == [(c.name, c.type.sql) for c in table.columns], table.name


def test_every_named_query_runs_on_an_empty_database(warehouse):
    for name in QUERIES:
        assert run_query(warehouse, name) is not None


def test_redelivered_batches_count_once_in_tables_and_views(warehouse, warehouse_settings):
    world = build_world(warehouse_settings, users=200)
    first = insert_world(warehouse, warehouse_settings, world)
    again = insert_world(warehouse, warehouse_settings, world)  # the batch a crash before commit re-delivers
    assert first["feedback"] == world.count("feedback") and again["feedback"] == again["exposures"] == again["interactions"] == 0
    counts = dict(run_query(warehouse, "table_counts").itertuples(index=False))
    assert counts["feedback"] == world.count("feedback") and counts["exposures"] == world.count("exposures")
    assert counts["training_status"] == world.count("training-status")  # ReplacingMergeTree, read FINAL
    daily = run_query(warehouse, "variant_daily")
    assert daily["feedback"].sum() == world.count("feedback")
    assert daily["interactions"].sum() == world.count("interactions")
    assert daily["exposures"].sum() == world.count("exposures")
    # per-day distinct users add up to the exposed users: each user has exactly one exposure here
    assert daily["users_exposed"].sum() == world.count("exposures")


def changed_minds(world: World, every: int = 5) -> World:
    """Every `every`-th thumb answered again a minute later with the other thumb (a new event id)."""
    flip = {"thumbs_up": "thumbs_down", "thumbs_down": "thumbs_up"}
    thumbs = [e for e in world.of("feedback", FeedbackEvent) if e.feedback_type in flip][::every]
    later = [
        (
            "feedback",
            e.model_copy(
                update={
                    "event_id": f"{e.event_id}-changed",
                    "feedback_type": flip[e.feedback_type],
                    "timestamp": e.timestamp + timedelta(minutes=1),
                }
            ),
        )
        for e in thumbs
    ]
    return World([*world.events, *later])


def test_per_user_sums_agree_with_the_raw_events_counting_each_answers_latest_verdict(warehouse, warehouse_settings):
    world = changed_minds(build_world(warehouse_settings, users=300))
    insert_world(warehouse, warehouse_settings, world)
    ab = warehouse_settings.ab_testing
    exposed = {e.user_id: e for e in world.of("exposures", ExposureEvent)}
    every_verdict = world.of("feedback", FeedbackEvent)
    feedback = latest_verdicts(every_verdict)
    assert len(feedback) < len(every_verdict)
    sums = run_query(warehouse, "ab_users", {"experiment": ab.experiment}).set_index("variant")
    for variant in sums.index:
        mine = [e for e in feedback if e.variant == variant]
        users = {e.user_id for e in mine}
        per_user = {u: [e for e in mine if e.user_id == u] for u in users}
        positives = {u: sum(e.is_positive(warehouse_settings.feedback.min_rating) for e in es) for u, es in per_user.items()}
        before = {u: [e for e in feedback if e.user_id == u and e.timestamp < exposed[u].timestamp] for u in users}
        rate = {u: sum(e.is_positive(warehouse_settings.feedback.min_rating) for e in b) / len(b) for u, b in before.items() if b}
        row = sums.loc[variant]
        assert row["users_exposed"] == sum(e.variant == variant for e in exposed.values()) and row["users"] == len(users)
        assert row["feedback"] == len(mine) and row["feedback_sq"] == sum(len(es) ** 2 for es in per_user.values())
        assert row["positives_feedback"] == sum(positives[u] * len(es) for u, es in per_user.items())
        assert row["thumbs_down"] == sum(e.feedback_type == "thumbs_down" for e in mine)
        assert row["rating_sum"] == sum(e.rating or 0 for e in mine) and row["rating_users"] == sum(
            any(e.rating for e in es) for es in per_user.values()
        )
        assert row["history_users"] == len(rate) > 0
        assert row["history_rate_positives"] == pytest.approx(sum(rate[u] * positives[u] for u in rate))
    decisions = analyze(warehouse, warehouse_settings)
    assert [d.action for d in decisions] == ["promote"], decisions[0].summary()
    assert decisions[0].cuped_variance_ratio < 1  # the history was used


def test_each_answer_counts_its_latest_verdict_by_time_then_event_id_whatever_the_insert_order(warehouse, warehouse_settings):
    """Per answer and slot the row with the greatest (ts, event_id) is kept: a mind changed twice,
    equal timestamps (the greater event id wins, either way round), a correction beside the verdict
    (itself replaced by a later correction), a later verdict stored first, and redelivered copies of
    both the replaced and the kept event (separate inserts: FINAL dedupes them). Each case is its
    own model version, so `positive_rate_by_turn` shows its kept rows and their positive rate."""
    at = datetime(2025, 3, 1, tzinfo=UTC)
    cases = {  # model version -> (event id suffix, feedback type, seconds after `at`), in insert order
        "twice": [("1", "thumbs_up", 0), ("2", "thumbs_down", 60), ("3", "thumbs_up", 120)],
        "tie-up": [("a", "thumbs_down", 0), ("b", "thumbs_up", 0)],
        "tie-down": [("b", "thumbs_down", 0), ("a", "thumbs_up", 0)],
        "corrected": [("1", "thumbs_down", 0), ("2", "correction", 30), ("3", "correction", 90)],
        "late-first": [("2", "thumbs_down", 60), ("1", "thumbs_up", 0)],
        "redelivered": [("1", "thumbs_up", 0), ("1", "thumbs_up", 0), ("2", "thumbs_down", 60), ("2", "thumbs_down", 60)],
        "single": [("1", "thumbs_up", 0), ("1", "thumbs_up", 0)],
    }
    route = ROUTES["feedback"]
    for version, events in cases.items():
        for suffix, kind, seconds in events:
            event = FeedbackEvent(
                event_id=f"{version}-{suffix}",
                timestamp=at + timedelta(seconds=seconds),
                interaction_id=f"answer-{version}",
                user_id="user-1",
                query="q",
                response="r",
                model_version=version,
                experiment="policy-ab",
                variant="control",
                feedback_type=kind,
                correction="the right answer" if kind == "correction" else None,
            )
            with warehouse.locked() as client:  # raw inserts: a copy is stored again, as after a crash before commit
                client.insert_arrow(route.table.name, route.table.to_arrow([route.row(event, warehouse_settings)]))
    frame = run_query(warehouse, "positive_rate_by_turn", {"experiment": "policy-ab"}).set_index("model_version")
    kept = frame["first_turn_feedback"].to_dict()
    rate = frame["first_turn_positive_rate"].to_dict()
    assert kept == {"twice": 1, "tie-up": 1, "tie-down": 1, "corrected": 2, "late-first": 1, "redelivered": 1, "single": 1}
    assert rate == {"twice": 1, "tie-up": 1, "tie-down": 0, "corrected": 0, "late-first": 0, "redelivered": 0, "single": 1}
    over_time = run_query(warehouse, "positive_rate_over_time", {"experiment": "policy-ab", "bucket_s": 86_400})
    assert over_time["feedback"].sum() == sum(kept.values())


def test_an_empty_warehouse_reports_no_data(warehouse, warehouse_settings):
    r = report(analyze(warehouse, warehouse_settings))
    assert r["decision"] == "no_data" and r["users"] == {"control": 0, "variant_a": 0} and r["statistics"]["srm_p"] == 1.0


def test_the_experiment_lifecycle_shows_open_and_decided_experiments(warehouse, warehouse_settings):
    insert_world(warehouse, warehouse_settings, build_world(warehouse_settings, users=5))
    frame = run_query(warehouse, "experiment_lifecycle").set_index("experiment_id")
    earlier, current = "policy-ab:assistant-trigger-a", "policy-ab:assistant-trigger-b"
    assert frame.loc[earlier, "state"] == "promote" and frame.loc[earlier, "lift_low"] == 0.03
    assert (
        frame.loc[current, "state"] == "open" and pd.isna(frame.loc[current, "lift"]) and pd.isna(frame.loc[current, "decided"])
    )
    assert list(frame.index) == [current, earlier]  # latest started first


def test_a_re_emitted_window_replaces_the_earlier_one(warehouse, warehouse_settings):
    world = build_world(warehouse_settings, users=1)
    window = world.of("metrics", WindowMetrics)[0]
    later = window.model_copy(update={"count": 99, "timestamp": window.timestamp.replace(second=30)})
    route = ROUTES["metrics"]
    for event in (window, later):
        warehouse.insert_new(route.table, route.table.to_arrow([route.row(event, warehouse_settings)]))
    rows = warehouse.query_df(
        "SELECT count FROM metrics FINAL WHERE window_start = {s:DateTime64(3, 'UTC')}", {"s": window.window_start}
    )
    assert rows["count"].tolist() == [99]


def test_get_client_names_the_owner_when_the_path_is_taken(warehouse, warehouse_settings, tmp_path):
    # chdb allows one path per process: a second path in this process fails with a clear error.
    other = warehouse_settings.model_copy(
        update={"clickhouse": warehouse_settings.clickhouse.model_copy(update={"path": tmp_path / "other"})}
    )
    with pytest.raises(ClickHouseError) as info:
        get_client(other)
    assert "embedded chdb at" in str(info.value)


def test_grafana_queries_run_with_its_variables_filled_in(warehouse, warehouse_settings):
    from analytics.grafana import PANELS, grafana_sql

    insert_world(warehouse, warehouse_settings, build_world(warehouse_settings, users=50))
    for name, *_ in PANELS:
        sql = (
            grafana_sql(name).replace("${experiment}", warehouse_settings.ab_testing.experiment).replace("$__interval_s", "3600")
        )
        assert len(warehouse.query_df(sql)) > 0, name


def test_current_experiment_is_the_latest_candidate_instance(warehouse, warehouse_settings):
    from datetime import timedelta

    from analytics.decision import current_experiment

    world = build_world(warehouse_settings, users=20)
    later = [
        e.model_copy(
            update={
                "experiment": "policy-ab:v2",
                "exposure_id": e.exposure_id + "-v2",
                "timestamp": e.timestamp + timedelta(days=9),
            }
        )
        for e in world.of("exposures", ExposureEvent)
    ]
    insert_world(warehouse, warehouse_settings, world)
    route = ROUTES["exposures"]
    warehouse.insert_new(route.table, route.table.to_arrow([route.row(e, warehouse_settings) for e in later]))
    assert current_experiment(warehouse, warehouse_settings.ab_testing) == "policy-ab:v2"
    other = warehouse_settings.ab_testing.model_copy(update={"experiment": "unrelated"})
    assert current_experiment(warehouse, other) == "unrelated"


def test_pii_counts_from_the_windows_add_up_per_type(warehouse, warehouse_settings):
    world = build_world(warehouse_settings, users=100)
    insert_world(warehouse, warehouse_settings, world)
    expected: dict[str, int] = {}
    for window in world.of("metrics", WindowMetrics):
        for pii_type, n in window.pii.items():
            expected[pii_type] = expected.get(pii_type, 0) + n
    found = run_query(warehouse, "pii_found", {"bucket_s": 86_400}).groupby("pii_type")["found"].sum().to_dict()
    assert found == expected and expected["phone"] > 0
