"""The Faust agents under `agent.test_context()` with the memory store: no broker, no I/O.
Sends to topics are captured instead of produced."""

import asyncio
import json
from unittest.mock import AsyncMock

import pytest

from core.settings import Settings
from schemas import DeadLetter, FeedbackEvent, TrainingStatus, TrainTrigger
from schemas.experiments import Arm, ExperimentDecided, ExperimentStarted
from streams.app import build
from streams.records import PolicyRecord


@pytest.fixture
def streams(tmp_path):
    settings = Settings(
        home=tmp_path,
        kafka={"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "unit."},
        continuous_learning={"train_threshold": 4, "buffer_size": 10},
    )
    built = build(settings)
    for topic in built.topics.values():
        topic.send = AsyncMock()  # type: ignore[method-assign]
    return built


def feedback(n: int, **changes) -> bytes:
    event = FeedbackEvent(
        event_id=f"e{n}",
        interaction_id=f"i{n}",
        user_id="u1",
        query="q?",
        response="a",
        model_version="v1",
        feedback_type="thumbs_up",
    )
    return json.dumps({**event.model_dump(mode="json"), **changes}).encode()


def sent(streams, topic: str) -> list[dict]:
    return [call.kwargs for call in streams.topics[topic].send.await_args_list]


async def through_both_stages(streams, records: list[bytes]) -> None:
    """Feed raw feedback to `validate`, then what it forwarded to `policies`, as the worker would."""
    async with streams.validate.test_context() as validate:
        for n, value in enumerate(records):
            await validate.put(value, key=b"u1", partition=n % 3)
    async with streams.policies.test_context() as policies:
        for forwarded in sent(streams, "policy-events"):
            await policies.put(forwarded["value"], key=forwarded["key"].encode())
    await asyncio.sleep(0)


def test_validation_dead_letters_bad_records_and_forwards_good_ones(streams):
    records = [feedback(0), b"{oops", feedback(1, feedback_type="rating"), feedback(2, policy="search")]
    asyncio.run(through_both_stages(streams, records))
    dead = [DeadLetter.model_validate_json(call["value"]) for call in sent(streams, "feedback-dlq")]
    assert [(d.origin_partition, d.origin_offset) for d in dead] == [(1, 1), (2, 2)]
    assert "Invalid JSON" in dead[0].reason and "rating: required" in dead[1].reason
    forwarded = [PolicyRecord.model_validate_json(call["value"]) for call in sent(streams, "policy-events")]
    # One record per policy per validation batch; `put` waits for its batch, so each holds one event here.
    assert [(f.policy, [(a.event_id, a.partition, a.offset) for a in f.batch or ()]) for f in forwarded] == [
        ("assistant", [("e0", 0, 0)]),
        ("search", [("e2", 0, 3)]),
    ]
    assert [call["key"] for call in sent(streams, "policy-events")] == ["assistant", "search"]


def test_duplicates_are_dropped_and_threshold_triggers_once(streams):
    records = [feedback(n) for n in range(3)] + [feedback(1), feedback(2)] + [feedback(n) for n in range(3, 8)]
    asyncio.run(through_both_stages(streams, records))
    triggers = [TrainTrigger.model_validate_json(call["value"]) for call in sent(streams, "train-triggers")]
    assert len(triggers) == 1  # 8 accepted, threshold 4: the second crossing waits for the first training
    assert triggers[0].event_ids == ("e0", "e1", "e2", "e3") and triggers[0].counts == {"thumbs_up": 4}
    ps = streams.ledger.policy_state("assistant")
    assert (ps.accepted, ps.duplicates, ps.accepted_since_trigger) == (8, 2, 4)
    assert streams.state["policy:assistant"]["accepted"] == 8  # the Faust table holds the state


def experiment_step(kind: str, trigger_id: str) -> bytes:
    ids = {"experiment_id": f"policy-ab:v-{trigger_id}", "policy": "assistant", "trigger_id": trigger_id}
    if kind == "decided":
        return ExperimentDecided(**ids, outcome="promote", serving_version=f"v-{trigger_id}").to_bytes()
    arms = (
        Arm(name="control", model_version="v1", weight=1.0),
        Arm(name="variant_a", model_version=f"v-{trigger_id}", weight=1.0),
    )
    return ExperimentStarted(
        **ids, control_version="v1", treatment_version=f"v-{trigger_id}", arms=arms, salt="s1", horizon_users=10, horizon_s=60.0
    ).to_bytes()


def finished(trigger_id: str, stage: str) -> bytes:
    return TrainingStatus(trigger_id=trigger_id, policy="assistant", state="finished", stage=stage).to_bytes()


def test_an_open_experiment_holds_the_next_trigger_until_its_decision(streams):
    """The trainer's round as the worker reads it: trigger, experiment start, candidate status; the
    decision releases the held trigger, and a re-delivered start of that experiment holds nothing."""

    async def run() -> list[TrainTrigger]:
        async with (
            streams.validate.test_context() as validate,
            streams.forward_status.test_context() as status,
            streams.forward_experiments.test_context() as experiments,
            streams.policies.test_context() as policies,
        ):

            async def put(stage, value: bytes) -> list[TrainTrigger]:
                before = len(sent(streams, "policy-events"))
                await stage.put(value, key=b"assistant")
                for forwarded in sent(streams, "policy-events")[before:]:
                    await policies.put(forwarded["value"], key=forwarded["key"].encode())
                return [TrainTrigger.model_validate_json(call["value"]) for call in sent(streams, "train-triggers")]

            for n in range(4):
                triggers = await put(validate, feedback(n))
            first = triggers[0].trigger_id
            await put(experiments, experiment_step("started", first))
            await put(status, finished(first, "candidate"))
            await put(experiments, b"{oops")  # not forwarded: the next record is still read
            for n in range(4, 10):
                assert len(await put(validate, feedback(n))) == 1  # held: the experiment is open
            triggers = await put(experiments, experiment_step("decided", first))
            assert len(triggers) == 2 and triggers[1].event_ids == tuple(f"e{n}" for n in range(10))  # released
            await put(experiments, experiment_step("started", first))  # a re-delivered start: already decided
            await put(status, finished(triggers[1].trigger_id, "rejected"))
            for n in range(10, 14):
                triggers = await put(validate, feedback(n))
            return triggers

    triggers = asyncio.run(run())
    assert len(triggers) == 3 and triggers[2].event_ids == tuple(f"e{n}" for n in range(4, 14))
    assert streams.ledger.policy_state("assistant").experiments == {}
