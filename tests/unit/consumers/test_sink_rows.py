"""The sink's pure parts: event -> row (positive, reward), batching and in-batch dedupe. No I/O."""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import pytest
from confluent_kafka import Message
from pydantic import BaseModel

from consumers.sink.consumer import Batch
from consumers.sink.rows import ROUTES, feedback_row, interaction_row
from core.settings import load_settings
from schemas import (
    DeadLetter,
    ErasureRequest,
    ExposureEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelPublished,
    TrainingStatus,
    WindowMetrics,
    parse_event,
)
from schemas.events import Turn
from schemas.experiments import Arm, ExperimentDecided, ExperimentEvent, ExperimentStarted

SETTINGS = load_settings(None)


def fb(**kw) -> FeedbackEvent:
    return FeedbackEvent(interaction_id="i1", user_id="u1", query="q?", response="a", model_version="v1", **kw)


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def message(topic: str, partition: int, offset: int) -> Message:
    """A consumed record as Batch sees it: it reads only the topic, partition and offset."""
    return cast(Message, FakeMessage(topic, partition, offset))


@pytest.mark.parametrize(
    "kw,positive,reward",
    [
        ({"feedback_type": "thumbs_up"}, 1, 1.0),
        ({"feedback_type": "thumbs_down"}, 0, 0.0),
        ({"feedback_type": "rating", "rating": 5}, 1, 1.0),
        ({"feedback_type": "rating", "rating": 4}, 1, 0.75),
        ({"feedback_type": "rating", "rating": 3}, 0, 0.5),
        ({"feedback_type": "correction", "correction": "better"}, 0, 0.0),
    ],
)
def test_feedback_row_derives_positive_and_reward(kw, positive, reward):
    row = feedback_row(fb(**kw), SETTINGS)
    assert row["positive"] == positive and row["reward"] == fb(**kw).reward == reward
    assert row["experiment"] == "" and row["variant"] == ""  # NULL-free columns for the views' GROUP BY


def test_positive_follows_configured_min_rating():
    strict = load_settings(None, feedback={"min_rating": 5})
    assert feedback_row(fb(feedback_type="rating", rating=4), strict)["positive"] == 0


# One real event per route, optional fields left unset where the row must fill them in.
START = datetime(2025, 3, 1, tzinfo=UTC)
SAMPLES: dict[str, BaseModel] = {
    "interactions": InteractionEvent(user_id="u1", query="q?", response="a", model_version="v1", latency_ms=12.5),
    "feedback": fb(feedback_type="rating", rating=2, metadata={"k": 1}),
    "exposures": ExposureEvent(user_id="u1", experiment="policy-ab", variant="control", model_version="v1"),
    "metrics": WindowMetrics(
        window_start=START,
        window_end=START.replace(minute=1),
        model_version="v1",
        feedback_type="rating",
        count=3,
        rating_sum=11,
        rating_count=3,
    ),
    "training-status": TrainingStatus(
        trigger_id="t1", policy="assistant", state="progress", stage="ppo", metrics={"mean_score": 0.4, "kl": 0.01}
    ),
    "model-published": ModelPublished(
        version="assistant-v2", policy="assistant", trigger_id="t1", decision="candidate", metrics={"mean_reward_after": 0.5}
    ),
    "experiments": ExperimentEvent(
        ExperimentStarted(
            experiment_id="policy-ab:assistant-v2",
            policy="assistant",
            trigger_id="t1",
            control_version="assistant-v1",
            treatment_version="assistant-v2",
            salt="s",
            horizon_users=2000,
            horizon_s=3600.0,
            arms=(
                Arm(name="control", model_version="assistant-v1", weight=1),
                Arm(name="variant_a", model_version="assistant-v2", weight=1),
            ),
        )
    ),
    "feedback-dlq": DeadLetter(
        reason="invalid FeedbackEvent: rating: required",
        origin_topic="rlhf.feedback",
        origin_partition=2,
        origin_offset=41,
        key="u1",
        value="{not json",
    ),
    "train-triggers-dlq": DeadLetter(
        reason="TrainingError: no accepted feedback",
        origin_topic="rlhf.train-triggers",
        origin_partition=0,
        origin_offset=7,
        value="{}",
    ),
    "erasures": ErasureRequest(user_id="u1", reason="ticket 42"),
}


