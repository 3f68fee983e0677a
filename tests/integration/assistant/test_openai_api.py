"""The OpenAI-compatible API and HTTP feedback on the real broker, driven by the official `openai`
client as a chat app would: a chat and a streamed chat inside an experiment, the client's errors,
and feedback posted with the returned token, which lands in Kafka and, through the sink, in
ClickHouse, attributed to the user's arm."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam
from pydantic import SecretStr

from analytics.assignment import assign
from assistant.feedback import feedback_event_id
from assistant.service import create_app
from core.settings import AssistantSettings, FeedbackSettings
from schemas import ExposureEvent, FeedbackEvent, InteractionEvent, parse_event
from schemas.topics import topic_name
from tests.integration.analytics.conftest import SinkProcess
from tests.integration.assistant.test_service import START, produce, registry  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
KEY = "sk-it"
QUESTION = "How do I reset my password?"


def read(settings, topic: str, model, expected: int, timeout: float = 30.0) -> list:
    """The topic's first `expected` records, parsed, read from the beginning by a plain consumer."""
    name = topic_name(settings.kafka.topic_prefix, topic)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "it-reader", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
        events: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(events) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                events.append(parse_event(model, msg.value()))
        return events
    finally:
        consumer.close()


@pytest.fixture
def app_settings(settings):
    # Every interaction collected, so each feedback below reaches Kafka.
    return settings.model_copy(
        update={"feedback": FeedbackSettings(collection_rate=1.0), "assistant": AssistantSettings(api_keys=(SecretStr(KEY),))}
    )


def test_a_chat_app_on_the_openai_client_chats_streams_and_sends_feedback(app_settings, registry):  # noqa: F811
    produce(app_settings, START)
    with TestClient(create_app(app_settings, registry)) as http:
        deadline = time.monotonic() + 30
        while http.get("/versions").json()["experiment"] != START.experiment_id:
            assert time.monotonic() < deadline, "the experiment was never routed"
            time.sleep(0.2)
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=http, max_retries=0)
        arm = assign(START.salt, "u-7", [(a.name, a.weight) for a in START.arms])
        version = {a.name: a.model_version for a in START.arms}[arm]

        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": QUESTION},
        ]
        reply = client.chat.completions.create(model="assistant", messages=messages, user="u-7", temperature=0.5, max_tokens=16)
        assert reply.model == version and reply.choices[0].message.content and reply.model_extra is not None
        assert {m.id for m in client.models.list().data} == {"base", "v-good"}

        stream = client.chat.completions.create(model="assistant", messages=messages, user="u-7", stream=True)
        streamed = list(stream)
        assert len({c.id for c in streamed}) == 1 and streamed[-1].choices[0].finish_reason in ("stop", "length")
        assert streamed[0].model_extra is not None
        token = streamed[0].model_extra["feedback_token"]

        with pytest.raises(openai.BadRequestError, match=r"messages\.0\.role"):
            client.chat.completions.create(model="assistant", messages=[{"role": "assistant", "content": "hi"}], user="u-7")
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=http, max_retries=0).models.list()

        # Feedback as a browser sends it: the token, no key. Up (clicked twice), then down on the first answer.
        for n, verdict in [(0, "thumbs_up"), (0, "thumbs_up"), (1, "thumbs_down")]:
            r = http.post(
                "/v1/feedback", json={"interaction_id": reply.id, "type": verdict, "token": reply.model_extra["feedback_token"]}
            )
            assert r.status_code == 200 and r.json()["event_id"] == feedback_event_id((reply.id, "verdict"), n), r.text
        r = http.post(
            "/v1/feedback",
            json={"interaction_id": streamed[0].id, "type": "rating", "rating": 5},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text

    interactions = read(app_settings, "interactions", InteractionEvent, 2)
    assert {(i.interaction_id, i.query, i.model_version, i.variant) for i in interactions} == {
        (reply.id, QUESTION, version, arm),
        (streamed[0].id, QUESTION, version, arm),
    }
    assert len(read(app_settings, "exposures", ExposureEvent, 2)) == 2
    feedback = read(app_settings, "feedback", FeedbackEvent, 4)
    assert [(f.interaction_id, f.feedback_type, f.variant, f.experiment, f.user_id) for f in feedback] == [
        (reply.id, "thumbs_up", arm, START.experiment_id, "u-7"),
        (reply.id, "thumbs_up", arm, START.experiment_id, "u-7"),
        (reply.id, "thumbs_down", arm, START.experiment_id, "u-7"),
        (streamed[0].id, "rating", arm, START.experiment_id, "u-7"),
    ]
    assert feedback[0].event_id == feedback[1].event_id and feedback[0].response == reply.choices[0].message.content

    # Through the sink into ClickHouse: three distinct events (the double click is one); the A/B
    # analysis counts the user once, in their arm, with each answer's latest verdict.
    sink = SinkProcess(app_settings)
    try:
        sink.wait_ready()
        sink.wait_counts({"feedback": 3, "exposures": 2, "interactions": 2})
        ab = sink.get_json(f"/sql/ab_users?experiment={START.experiment_id}")
        rows = {row[ab["columns"].index("variant")]: dict(zip(ab["columns"], row, strict=True)) for row in ab["data"]}
        assert {k: rows[arm][k] for k in ("users_exposed", "users", "feedback", "positives", "thumbs_down", "ratings")} == {
            "users_exposed": 1,
            "users": 1,
            "feedback": 2,
            "positives": 1,
            "thumbs_down": 1,
            "ratings": 1,
        }
        assert rows[arm]["model_version"] == version
    finally:
        assert sink.stop() == 0, sink.output()
