"""Trainer consumer on the real broker: a stream-app trigger becomes one published, loadable version;
re-delivery, SIGKILL mid-training and a corrupt trigger are each handled without a second version."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from assistant.service import load_version
from consumers.trainer.job import ensure_base_policy
from demo.supervisor import Supervisor
from registry.store import ModelRegistry, version_for
from schemas import DeadLetter, ModelPublished, OffsetRange, TrainingStatus, TrainTrigger, parse_event
from schemas.experiments import ExperimentDecided, ExperimentEvent
from schemas.topics import group_id, topic_name
from sdk.admin import create_topics
from sdk.client import FeedbackClient
from tests.conftest import FAST_TRAINING
from trainers.history import load_history
from trainers.reward_model import RewardModel
from trainers.synthetic import feedback_events, split_questions

pytestmark = pytest.mark.integration


class TopicTail:
    """Everything on one topic, from the beginning, without a consumer group."""

    def __init__(self, settings, name: str, model):
        self.model = model
        self.consumer = Consumer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "tail", "enable.auto.commit": False}
        )
        self.consumer.assign([TopicPartition(topic_name(settings.kafka.topic_prefix, name), 0, 0)])
        self.items: list = []

    def until(self, predicate, timeout: float, services: Supervisor | None = None) -> list:
        deadline = time.monotonic() + timeout
        while not predicate(self.items):
            assert time.monotonic() < deadline, f"timed out; have {self.items[-5:]}"
            if services is not None:
                services.check()
            for msg in self.consumer.consume(100, timeout=0.5):
                if not msg.error():
                    self.items.append(parse_event(self.model, msg.value()))
        return self.items


def loop_environment(settings, **variables: str) -> dict[str, str]:
    """The services' environment: these settings' broker, topics and home, fast training, every
    version passing the gate (margin -1), and `variables` over them."""
    return {
        **os.environ,
        **FAST_TRAINING,
        "RLHF_REGISTRY__PROMOTION_MARGIN": "-1.0",
        "RLHF_HOME": str(settings.home),
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RLHF_CLICKHOUSE__DASHBOARD_PORT": "9",
        **variables,
    }


@pytest.fixture
def stack(settings, tmp_path):
    # Every version opens an experiment; with no sink there is no analysis, so the decider ends
    # each one at its 2-second horizon and the next round may start.
    env = loop_environment(settings, RLHF_AB_TESTING__HORIZON_S="2", RLHF_AB_TESTING__DECIDE_EVERY_S="1")
    ensure_base_policy(settings)
    services = Supervisor(tmp_path / "logs", env)
    services.start("streams", "streams", "worker")
    services.start("trainer", "trainer", "run", "--backoff", "1")
    services.start("decider", "decider", "run")
    yield services
    services.stop_all()


def produce_feedback(settings, n: int, seed: int) -> None:
    train, _ = split_questions()
    with FeedbackClient.from_settings(settings) as client:
        client.collection_rate = 1.0
        for event in feedback_events(train, n, seed=seed):
            client.feedback(event)


def test_trigger_to_published_version_with_faults(settings, stack):
    registry = ModelRegistry.of(settings)
    triggers = TopicTail(settings, "train-triggers", TrainTrigger)
    published = TopicTail(settings, "model-published", ModelPublished)
    statuses = TopicTail(settings, "training-status", TrainingStatus)

    # 1. A trigger from the stream app ends in a published, loadable version whose lineage names it.
    produce_feedback(settings, 100, seed=1)
    first = triggers.until(lambda t: len(t) >= 1, 120, stack)[0]
    done = published.until(lambda p: len(p) >= 1, 400, stack)[0]
    assert done.trigger_id == first.trigger_id and done.version == version_for(first.policy, first.trigger_id)
    manifest = registry.manifest("policies", done.version)
    assert manifest.trigger_id == first.trigger_id and manifest.parent_version == "base"
    assert [OffsetRange(**r) for r in manifest.data_ranges] == list(first.ranges)
    assert load_version(registry, done.version).model is not None

    # 2. The same trigger re-delivered produces no second version.
    with FeedbackClient.from_settings(settings) as client:
        client.send("train-triggers", first, key=first.policy)
    statuses.until(lambda s: any(x.trigger_id == first.trigger_id and "already published" in x.message for x in s), 120, stack)

    # 3. SIGKILL mid-training: the trigger is retried and exactly one version is published.
    produce_feedback(settings, 100, seed=2)
    fresh = lambda t: [x for x in t if x.trigger_id != first.trigger_id]  # noqa: E731 (the tail also holds the re-sent first)
    second = fresh(triggers.until(lambda t: len(fresh(t)) >= 1, 120, stack))[0]
    statuses.until(lambda s: any(x.trigger_id == second.trigger_id and x.stage == "reward_model" for x in s), 120, stack)
    stack.kill("trainer")
    stack.check()  # restarts it
    published.until(lambda p: any(x.trigger_id == second.trigger_id for x in p), 400, stack)
    # ... and it learned from the whole history, warm-started from the first round's reward model;
    # its manifest names every range, history.json the triggers themselves (exactly replayable).
    later = registry.manifest("policies", version_for(second.policy, second.trigger_id))
    assert later.reward_model_version is not None
    assert later.history_triggers == [first.trigger_id, second.trigger_id]
    assert [OffsetRange(**r) for r in later.data_ranges] == [*first.ranges, *second.ranges]
    known, used = load_history(registry.path("reward_models", later.reward_model_version))
    assert used == later.history_triggers and known == [first, second]
    first_rm = registry.manifest("policies", done.version).reward_model_version
    assert (
        RewardModel.load(registry.path("reward_models", later.reward_model_version) / "model")
        .lineage["warm_start"]
        .endswith(f"{first_rm}/model")
    )

    # 4. A trigger whose range is empty goes to the DLQ with a reason; the consumer goes on.
    topic = topic_name(settings.kafka.topic_prefix, "feedback")
    bogus = TrainTrigger(
        policy="assistant",
        model_version="base",
        ranges=(OffsetRange(topic=topic, partition=0, start=10_000, end=10_050),),
        event_ids=("nope",),
    )
    with FeedbackClient.from_settings(settings) as client:
        client.send("train-triggers", bogus, key="assistant")
        client.send("train-triggers", second, key=second.policy)  # after the bad one: must still be consumed
    dlq = TopicTail(settings, "train-triggers-dlq", DeadLetter)
    letter = dlq.until(lambda d: len(d) >= 1, 120, stack)[0]
    assert "TrainingError" in letter.reason and bogus.trigger_id in letter.value
    statuses.until(lambda s: any(x.trigger_id == second.trigger_id and "already published" in x.message for x in s), 120, stack)

    versions = [m for m in registry.versions("policies") if m.status != "base"]
    assert sorted(m.trigger_id or "" for m in versions) == sorted([first.trigger_id, second.trigger_id])  # all have one
    assert len([p for p in published.items if p.trigger_id == second.trigger_id]) == 1


def committed(settings, partitions: int) -> int:
    """Offsets the trainers' group has committed on train-triggers, summed over its partitions."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group_id(settings.kafka.topic_prefix, "trainers")}
    )
    try:
        parts = [TopicPartition(topic_name(settings.kafka.topic_prefix, "train-triggers"), p) for p in range(partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


def test_one_job_at_a_time_on_a_multi_partition_trigger_topic(kafka_bootstrap, tmp_path):
    """With train-triggers spread over three partitions, every trigger runs once, never two at a
    time, and the group's committed offsets reach the end of every partition."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from consumers.trainer.consumer import run
    from tests.conftest import make_settings

    settings = make_settings(kafka_bootstrap, tmp_path)
    prefix = settings.kafka.topic_prefix
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept referenced until the future resolves
    admin.create_topics([NewTopic(topic_name(prefix, "train-triggers"), 3, 1)])[topic_name(prefix, "train-triggers")].result()
    create_topics(settings.kafka)  # the rest; train-triggers exists with 3
    running: list[str] = []
    seen: list[str] = []
    overlaps: list[int] = []
    lock = threading.Lock()

    def job(trigger, emitter, stop):
        with lock:
            overlaps.append(len(running))
            running.append(trigger.trigger_id)
        time.sleep(0.2)
        with lock:
            running.remove(trigger.trigger_id)
            seen.append(trigger.trigger_id)

    triggers = [
        TrainTrigger(
            policy=f"p{i}",
            model_version="base",
            ranges=(OffsetRange(topic="f", partition=0, start=i, end=i + 1),),
            event_ids=(f"e{i}",),
        )
        for i in range(6)
    ]
    with FeedbackClient.from_settings(settings) as client:
        for t in triggers:
            client.send("train-triggers", t, key=t.policy)
    stop = threading.Event()
    consumer = threading.Thread(target=run, args=(settings, job), kwargs={"stop": stop}, daemon=True)
    consumer.start()
    deadline = time.monotonic() + 90
    while len(seen) < len(triggers) or committed(settings, 3) < len(triggers):
        assert time.monotonic() < deadline, f"ran {len(seen)} of {len(triggers)}"
        time.sleep(0.5)
    stop.set()
    consumer.join(timeout=15)
    assert sorted(seen) == sorted(t.trigger_id for t in triggers)
    assert set(overlaps) == {0}


def test_services_on_different_hosts_share_a_registry_on_s3(settings, s3_environ, tmp_path):
    """A stream worker, a trainer and a decider, each with a home of its own (no shared disk), and a
    reader on a fourth: they meet only in the S3-compatible store (registry.url) and in Kafka. The
    trainer optimises the policy data-parallel on two processes it launches itself."""
    url = f"s3://{s3_environ.bucket}/{uuid.uuid4().hex[:8]}"
    on_s3 = settings.model_copy(update={"registry": settings.registry.model_copy(update={"url": url})})
    ensure_base_policy(on_s3)
    hosts = []
    for host, command in (
        ("worker-host", ("streams", "worker")),
        ("trainer-host", ("trainer", "run")),
        ("decider-host", ("decider", "run")),
    ):
        env = loop_environment(
            settings,
            RLHF_HOME=str(tmp_path / host),
            RLHF_REGISTRY__URL=url,
            RLHF_AB_TESTING__HORIZON_S="2",
            RLHF_AB_TESTING__DECIDE_EVERY_S="1",
            RLHF_POLICY__PROCESSES="2",  # the trainer host optimises the policy on two gloo processes (trainers/launch.py)
        )
        hosts.append(Supervisor(tmp_path / host / "logs", env))
        hosts[-1].start(command[0], *command)
    try:
        produce_feedback(settings, 100, seed=3)
        decided = TopicTail(settings, "experiments", ExperimentEvent)
        record = decided.until(lambda e: any(isinstance(x.root, ExperimentDecided) for x in e), 600, hosts[1])
        done = next(x.root for x in record if isinstance(x.root, ExperimentDecided))
    finally:
        for services in hosts:
            services.stop_all()
    reader = ModelRegistry(url, cache=tmp_path / "reader-host")
    decision = reader.experiment_decision("assistant", done.experiment_id)
    assert decision is not None and decision.outcome == done.outcome
    assert load_version(reader, version_for(done.policy, done.trigger_id)).model is not None
    assert not (tmp_path / "reader-host" / "pointers.json").exists()  # the pointers live in the store only
    assert "optimising the policy on 2 processes" in (tmp_path / "trainer-host" / "logs" / "trainer.log").read_text()
