"""The loop on a SASL_SSL broker (`rlhf kafka up --secure`'s LocalBroker): SDK -> stream worker ->
train trigger -> trainer consumer -> sink, every client authenticated with SCRAM over TLS from the
one `kafka` settings section; a wrong password or an untrusted CA is a clear error within seconds."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumers.trainer.job import ensure_base_policy
from core.errors import BrokerError
from core.kafka_clients import client_config
from demo.supervisor import Supervisor
from devtools.kafka_local import LocalBroker, Sasl, free_port
from schemas import ModelPublished, TrainTrigger, parse_event
from schemas.topics import topic_name
from sdk.admin import create_topics
from sdk.client import FeedbackClient
from tests.conftest import FAST_TRAINING, make_settings
from tests.integration.analytics.conftest import REPO, SinkProcess
from trainers.synthetic import feedback_events, split_questions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(
        tmp_path_factory.mktemp("secure-kafka"),
        port=free_port(),
        controller_port=free_port(),
        sasl=Sasl("rlhf-it", secrets.token_urlsafe(16)),
    )
    broker.up()
    yield broker
    broker.down()


def secure_settings(broker: LocalBroker, home: Path, **kafka):
    assert broker.sasl is not None and broker.tls is not None
    return make_settings(
        broker.bootstrap_servers,
        home,
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": broker.sasl.username,
            "sasl_password": broker.sasl.password,
            "ssl_ca_location": broker.tls.ca,
            **kafka,
        },
    )


def env_of(settings) -> dict[str, str]:
    k = settings.kafka
    return {
        "RLHF_HOME": str(settings.home),
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": k.topic_prefix,
        "RLHF_KAFKA__SECURITY_PROTOCOL": k.security_protocol,
        "RLHF_KAFKA__SASL_MECHANISM": k.sasl_mechanism,
        "RLHF_KAFKA__SASL_USERNAME": k.sasl_username or "",
        "RLHF_KAFKA__SASL_PASSWORD": k.sasl_password.get_secret_value() if k.sasl_password else "",
        "RLHF_KAFKA__SSL_CA_LOCATION": str(k.ssl_ca_location),
    }


def first_on(settings, topic: str, model, timeout: float, services: Supervisor):
    consumer = Consumer({**client_config(settings.kafka), "group.id": "it-tail", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic_name(settings.kafka.topic_prefix, topic), 0, 0)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            services.check()
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return parse_event(model, msg.value())
        raise AssertionError(f"nothing on {topic} within {timeout}s")
    finally:
        consumer.close()


def test_the_loop_runs_authenticated_over_sasl_ssl(secure_broker, tmp_path):
    settings = secure_settings(secure_broker, tmp_path)
    create_topics(settings.kafka)
    env = {
        **os.environ,
        **FAST_TRAINING,
        **env_of(settings),
        "RLHF_REGISTRY__PROMOTION_MARGIN": "-1.0",
        "RLHF_AB_TESTING__ENABLED": "false",
    }
    ensure_base_policy(settings)
    services = Supervisor(tmp_path / "logs", env)
    # The environment's names are all RLHF_*: none fills SinkProcess's `port` or `launcher`.
    sink = SinkProcess(settings, **env_of(settings))  # type: ignore[arg-type]
    try:
        services.start("streams", "streams", "worker")
        services.start("trainer", "trainer", "run", "--backoff", "1")
        train, _ = split_questions()
        with FeedbackClient.from_settings(settings) as client:
            client.collection_rate = 1.0
            sent = [client.feedback(event) for event in feedback_events(train, 120, seed=3)]
        trigger = first_on(settings, "train-triggers", TrainTrigger, 120, services)
        assert len(trigger.event_ids) >= 100
        published = first_on(settings, "model-published", ModelPublished, 400, services)
        assert published.trigger_id == trigger.trigger_id
        sink.wait_ready()
        sink.wait_counts({"feedback": len(sent)})
    finally:
        services.stop_all()
        assert sink.stop() == 0, sink.output()


def test_a_wrong_password_or_an_untrusted_ca_is_a_clear_error_within_seconds(secure_broker, tmp_path):
    wrong = secure_settings(secure_broker, tmp_path, sasl_password="not-the-password")
    started = time.monotonic()
    with pytest.raises(BrokerError, match="refused the credentials of user 'rlhf-it'.*kafka.sasl_password"):
        create_topics(wrong.kafka)
    assert time.monotonic() - started < 10

    untrusted = secure_settings(secure_broker, tmp_path, ssl_ca_location=Path("/etc/ssl/certs/ca-certificates.crt"))
    started = time.monotonic()
    with pytest.raises(BrokerError, match="TLS handshake with Kafka failed.*kafka.ssl_ca_location"):
        create_topics(untrusted.kafka)
    assert time.monotonic() - started < 10

    # The same through the CLI, as an operator meets it: one line, exit 2, no traceback, no password.
    done = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "topics", "create"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env_of(wrong)},
    )
    assert done.returncode == 2 and "refused the credentials" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "not-the-password" not in done.stderr + done.stdout
