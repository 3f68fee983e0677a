"""librdkafka's log and errors through Python logging (core.kafka_log): a broker that goes away is
said once, its errors counted, and its return said once; its `FAIL` log lines go to DEBUG."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import KafkaError

from core import kafka_log
from core.kafka_log import BrokerLog, client_logging

LOGGER = logging.getLogger("test.kafka")


@pytest.fixture(autouse=True)
def fast_probe(monkeypatch):
    monkeypatch.setattr(kafka_log, "PROBE_S", 0.05)


def wait_for(caplog, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in caplog.records):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in {[r.getMessage() for r in caplog.records]}")


def refused(port):
    return KafkaError(KafkaError._TRANSPORT, f"127.0.0.1:{port}/bootstrap: Connect to ipv4#127.0.0.1:{port} failed: refused")


def test_an_outage_is_said_once_counted_and_its_end_said_once(caplog):
    caplog.set_level(logging.DEBUG, LOGGER.name)
    broker = socket.socket()
    broker.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = broker.getsockname()[1]
    config = client_logging(f"127.0.0.1:{port}", LOGGER)
    for _ in range(5):
        config["error_cb"](refused(port))
    config["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    wait_for(caplog, "unreachable")
    broker.listen()
    wait_for(caplog, "reachable again")
    broker.close()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 2, said
    assert said[0].startswith(f"Kafka broker 127.0.0.1:{port} unreachable: ") and "Connect to" in said[0]
    assert said[1].startswith(f"Kafka broker 127.0.0.1:{port} reachable again after") and "(6 errors in between)" in said[1]


def test_an_error_of_a_broker_that_answers_is_logged_once_a_minute(caplog):
    caplog.set_level(logging.DEBUG, LOGGER.name)
    with socket.create_server(("127.0.0.1", 0)) as broker:
        port = broker.getsockname()[1]
        log = BrokerLog(f"127.0.0.1:{port}", LOGGER)
        for _ in range(2):
            log.on_error(KafkaError(KafkaError._TRANSPORT, f"127.0.0.1:{port}/1: Disconnected while requesting ApiVersion"))
            deadline = time.monotonic() + 5
            while f"127.0.0.1:{port}" in kafka_log._outages and time.monotonic() < deadline:
                time.sleep(0.02)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [f"Kafka client error: 127.0.0.1:{port}/1: Disconnected while requesting ApiVersion"]


def test_fail_lines_go_to_debug_others_keep_their_level_and_the_check_may_raise(caplog):
    caplog.set_level(logging.DEBUG, LOGGER.name)

    def check(err):
        if err.code() == KafkaError._AUTHENTICATION:
            raise RuntimeError("refused")

    log = BrokerLog("127.0.0.1:1", LOGGER, check)
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connect to ipv4#127.0.0.1:1 failed")
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "Configuration property x is ignored")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "FAIL [rdkafka#producer-1] Connect to ipv4#127.0.0.1:1 failed"),
        (logging.WARNING, "CONFWARN [rdkafka#producer-1] Configuration property x is ignored"),
    ]
    with pytest.raises(RuntimeError, match="refused"):
        log.on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error"))
    log.on_error(KafkaError(KafkaError._UNKNOWN_TOPIC, "unknown topic"))
    assert (
        caplog.records[-1].levelno == logging.WARNING and caplog.records[-1].getMessage() == "Kafka client error: unknown topic"
    )
