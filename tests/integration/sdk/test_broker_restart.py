"""`rlhf kafka down && rlhf kafka up` keeps topics and data; runs against its own broker, not the session one."""

import subprocess
import sys

import pytest
from confluent_kafka import Consumer, TopicPartition

from core.settings import load_settings
from devtools.kafka_local import free_port
from schemas.topics import TOPICS, topic_name
from sdk.client import FeedbackClient

pytestmark = pytest.mark.integration


def rlhf(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_down_up_keeps_topics_and_data(tmp_path, monkeypatch):
    import os

    port, cport = free_port(), free_port()
    env = {
        **os.environ,
        "RLHF_HOME": str(tmp_path),
        "RLHF_KAFKA__PORT": str(port),
        "RLHF_KAFKA__CONTROLLER_PORT": str(cport),
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
    }
    for key, value in env.items():
        if key.startswith("RLHF_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    try:
        assert "ready" in rlhf(env, "kafka", "up")
        assert rlhf(env, "topics", "create").count("created") == len(TOPICS)
        with FeedbackClient.from_settings(settings) as client:
            client.collection_rate = 1.0
            for n in range(50):
                client.feedback(
                    interaction_id=f"i{n}", user_id="u", query="q?", response="a", model_version="v1", feedback_type="thumbs_up"
                )
        assert "stopped" in rlhf(env, "kafka", "down")
        assert "ready" in rlhf(env, "kafka", "up")
        assert rlhf(env, "topics", "create").count("exists") == len(TOPICS)

        topic = topic_name(settings.kafka.topic_prefix, "feedback")
        consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "restart-check"})
        total = sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(settings.kafka.partitions)
        )
        consumer.close()
        assert total == 50
    finally:
        rlhf(env, "kafka", "down")
