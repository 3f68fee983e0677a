"""The one mapping of the `kafka` settings to confluent-kafka and Faust: what each client gets, what
is refused up front, and that no secret shows in `rlhf config show`, a repr or a settings error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faust
import pytest

from core.errors import BrokerError, ConfigError
from core.kafka_clients import client_config, describe_client_error, faust_broker, faust_credentials, raise_if_refused
from core.settings import load_settings
from devtools.kafka_tls import ensure_tls

REPO = Path(__file__).resolve().parents[3]
SECRET = "hunter2-not-in-logs"


def secure(tmp_path, **kafka):
    ca = ensure_tls(tmp_path / "tls").ca  # a real CA file: the Faust mapping loads it into an SSL context
    return load_settings(
        None,
        home=tmp_path,
        kafka={
            "bootstrap_servers": "b1:9094,b2:9094",
            "security_protocol": "SASL_SSL",
            "sasl_username": "rlhf",
            "sasl_password": SECRET,
            "ssl_ca_location": ca,
            **kafka,
        },
    ).kafka


def test_plaintext_is_the_bootstrap_servers_and_nothing_else():
    config = client_config(load_settings(None).kafka)
    assert {k: v for k, v in config.items() if k not in ("error_cb", "logger")} == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
        "log.connection.close": False,
    }
    assert faust_credentials(load_settings(None).kafka) is None


def test_sasl_ssl_maps_for_librdkafka_and_for_faust(tmp_path):
    kafka = secure(tmp_path)
    config = client_config(kafka)
    assert {
        k: config[k] for k in ("security.protocol", "sasl.mechanisms", "sasl.username", "sasl.password", "ssl.ca.location")
    } == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "rlhf",
        "sasl.password": SECRET,
        "ssl.ca.location": str(tmp_path / "tls" / "ca.pem"),
    }
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.protocol.value == "SASL_SSL"
    assert (credentials.username, credentials.password, credentials.mechanism.value) == ("rlhf", SECRET, "SCRAM-SHA-512")
    assert faust_broker(kafka) == ["kafka://b1:9094", "kafka://b2:9094"]


def test_refusals_are_named_and_other_errors_pass(tmp_path):
    kafka = secure(tmp_path)
    with pytest.raises(BrokerError, match="refused the credentials of user 'rlhf'.*kafka.sasl_password"):
        raise_if_refused(-169, "SASL authentication error", kafka)
    described = describe_client_error(-181, "SSL handshake failed", kafka)
    assert described is not None and "kafka.ssl_ca_location" in described
    raise_if_refused(-195, "Broker transport failure", kafka)  # a broker away: the client retries, no raise


def test_incomplete_security_settings_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="kafka.sasl_password: required with security_protocol SASL_SSL") as info:
        load_settings(None, kafka={"security_protocol": "SASL_SSL", "sasl_username": "rlhf"})
    with pytest.raises(ConfigError, match="min_insync_replicas: 2 is more than replication_factor 1"):
        load_settings(None, kafka={"min_insync_replicas": 2})
    assert SECRET not in str(info.value)


def test_config_show_and_reprs_print_no_secret(tmp_path):
    kafka = secure(tmp_path)
    assert SECRET not in repr(kafka) and SECRET not in kafka.model_dump_json()
    env = {
        "RLHF_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "RLHF_KAFKA__SASL_USERNAME": "rlhf",
        "RLHF_KAFKA__SASL_PASSWORD": SECRET,
        "RLHF_CLICKHOUSE__DASHBOARD_KEYS": f'["{SECRET}-dash"]',
        "RLHF_HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    shown = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "config", "show"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "sasl_username: rlhf" in shown.stdout and SECRET not in shown.stdout + shown.stderr
