"""The closed loop end to end, on the real broker and embedded ClickHouse, with fast training:
feedback -> trigger -> published version -> A/B analysis -> decision, with users holding
conversations. The fault drill SIGKILLs the stream worker and the trainer and restarts the broker
during a run of one-question users; the loop must still close and ClickHouse must hold every
feedback event the users sent, exactly once."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

from analytics.clickhouse import open_warehouse
from demo.driver import Demo, DemoPlan, run_demo
from demo.report import write_report
from registry.store import ModelRegistry
from schemas.events import DEFAULT_POLICY
from tests.conftest import FAST_TRAINING
from trainers.optimise import gate_verdict

pytestmark = pytest.mark.integration

SHORT = DemoPlan(rounds=1, users=120, batch=32, train_threshold=100, ab_min_users_per_variant=20, ab_horizon_s=90, budget_s=480)


@pytest.fixture
def fast(monkeypatch):
    # Fast reward model, but enough PPO iterations that the gate usually passes the candidate on
    # to its A/B test; either outcome is checked below.
    for key, value in {**FAST_TRAINING, "RLHF_POLICY__TRAINING__EPOCHS": "8"}.items():
        monkeypatch.setenv(key, value)


def feedback_in_clickhouse(run_dir, plan: DemoPlan) -> tuple[int, int]:
    """(rows, distinct event ids) of the feedback table after the run."""
    settings = Demo(plan, run_dir).settings  # the same RLHF_HOME, so the same embedded database
    warehouse = open_warehouse(settings)
    try:
        row = warehouse.query_df("SELECT count() AS n, uniqExact(event_id) AS ids FROM feedback FINAL").iloc[0]
        return int(row["n"]), int(row["ids"])
    finally:
        warehouse.close()


def check_loop_closed(run_dir, plan: DemoPlan, results) -> dict:
    """Each round's outcome follows from its own figures: the gate from the held-out rewards, and
    the serving version from the decider's decision. No test code decides anything."""
    assert len(results) >= plan.rounds  # a rejected round and a decided one can end between two looks of the driver
    settings = Demo(plan, run_dir).settings
    serving, margin = ModelRegistry.of(settings), settings.registry.promotion_margin
    for round_ in results:
        published = round_.published
        assert published["trigger_id"] and published["version"] == round_.candidate
        if round_.decision == "rejected":  # the gate (or a guardrail) stopped it: it never reached users
            assert published["decision"] == "rejected" and published["reason"] and not round_.ab
            continue
        # The gate's own rule on the published figures (the gate head's held-out reward, within the margin).
        assert published["decision"] == "candidate" and gate_verdict(published["metrics"], margin)[0]
        assert round_.decision == round_.ab["outcome"] in ("promote", "rollback", "expired") and round_.ab["reason"]
        decision = serving.experiment_decision(DEFAULT_POLICY, round_.ab["experiment"])
        assert decision is not None and decision.outcome == round_.decision  # the registry applied what was announced
    final = results[-1]
    if final.decision in ("promote", "rollback", "expired"):
        assert (serving.serving(DEFAULT_POLICY) == final.candidate) == (final.decision == "promote")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["sink_lag"] == 0
    return run


def test_the_loop_closes_on_conversations(fast, tmp_path):
    plan = replace(SHORT, rounds=2, budget_s=720, conversations=True)
    results = run_demo(plan, tmp_path)
    run = check_loop_closed(tmp_path, plan, results)
    # The stream worker released round 2's trigger only after round 1's experiment was decided.
    first, second = results[:2]
    if first.ab:
        assert datetime.fromisoformat(second.published["timestamp"]) > datetime.fromisoformat(first.ab["decided_at"])
    assert feedback_in_clickhouse(tmp_path, plan) == (run["feedback_sent"], run["feedback_sent"])
    summary = write_report(tmp_path, results, elapsed_s=60, max_new_tokens=16, follow_ups=True)
    assert f"round 1: {results[0].candidate}" in summary and (tmp_path / "report.html").stat().st_size > 10_000
    assert "on follow-up turns" in summary


def test_fault_drill(fast, tmp_path):
    plan = replace(SHORT, fault_drill=True)
    results = run_demo(plan, tmp_path)
    run = check_loop_closed(tmp_path, plan, results)
    assert run["fault_drill"] == ["broker", "streams", "trainer"]
    assert feedback_in_clickhouse(tmp_path, plan) == (run["feedback_sent"], run["feedback_sent"])
