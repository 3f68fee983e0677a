"""A pool of trainer processes in one consumer group (issue 37): different policies train at the same
time, one policy's triggers never do, and when a trainer is SIGKILLed mid-job a standby takes the
trigger over (consumed again; the job's version id derives from the trigger, so it is the same
version: registry.store.version_for)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumers.emitter import EventEmitter
from consumers.trainer.consumer import run
from core.settings import Settings
from schemas import OffsetRange, TrainTrigger
from schemas.topics import topic_name
from sdk.admin import create_topics
from tests.conftest import make_settings

pytestmark = pytest.mark.integration
POLICIES = 4  # one per partition of train-triggers
JOB_S = 3.0


def job(trigger: TrainTrigger, emitter: EventEmitter, stop: threading.Event) -> None:
    """A training stand-in that records when it ran and in which process."""
    marks = Path(os.environ["POOL_MARKS"])
    (marks / f"start-{trigger.trigger_id}-{os.getpid()}").write_text(f"{trigger.policy} {time.time()}")
    stop.wait(JOB_S)
    (marks / f"end-{trigger.trigger_id}-{os.getpid()}").write_text(f"{trigger.policy} {time.time()}")


def trainer(settings: Settings, marks: str) -> None:  # one process of the pool
    os.environ["POOL_MARKS"] = marks
    run(settings, job)


def marks(directory: Path, kind: str) -> list[tuple[str, int, str, float]]:
    """(trigger id, pid, policy, time) of every start or end mark."""
    found = []
    for path in directory.glob(f"{kind}-*"):
        trigger_id, pid = path.name.removeprefix(f"{kind}-").rsplit("-", 1)
        policy, at = path.read_text().split()
        found.append((trigger_id, int(pid), policy, float(at)))
    return found


def test_a_pool_trains_policies_in_parallel_and_a_standby_takes_over(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, tmp_path)
    topic = topic_name(settings.kafka.topic_prefix, "train-triggers")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, POLICIES, 1)])[topic].result()
    create_topics(settings.kafka)
    triggers = [
        TrainTrigger(
            policy=f"p{p}",
            model_version="base",
            ranges=(OffsetRange(topic="f", partition=0, start=10 * p + n, end=10 * p + n + 1),),
            event_ids=(f"e{p}-{n}",),
        )
        for n in range(2)
        for p in range(POLICIES)
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for t in triggers:  # a policy's triggers on one partition, as keying by policy puts them
        producer.produce(topic, t.to_bytes(), key=t.policy, partition=int(t.policy[1:]))
    producer.flush(10)

    directory = tmp_path / "marks"
    directory.mkdir()
    spawn = multiprocessing.get_context("spawn")
    pool = [spawn.Process(target=trainer, args=(settings, str(directory))) for _ in range(2)]
    for process in pool:
        process.start()
    try:
        deadline = time.monotonic() + 120
        while len({pid for _, pid, _, _ in marks(directory, "start")}) < 2:  # both trainers busy at once
            assert time.monotonic() < deadline, "the two trainers never ran jobs at the same time"
            time.sleep(0.1)
        victim = None
        while victim is None:  # a job well before its end, so that the kill lands mid-job
            ended = {t for t, *_ in marks(directory, "end")}
            victim = next((m for m in marks(directory, "start") if m[0] not in ended and time.time() - m[3] < JOB_S / 3), None)
            assert time.monotonic() < deadline, "no job to interrupt"
            time.sleep(0.05)
        victim_trigger, victim_pid, _, _ = victim
        os.kill(victim_pid, signal.SIGKILL)  # mid-job: its trigger is not committed
        killed_at = time.time()
        while {t for t, *_ in marks(directory, "end")} != {t.trigger_id for t in triggers}:
            assert time.monotonic() < deadline, f"ended {len(marks(directory, 'end'))} of {len(triggers)}"
            time.sleep(0.2)
    finally:
        for process in pool:
            if process.is_alive():
                process.terminate()
            process.join(30)

    starts, ends = marks(directory, "start"), marks(directory, "end")
    standby = next(p.pid for p in pool if p.pid != victim_pid)
    assert [(t, pid) for t, pid, _, _ in ends if t == victim_trigger] == [(victim_trigger, standby)]  # taken over, done once
    assert sorted(t for t, *_ in ends) == sorted(t.trigger_id for t in triggers)  # every trigger ends once
    # Each job's span, in the process that ran it (the victim's cut short by the kill).
    spans = {
        (t, pid): (at, next((e for e_t, e_pid, _, e in ends if (e_t, e_pid) == (t, pid)), killed_at)) for t, pid, _, at in starts
    }
    policy_of = {t.trigger_id: t.policy for t in triggers}
    for (a, _), (a_start, a_end) in spans.items():
        for (b, _), (b_start, b_end) in spans.items():
            if a != b and policy_of[a] == policy_of[b]:
                assert a_end <= b_start or b_end <= a_start, f"{policy_of[a]} trained twice at once"
    at_once = [(a, b) for a in spans for b in spans if a[1] != b[1] and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert at_once  # two trainers, each on a policy of its own, at the same time
