"""Both event versions through the real worker on the real broker. A malformed conversation (a turn
with an unknown role, 10,000 turns, an empty turn) is dead-lettered with a reason naming the field
and the worker takes the good event after it. A version 1 event produced with kcat (as a producer
from before conversations wrote it) is accepted and buffered (it triggers a training), stored by the
sink as a one-turn conversation, and the trainer's replay and dataset read it as a one-turn example."""

import json
import shutil
import subprocess

import pytest

from schemas import DeadLetter, TrainTrigger
from schemas.events import Turn
from schemas.topics import topic_name
from tests.integration.analytics.conftest import SinkProcess
from tests.integration.streams.conftest import feedback_event
from trainers.chat_format import Conversation
from trainers.dataset import build_dataset
from trainers.replay import replay_trigger

pytestmark = pytest.mark.integration

KCAT = shutil.which("kcat") or "/usr/bin/kcat"
CONVERSATION = {"conversation_id": "c1", "turn_index": 1}
MALFORMED = {
    "context.0.role": [{"role": "robot", "content": "Beep."}],
    "context": [{"role": "user", "content": "again?"}] * 10_000,
    "context.0": [{"role": "user", "content": "  "}],
}
REASONS = {
    "context.0.role": "context.0.role: Input should be 'system', 'user' or 'assistant'",
    "context": "context: Tuple should have at most 64 items after validation, not 10000",
    "context.0": "context.0.content: empty (a turn must say something)",
}
# A version 1 FeedbackEvent exactly as producers wrote it before conversations: no conversation fields.
VERSION_1 = {
    "schema_version": 1,
    "timestamp": "2025-03-01T12:00:00Z",
    "event_id": "e-v1",
    "interaction_id": "i-v1",
    "user_id": "u-old",
    "query": "How do I reset my password in Mail?",
    "response": "Open Settings, then Accounts.",
    "model_version": "v1",
    "policy": "assistant",
    "experiment": None,
    "variant": None,
    "feedback_type": "thumbs_up",
    "rating": None,
    "correction": None,
    "metadata": {},
}


def test_a_malformed_conversation_is_dead_lettered_naming_the_field_and_the_worker_goes_on(
    settings, start_worker, reader, client
):
    feedback_topic = topic_name(settings.kafka.topic_prefix, "feedback")
    good = feedback_event(
        0, context=(Turn(role="user", content="Mail?"), Turn(role="assistant", content="Open it.")), **CONVERSATION
    )
    start_worker(train_threshold=1)
    triggers, dlq = reader("train-triggers"), reader("feedback-dlq")
    sent = {}
    for field, context in MALFORMED.items():  # one key: one partition, the good event after the bad ones
        sent[field] = json.dumps({**good.model_dump(mode="json"), "context": context}).encode()
        client.send_bytes(feedback_topic, sent[field], "u-conversation")
    client.send("feedback", good, key="u-conversation")
    client.flush()

    letters = {d.value: d for d in map(DeadLetter.model_validate_json, dlq.wait_for(3))}
    for field, value in sent.items():
        assert letters[value.decode()].reason == f"invalid FeedbackEvent: {REASONS[field]}", field
    trigger = TrainTrigger.model_validate_json(triggers.wait_for(1)[0])
    assert trigger.event_ids == (good.event_id,) and trigger.counts == {good.feedback_type: 1}
    assert replay_trigger(settings, trigger) == [good]  # the buffer names it; the replay has it whole
    assert len(dlq.poll(1.0)) == 3


@pytest.mark.skipif(not shutil.which(KCAT), reason=f"kcat is not installed ({KCAT}; apt-get install -y kcat)")
def test_a_version_1_event_produced_with_kcat_is_accepted_buffered_stored_and_trained_on(settings, start_worker, reader):
    feedback_topic = topic_name(settings.kafka.topic_prefix, "feedback")
    start_worker(train_threshold=1)
    triggers = reader("train-triggers")
    line = json.dumps(VERSION_1) + "\n"
    kcat = [KCAT, "-b", settings.kafka.bootstrap_servers, "-t", feedback_topic, "-P", "-k", VERSION_1["user_id"]]
    subprocess.run(kcat, input=line, text=True, check=True, capture_output=True, timeout=60)

    # The stream app accepts and buffers it: one event crosses a threshold of one.
    trigger = TrainTrigger.model_validate_json(triggers.wait_for(1)[0])
    assert trigger.event_ids == ("e-v1",) and trigger.counts == {"thumbs_up": 1} and trigger.model_version == "v1"

    # The sink stores it as a one-turn conversation: its own interaction, turn 0, no context.
    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        sink.wait_counts({"feedback": 1})
        stored = sink.get_json("/sql/conversation?conversation=i-v1")
        rows = [dict(zip(stored["columns"], row, strict=True)) for row in stored["data"]]
        assert [(r["row"], r["turn_index"], r["context"], r["context_turns"], r["context_chars"]) for r in rows] == [
            ("feedback", 0, "[]", 0, 0)
        ]
        by_turn = sink.get_json("/sql/positive_rate_by_turn")
        assert [dict(zip(by_turn["columns"], row, strict=True)) for row in by_turn["data"]] == [
            {"model_version": "v1", "variant": ""}
            | {
                "first_turn_feedback": 1,
                "first_turn_positive_rate": 1.0,
                "follow_up_feedback": 0,
                "follow_up_positive_rate": None,
            }
        ]
    finally:
        assert sink.stop() == 0, sink.output()

    # The trainer replays the trigger's offsets and builds its data: one example, a one-turn conversation.
    (event,) = replay_trigger(settings, trigger)
    assert (event.schema_version, event.context, event.conversation_id, event.turn_index) == (1, (), None, 0)
    data = build_dataset([event], eval_fraction=0.0)
    assert data.summary["events"] == {"accepted": 1, "invalid": 0, "by_type": {"thumbs_up": 1}}
    (point,) = data.train_points
    assert (point["response"], point["label"]) == (VERSION_1["response"], 1.0)
    assert Conversation.from_json(point["conversation"]) == Conversation(str(VERSION_1["query"]))  # no system prompt, no history
