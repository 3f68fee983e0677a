"""How every client of the project reaches Kafka, from the one `kafka` settings section.

confluent-kafka (librdkafka: the SDK, trainer, sink, decider, replay, admin, demo) and aiokafka
(under Faust: the stream worker) spell the same settings differently; they are mapped here, once.

    Producer({**client_config(settings.kafka), **PRODUCER_DEFAULTS})
    faust.App(..., broker=faust_broker(settings.kafka), broker_credentials=faust_credentials(settings.kafka))

A wrong password or an untrusted certificate must fail in seconds with a message that says so,
not hang: librdkafka reports both as errors (`error_cb`, or a failed request) within a connection
attempt, and `describe_client_error` turns its codes into an answer naming the setting to check.
Every client's log and errors go through Python logging, quiet while a broker is away (`core.kafka_log`).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from core.errors import BrokerError
from core.kafka_log import KAFKA_LOG, client_logging
from core.settings import KafkaSettings


def client_config(kafka: KafkaSettings, logger: logging.Logger = KAFKA_LOG) -> dict[str, Any]:
    """librdkafka properties: the bootstrap servers and the security settings, secrets revealed
    here and only here (the dict goes to the client, never to a log), librdkafka's log to `logger`,
    and an `error_cb` that raises BrokerError from the client's next poll when the credentials or
    certificates are refused (other errors, a broker away, are logged, sparingly, and retried by the
    client as usual). A client that sets its own `error_cb` passes those errors to `raise_if_refused`."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        **client_logging(kafka.bootstrap_servers, logger, lambda err: raise_if_refused(err.code(), err.str(), kafka)),
    }
    if kafka.security_protocol.startswith("SASL_"):
        config |= {
            "sasl.mechanisms": kafka.sasl_mechanism,
            "sasl.username": kafka.sasl_username,
            "sasl.password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        }
    if kafka.security_protocol.endswith("SSL"):
        optional = {
            "ssl.ca.location": kafka.ssl_ca_location,
            "ssl.certificate.location": kafka.ssl_certificate_location,
            "ssl.key.location": kafka.ssl_key_location,
        }
        config |= {k: str(v) for k, v in optional.items() if v is not None}
        if kafka.ssl_key_password is not None:
            config["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    return config


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """Python's TLS context for the same settings (aiokafka takes one), or None without TLS."""
    if not kafka.security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None)
    if kafka.ssl_certificate_location is not None:
        password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
        context.load_cert_chain(str(kafka.ssl_certificate_location), str(kafka.ssl_key_location), password)
    return context


def faust_broker(kafka: KafkaSettings) -> list[str]:
    return [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust's `broker_credentials` (SASLCredentials / SSLCredentials), or None for PLAINTEXT."""
    import faust

    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=password, ssl_context=context, mechanism=kafka.sasl_mechanism
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


# librdkafka error codes (KafkaError) that mean "these credentials or certificates are refused".
_AUTHENTICATION = -169  # _AUTHENTICATION: SASL failed
_SSL = -181  # _SSL: handshake failed (an untrusted certificate, a wrong CA)


def raise_if_refused(code: int, text: str, kafka: KafkaSettings) -> None:
    refused = describe_client_error(code, text, kafka)
    if refused is not None:
        raise BrokerError(refused)


def describe_client_error(code: int, text: str, kafka: KafkaSettings) -> str | None:
    """A clear sentence for an authentication or TLS failure, naming what to check; None otherwise."""
    if code == _AUTHENTICATION:
        return (
            f"Kafka refused the credentials of user {kafka.sasl_username!r} "
            f"({kafka.sasl_mechanism} over {kafka.security_protocol}): check kafka.sasl_username and kafka.sasl_password ({text})"
        )
    if code == _SSL:
        return (
            f"TLS handshake with Kafka failed: is the broker's certificate signed by kafka.ssl_ca_location "
            f"({kafka.ssl_ca_location or 'the system CAs'})? ({text})"
        )
    return None
