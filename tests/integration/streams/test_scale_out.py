"""Two workers of the same app share the partitions; one is SIGKILLed mid-stream and the other
takes its partitions over (validation, the internal topic, both tables' changelogs): every policy
gets exactly the triggers its feedback crosses, each naming exactly its events, none lost, none
sent twice (the first round's triggers may be re-read by the survivor: their state says they were
delivered, so they are not sent again).

Three policies, one per internal-topic partition, so each worker owns at least one policy's ledger
when the first is killed, whichever partitions the group gave it."""

import time
from collections import Counter

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka.admin import AdminClient

from schemas import TrainingStatus, TrainTrigger
from streams.app import app_id
from tests.integration.streams.conftest import feedback_event
from trainers.replay import replay_trigger

pytestmark = pytest.mark.integration

THRESHOLD = 40  # per round and policy; the buffer holds both rounds


def one_policy_per_partition(partitions: int) -> list[str]:
    """Policy names that the producer's partitioner puts on partitions 0 .. n-1 of the internal topic."""
    by_partition: dict[int, str] = {}
    n = 0
    while len(by_partition) < partitions:
        name = f"policy-{n}"
        by_partition.setdefault(DefaultPartitioner()(name.encode(), list(range(partitions)), list(range(partitions))), name)
        n += 1
    return [by_partition[p] for p in range(partitions)]


def wait_for_members(settings, count: int, timeout: float = 90.0) -> None:
    """Until the app's group has `count` members, each assigned partitions."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + timeout
    members = []
    while time.monotonic() < deadline:
        group = admin.describe_consumer_groups([app_id(settings)])[app_id(settings)].result()
        members = [m for m in group.members if m.assignment and m.assignment.topic_partitions]
        if len(members) == count and str(group.state).endswith("STABLE"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{len(members)} of {count} members assigned after {timeout:.0f}s")


def send(client, events):
    for event in events:
        client.send("feedback", event, key=event.user_id)
    client.flush()


def test_two_workers_one_sigkilled_mid_stream_lose_and_repeat_no_trigger(settings, start_worker, reader, client, tmp_path):
    policies = one_policy_per_partition(settings.kafka.partitions)
    rounds = {p: [feedback_event(n, policy=p) for n in range(2 * THRESHOLD)] for p in policies}
    limits = {"train_threshold": THRESHOLD, "buffer_size": 2 * THRESHOLD}
    die_now = tmp_path / "die-now"
    doomed = start_worker(die_when_file=die_now, tag="doomed", **limits)
    start_worker(tag="survivor", **limits)
    wait_for_members(settings, 2)
    triggers = reader("train-triggers")

    # Round one: each policy crosses the threshold once, on whichever worker owns it.
    send(client, [e for p in policies for e in rounds[p][:THRESHOLD]])
    first = [TrainTrigger.model_validate_json(v) for v in triggers.wait_for(len(policies), timeout=60)]
    for trigger in first:
        client.send(
            "training-status",
            TrainingStatus(trigger_id=trigger.trigger_id, policy=trigger.policy, state="finished"),
            trigger.policy,
        )
    client.flush()

    # Round two, half of it: the doomed worker dies at its first batch of it, before acking that batch.
    die_now.touch()
    send(client, [e for p in policies for e in rounds[p][THRESHOLD : THRESHOLD + THRESHOLD // 2]])
    assert doomed.services["streams"].proc.wait(timeout=60) < 0  # SIGKILLed
    # The rest, with duplicates from both rounds, while the survivor takes the partitions over.
    duplicates = [e for p in policies for e in rounds[p][:3] + rounds[p][THRESHOLD : THRESHOLD + 3]]
    send(client, [e for p in policies for e in rounds[p][THRESHOLD + THRESHOLD // 2 : 2 * THRESHOLD]] + duplicates)

    triggers.wait_for(2 * len(policies), timeout=120)
    triggers.poll(5.0)  # a re-sent or extra trigger would show up here
    received = [TrainTrigger.model_validate_json(v) for v in triggers.values]
    assert len(received) == 2 * len(policies), Counter(t.policy for t in received)
    assert len({t.trigger_id for t in received}) == len(received)  # none sent twice
    for policy in policies:
        mine = [t for t in received if t.policy == policy]
        assert [len(t.event_ids) for t in mine] == [THRESHOLD, 2 * THRESHOLD]
        assert set(mine[0].event_ids) == {e.event_id for e in rounds[policy][:THRESHOLD]}
        assert set(mine[1].event_ids) == {e.event_id for e in rounds[policy][: 2 * THRESHOLD]}  # the rolling buffer: both rounds
        sent = {e.event_id: e for e in rounds[policy]}
        for trigger in mine:
            assert replay_trigger(settings, trigger) == [sent[i] for i in trigger.event_ids]
