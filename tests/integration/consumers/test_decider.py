"""The decider on the real broker: an experiment is closed by exactly one decision, even with two
deciders running and the one that decided SIGKILLed between recording and announcing it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from registry.store import Manifest, ModelRegistry
from schemas import parse_event
from schemas.experiments import Arm, ExperimentDecided, ExperimentEvent, ExperimentStarted
from schemas.topics import topic_name
from sdk.client import FeedbackClient

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def experiment_events(settings) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "tail", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic_name(settings.kafka.topic_prefix, "experiments"), 0, 0)])
    try:
        return [parse_event(ExperimentEvent, m.value()).root for m in consumer.consume(1000, timeout=3) if not m.error()]
    finally:
        consumer.close()


def test_two_deciders_and_a_sigkill_give_exactly_one_decision(settings, tmp_path):
    registry = ModelRegistry.of(settings)
    registry.register_base("assistant", "base", lambda d: (d / "weights").write_text("base"))
    registry.publish(
        "policies",
        "v1",
        lambda d: Manifest(
            version="v1", kind="policies", policy="assistant", status="candidate", trigger_id="t1", parent_version="base"
        ),
    )
    registry.offer_candidate("assistant", "v1")
    # No sink runs, so there is no analysis: only the 2-second horizon can end the experiment (expired, control kept).
    started = ExperimentStarted(
        experiment_id="policy-ab:v1",
        policy="assistant",
        trigger_id="t1",
        control_version="base",
        treatment_version="v1",
        arms=(Arm(name="control", model_version="base", weight=1), Arm(name="variant_a", model_version="v1", weight=1)),
        salt="s",
        horizon_users=1000,
        horizon_s=2,
    )
    with FeedbackClient.from_settings(settings) as client:
        client.send("experiments", started, key="assistant")

    env = {
        **os.environ,
        "RLHF_HOME": str(settings.home),
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RLHF_AB_TESTING__DECIDE_EVERY_S": "1",
        "RLHF_CLICKHOUSE__DASHBOARD_PORT": "9",
    }  # fmt: skip  (nothing listens: the analysis is unavailable)
    deciders = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.consumers.dying_decider"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"decider-{i}.log", "w"),
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 90
        while not [e for e in experiment_events(settings) if isinstance(e, ExperimentDecided)]:
            assert time.monotonic() < deadline, "no decision announced: " + " | ".join(
                (tmp_path / f"decider-{i}.log").read_text()[-800:] for i in range(2)
            )
            time.sleep(1)
        time.sleep(5)  # the survivor keeps running: it must not announce a second time
        decided = [e for e in experiment_events(settings) if isinstance(e, ExperimentDecided)]
        exits = [d.poll() for d in deciders]
    finally:
        for d in deciders:
            if d.poll() is None:
                d.terminate()
                d.wait(timeout=20)
    assert exits.count(-signal.SIGKILL) == 1 and exits.count(None) == 1  # one died mid-decision, the other finished it
    assert len(decided) == 1 and decided[0].experiment_id == "policy-ab:v1" and decided[0].outcome == "expired"
    assert (
        decided[0].serving_version == "base"
        and registry.serving("assistant") == "base"
        and registry.candidate("assistant") is None
    )
    decision = registry.experiment_decision("assistant", "policy-ab:v1")
    assert decision is not None and decision.outcome == "expired"
    assert registry.manifest("policies", "v1").status == "rolled_back"