@pytest.mark.parametrize("name", ROUTES)
def test_every_route_row_fits_its_arrow_schema(name):
    assert name in SAMPLES, f"route {name!r} has no sample event here: add one"
    route, event = ROUTES[name], SAMPLES[name]
    assert isinstance(event, route.model)
    row = route.row(event, SETTINGS)
    schema = route.table.schema
    assert set(row) == set(schema.names)  # from_pylist would drop an extra key and NULL a missing one
    table = route.table.to_arrow([row])  # raises on a value of the wrong type
    assert table.num_rows == 1
    assert all(table.column(f.name).null_count == 0 for f in schema if not f.nullable), table.to_pylist()


def test_experiment_rows_keep_each_kind_and_the_decision_statistics():
    decided = ExperimentDecided(
        experiment_id="policy-ab:assistant-v2",
        policy="assistant",
        trigger_id="t1",
        outcome="promote",
        serving_version="assistant-v2",
        statistics={"lift": 0.12, "sequential_p": 0.01},
        reason="lift +12%",
    )
    route = ROUTES["experiments"]
    started = SAMPLES["experiments"]
    assert isinstance(started, ExperimentEvent)
    rows = [route.row(parse_event(ExperimentEvent, e.to_bytes()), SETTINGS) for e in (started.root, decided)]
    stored = route.table.to_arrow(rows).to_pylist()
    assert [r["kind"] for r in stored] == ["started", "decided"]
    assert stored[0]["treatment_version"] == "assistant-v2" and stored[0]["outcome"] == "" and stored[0]["statistics"] == []
    assert stored[1]["outcome"] == "promote" and dict(stored[1]["statistics"]) == {"lift": 0.12, "sequential_p": 0.01}


def test_feedback_row_keeps_the_rating():
    event = SAMPLES["feedback"]
    assert isinstance(event, FeedbackEvent)
    row = feedback_row(event, SETTINGS)
    assert ROUTES["feedback"].table.to_arrow([row]).column("rating").to_pylist() == [2]


def test_batch_dedupes_ids_and_tracks_next_offsets():
    batch = Batch()
    a, b = feedback_row(fb(feedback_type="thumbs_up"), SETTINGS), feedback_row(fb(feedback_type="thumbs_down"), SETTINGS)
    batch.add(message("t.feedback", 0, 10), "feedback", a)
    batch.add(message("t.feedback", 0, 11), "feedback", a)  # the producer re-sent it
    batch.add(message("t.feedback", 1, 5), "feedback", b)
    batch.add(message("t.feedback", 1, 6))  # dead-lettered: offset only
    assert len(batch.rows["feedback"]) == 2 and batch.messages == 4
    assert batch.offsets == {("t.feedback", 0): 12, ("t.feedback", 1): 7}
    assert batch.due(max_rows=4, max_seconds=60) and not batch.due(max_rows=5, max_seconds=60)
    assert not Batch().due(max_rows=1, max_seconds=0)


def test_a_dead_letter_row_names_its_dlq():
    rows = [ROUTES[name].row(SAMPLES[name], SETTINGS) for name in ("feedback-dlq", "train-triggers-dlq")]
    assert [(r["dlq"], r["origin_topic"], r["origin_offset"]) for r in rows] == [
        ("feedback-dlq", "rlhf.feedback", 41),
        ("train-triggers-dlq", "rlhf.train-triggers", 7),
    ]


def test_a_row_holds_the_turns_place_in_its_conversation():
    context = (
        Turn(role="system", content="Be brief."),
        Turn(role="user", content="Mail?"),
        Turn(role="assistant", content="Øpen."),
    )
    turn = {"context": context, "conversation_id": "c1", "turn_index": 1}
    for row in (
        feedback_row(fb(feedback_type="thumbs_up", **turn), SETTINGS),
        interaction_row(
            InteractionEvent(user_id="u1", query="q?", response="a", model_version="v1", latency_ms=1, **turn), SETTINGS
        ),
    ):
        assert json.loads(row["context"]) == [t.model_dump() for t in context] and row["context"].startswith('[{"role":"system"')
        assert (row["conversation_id"], row["turn_index"], row["context_turns"], row["context_chars"]) == ("c1", 1, 3, 19)
    old = feedback_row(fb(feedback_type="thumbs_up", schema_version=1), SETTINGS)  # a version 1 event: its own conversation
    assert (old["conversation_id"], old["turn_index"], old["context"], old["context_turns"], old["context_chars"]) == (
        "i1",
        0,
        "[]",
        0,
        0,
    )
