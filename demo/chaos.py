"""The chaos drill of `rlhf demo --chaos` (issue 37): during the run, SIGKILL one service of each
kind, one at a time, and a broker node, while the stack (demo/stack.py) starts each again; then check
what must hold whatever died: every acknowledged feedback event in ClickHouse exactly once, every
experiment decided exactly once, no user moved between arms within an experiment.

The kills follow the loop, not a clock, so each lands where it hurts: the stream worker and an
assistant replica while users give feedback, a trainer while it trains, a decider while an
experiment is open, a broker node once a trigger's worth of feedback is in. At least `GAP_S` apart.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from analytics.clickhouse import open_warehouse
from core.kafka_clients import client_config
from core.settings import Settings
from demo.stack import Stack
from schemas import parse_event
from schemas.experiments import ExperimentDecided, ExperimentEvent
from schemas.topics import topic_name

log = logging.getLogger("demo.chaos")
GAP_S = 20.0  # between two kills: each service back before the next goes


class Chaos:
    def __init__(self, stack: Stack, train_threshold: int):
        self.stack, self.threshold = stack, train_threshold
        brokers = [n for n in stack.names() if n.startswith("kafka-")]
        # (service, when): `when` reads the loop's state at a step
        self.plan: list[tuple[str, str]] = [
            ("worker-1", "feedback"),
            ("assistant-1", "feedback"),
            ("trainer-1", "training"),
            ("decider-1", "experiment"),
            (brokers[-1] if brokers else "kafka-1", "second-trigger"),
        ]
        self.kills: list[dict[str, Any]] = []
        self.last = 0.0

    def step(self, training: bool, experiment: bool, feedback: int = 0) -> None:
        """Kill the next service on the plan if the loop is where it should die."""
        if not self.plan or time.monotonic() - self.last < GAP_S:
            return
        name, when = self.plan[0]
        ready = {
            "feedback": not training and feedback >= self.threshold // 3,
            "training": training,
            "experiment": experiment,
            "second-trigger": not training and feedback >= self.threshold + self.threshold // 2,
        }[when]
        if not ready:
            return
        if when == "training":
            time.sleep(3)  # into the training proper
        self.stack.kill(name)  # a service, or a broker node
        log.warning("chaos: SIGKILL %s (%s)", name, when)
        self.kills.append({"service": name, "when": when, "at": time.time()})
        self.plan.pop(0)
        self.last = time.monotonic()


def delivery_checks(settings: Settings, feedback_sent: int, decisions: dict[str, int]) -> dict[str, Any]:
    """What must hold after any run, drill or not, read once the sink has caught up and stopped;
    `decisions`: `experiment_decisions`, read before the brokers stopped."""
    warehouse = open_warehouse(settings)
    try:
        feedback = warehouse.query_df("SELECT count() AS rows, uniqExact(event_id) AS ids FROM feedback FINAL").iloc[0]
        moved = warehouse.query_df(
            "SELECT count() AS users FROM (SELECT experiment, user_id FROM exposures FINAL "
            "WHERE experiment != '' GROUP BY experiment, user_id HAVING uniqExact(variant) > 1)"
        ).iloc[0]
    finally:
        warehouse.close()
    return {
        "feedback_acknowledged": feedback_sent,
        "feedback_rows": int(feedback["rows"]),
        "feedback_ids": int(feedback["ids"]),
        "experiments_decided": len(decisions),
        "experiments_decided_twice": sorted(e for e, n in decisions.items() if n > 1),
        "users_in_two_arms": int(moved["users"]),
    }


def experiment_decisions(settings: Settings) -> dict[str, int]:
    """How many ExperimentDecided events each experiment has on the experiments topic."""
    topic = topic_name(settings.kafka.topic_prefix, "experiments")
    consumer = Consumer(
        {**client_config(settings.kafka), "group.id": "chaos-check", "enable.auto.commit": False, "enable.partition.eof": True}
    )
    counts: dict[str, int] = {}
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + 60
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if (error := msg.error()) is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                continue
            step = parse_event(ExperimentEvent, msg.value()).root
            if isinstance(step, ExperimentDecided):
                counts[step.experiment_id] = counts.get(step.experiment_id, 0) + 1
    finally:
        consumer.close()
    return counts
