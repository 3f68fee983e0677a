"""The decider (`rlhf decider run`): consumer group "decider" on the experiments topic.

For every open experiment it asks the A/B analysis (`analytics.remote.ab_report`, per-user
statistics over ClickHouse) every `ab_testing.decide_every_s`. A verdict (promote or rollback),
or the horizon reached without one (`expired`: control kept), is applied once through the
registry and announced (consumers/decider/decisions.py).

One decider acts at a time: the topic has one partition and the group gives it to one member;
other members wait as standbys and take over when it dies. On every assignment the owner rebuilds
the open experiments from the beginning of the topic, and it decides only once it has read to the
end, so it never decides an experiment whose decision is already on the topic. A decider killed
mid-decision leaves either nothing behind (the next owner decides afresh) or the registry's record
(the next owner announces that same decision): exactly one decision per experiment id.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from analytics.remote import ab_report
from consumers.decider.decisions import close_experiment
from consumers.emitter import EventEmitter
from core.errors import DeliveryError, EngineError, EventValidationError, RlhfError
from core.kafka_clients import client_config
from core.settings import Settings
from registry.deployment import Deployer
from registry.store import ModelRegistry
from schemas import parse_event
from schemas.experiments import ExperimentBook, ExperimentEvent, ExperimentOutcome, ExperimentStarted
from schemas.topics import CONSUMER_GROUPS, group_id, topic_name

log = logging.getLogger("rlhf.decider")

GROUP = CONSUMER_GROUPS["decider"]
Analysis = Callable[[Settings, str], dict[str, Any]]

# Adapters a decision leaves unused are unloaded this long after it: every assistant has reread the
# registry (each second) and answers in flight on the retired version have ended.
RETIRE_AFTER_S = 30.0


def verdict(started: ExperimentStarted, report: dict[str, Any] | None, now: datetime) -> tuple[ExperimentOutcome, str] | None:
    """What to do with an experiment given its latest analysis (None when none could be had)."""
    report = report or {}
    if report.get("decision") in ("promote", "rollback"):
        return report["decision"], report.get("reason") or f"the A/B analysis says {report['decision']}"
    users = sum((report.get("users") or {}).values())
    elapsed = (now - started.started_at).total_seconds()
    if users >= started.horizon_users * len(started.arms):
        horizon = f"horizon: {users} exposed users without a significant result"
    elif elapsed >= started.horizon_s:
        horizon = f"horizon: {elapsed:.0f} s without a significant result"
    else:
        return None
    return "expired", f"{horizon}; control kept"


class Decider:
    def __init__(self, settings: Settings, analysis: Analysis = ab_report, emitter: EventEmitter | None = None):
        self.settings = settings
        self.analysis = analysis
        self.registry = ModelRegistry.of(settings)
        self.emitter = emitter or EventEmitter(settings)
        self.experiments = ExperimentBook()
        self.last_look: dict[str, float] = {}
        self.retiring: dict[str, float] = {}  # policies whose engine adapters a decision may have left unused: when

    def look_at_open_experiments(self) -> None:
        """Analyse each open experiment that is due, and decide those with a verdict."""
        due = {p for p, at in self.retiring.items() if time.monotonic() - at >= RETIRE_AFTER_S}
        if due:
            self._retire(due)
        for started in self.experiments.all_open():
            if time.monotonic() - self.last_look.get(started.experiment_id, -1e9) < self.settings.ab_testing.decide_every_s:
                continue
            self.last_look[started.experiment_id] = time.monotonic()
            report = self._report(started.experiment_id)
            found = verdict(started, report, datetime.now(UTC))
            if found is None:
                continue
            try:
                self.decide(started, *found, statistics=(report or {}).get("statistics", {}))
            except DeliveryError as exc:  # recorded but not announced: the next look announces the recorded decision
                log.warning("%s: decision not announced yet: %s", started.experiment_id, exc)

    def decide(self, started: ExperimentStarted, outcome: ExperimentOutcome, reason: str, statistics: dict[str, float]) -> None:
        record, announced = close_experiment(
            self.emitter,
            self.registry,
            started.policy,
            started.experiment_id,
            started.treatment_version,
            outcome,
            reason,
            statistics,
        )
        log.info(
            "%s: %s (%s)%s", started.experiment_id, record.outcome, record.reason, "" if record.first else " [recorded earlier]"
        )
        self.experiments.apply(announced)  # closed here before its own event is read back
        if self.settings.gateway.engine_url:
            self.retiring[started.policy] = time.monotonic()

    def _retire(self, policies: set[str]) -> None:
        """Unload the adapters a decision left unused from the engine (registry/deployment.py)."""
        deployer = Deployer(self.registry, self.settings.gateway)
        try:
            for policy in policies:
                log.info("%s: retired from %s: %s", policy, deployer.admin.url, deployer.retire(policy) or "none")
                self.retiring.pop(policy, None)
        except EngineError as exc:  # tried again at the next look
            log.warning("retiring unused adapters failed: %s", exc)
        finally:
            deployer.close()

    def _report(self, experiment_id: str) -> dict[str, Any] | None:
        try:
            return self.analysis(self.settings, experiment_id)
        except RlhfError as exc:  # the analysis is unavailable for now: only the duration horizon can end it
            log.warning("%s: no analysis this time: %s", experiment_id, exc)
            return None


def caught_up(consumer: Consumer) -> bool:
    """Whether every assigned partition has been read to its end (nothing assigned: not caught up)."""
    assigned = consumer.assignment()
    if not assigned:
        return False
    try:
        for tp in consumer.position(assigned):
            low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            if (tp.offset if tp.offset >= 0 else low) < high:
                return False
    except KafkaException as exc:  # the broker is away: not knowing the end is not being caught up
        log.warning("cannot read the end of the experiments topic: %s", exc)
        return False
    return True


def run(settings: Settings, decider: Decider | None = None, stop: threading.Event | None = None) -> None:
    """Decide experiments until `stop` is set (SIGTERM/SIGINT set it when run from the main thread)."""
    decider = decider or Decider(settings)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    topic = topic_name(settings.kafka.topic_prefix, "experiments")
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": group_id(settings.kafka.topic_prefix, GROUP),
            "client.id": "rlhf-decider",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6_000,
            "heartbeat.interval.ms": 1_000,
        }
    )

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        decider.experiments = ExperimentBook()  # rebuilt from the beginning: the state is the topic
        c.assign([TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in partitions])

    consumer.subscribe([topic], on_assign=on_assign)
    log.info("decider consuming %s", topic)
    try:
        while not stop.is_set():
            for msg in consumer.consume(100, timeout=0.5):
                if (error := msg.error()) is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", error)
                    continue
                try:
                    decider.experiments.apply(parse_event(ExperimentEvent, msg.value()).root)
                except EventValidationError as exc:  # written by the project's own services only: a bug, said loudly
                    log.error("experiments record at offset %d unreadable, skipped: %s", msg.offset(), exc)
            if caught_up(consumer):
                decider.look_at_open_experiments()
    finally:
        consumer.close()
