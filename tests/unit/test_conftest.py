"""tests/conftest.py itself: tests read no developer config, and the Docker path builds an Apache
Kafka 4.x container correctly (checked on the container object; no Docker engine is needed)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import testcontainers.core.container
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

import docker
from core.settings import load_settings
from tests.conftest import ApacheKafkaContainer, choose_kafka_source, isolate_from_user_config

REPO = Path(__file__).resolve().parents[2]
STRAY_YAML = "kafka:\n  partitions: 9\n"  # what a developer's ./rlhf.yaml might say


def test_this_session_sees_no_rlhf_variable_but_an_empty_config():
    assert [name for name in os.environ if name.startswith("RLHF_")] == ["RLHF_CONFIG"]
    assert Path(os.environ["RLHF_CONFIG"]).read_text() == ""


def test_isolation_hides_stray_variables_and_local_yaml(tmp_path, monkeypatch):
    (tmp_path / "rlhf.yaml").write_text(STRAY_YAML)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLHF_CONFIG")
    monkeypatch.setenv("RLHF_KAFKA__PARTITIONS", "7")
    monkeypatch.setenv("RLHF_FEEDBACK__MIN_RATING", "5")
    assert load_settings(None).kafka.partitions == 7  # not isolated: both would be read
    monkeypatch.delenv("RLHF_KAFKA__PARTITIONS")
    assert load_settings(None).kafka.partitions == 9

    monkeypatch.setenv("RLHF_KAFKA__PARTITIONS", "7")
    (tmp_path / "isolated").mkdir()
    isolate_from_user_config(monkeypatch, tmp_path / "isolated")
    settings = load_settings(None)
    assert (settings.kafka.partitions, settings.feedback.min_rating) == (3, 4)


def test_a_pytest_run_started_with_stray_config_ignores_it_even_at_import(tmp_path):
    (tmp_path / "rlhf.yaml").write_text(STRAY_YAML)
    (tmp_path / "test_probe.py").write_text(
        textwrap.dedent(
            """
            from core.settings import load_settings

            AT_IMPORT = load_settings(None).kafka.partitions  # during collection, before any fixture

            def test_defaults():
                assert AT_IMPORT == 3 and load_settings(None).kafka.partitions == 3
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RLHF_CONFIG"} | {"RLHF_KAFKA__PARTITIONS": "7", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", "test_probe.py"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_subprocess_gets_the_variables_its_test_sets(tmp_path):
    (tmp_path / "rlhf.yaml").write_text(STRAY_YAML)
    code = "from core.settings import load_settings; print(load_settings(None).kafka.partitions)"
    env = {**os.environ, "RLHF_KAFKA__PARTITIONS": "5", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"  # its own variable, and the empty config rather than ./rlhf.yaml


class FakeDockerClient:
    """Stands in for testcontainers' DockerClient, which connects to the engine when created."""

    def __init__(self, **_):
        pass

    def host(self) -> str:
        return "docker-host.example"


@pytest.fixture
def no_docker(monkeypatch):
    monkeypatch.setattr(testcontainers.core.container, "DockerClient", FakeDockerClient)


def test_kafka_container_is_one_kraft_node_advertising_its_bound_host_port(no_docker):
    kafka = ApacheKafkaContainer("apache/kafka:4.1.1", host_port=49321)
    assert kafka.image == "apache/kafka:4.1.1"
    assert kafka.bootstrap_servers == "docker-host.example:49321"
    assert kafka.ports == {"9092": 49321}  # bound, not mapped: the advertised port must be known before start
    env = kafka.env
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://docker-host.example:49321,BROKER://localhost:19092"
    assert env["KAFKA_LISTENERS"] == "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:19092,CONTROLLER://0.0.0.0:9093"
    assert (env["KAFKA_NODE_ID"], env["KAFKA_PROCESS_ROLES"]) == ("1", "broker,controller")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9093"
    assert (env["KAFKA_CONTROLLER_LISTENER_NAMES"], env["KAFKA_INTER_BROKER_LISTENER_NAME"]) == ("CONTROLLER", "BROKER")
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols == {"PLAINTEXT": "PLAINTEXT", "BROKER": "PLAINTEXT", "CONTROLLER": "PLAINTEXT"}
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert all(isinstance(value, str) for value in env.values())  # the Docker API takes strings
    wait = kafka._wait_strategy
    assert isinstance(wait, LogMessageWaitStrategy) and wait._message.search("[KafkaRaftServer nodeId=1] Kafka Server started")
    assert wait._startup_timeout == 120


def test_kafka_container_picks_a_free_host_port_by_default(no_docker):
    kafka = ApacheKafkaContainer()
    (port,) = kafka.ports.values()
    assert port is not None
    assert kafka.image == "apache/kafka:4.1.1" and kafka.bootstrap_servers == f"docker-host.example:{port}" and port > 0


def test_kafka_source_falls_back_to_the_local_broker_without_docker(monkeypatch):
    def no_engine(**_):
        raise docker.errors.DockerException("no engine")

    monkeypatch.setattr(docker, "from_env", no_engine)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert choose_kafka_source() == "local"
    monkeypatch.setattr(docker, "from_env", lambda **_: type("Engine", (), {"ping": lambda self: True})())
    assert choose_kafka_source() == "docker"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    assert choose_kafka_source() == "external"
