"""Core subcommands: `config show|reference`, `kafka up|down|status`, `topics create|list`, `schemas export`."""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path

import yaml

from core.settings import Settings
from devtools.kafka_cluster import LocalCluster
from devtools.kafka_local import LocalBroker, Sasl
from rlhf.arguments import command, group, settings_of


def broker_of(settings: Settings, secure: bool = False, brokers: int = 1) -> LocalBroker | LocalCluster:
    """The local broker (or cluster) these settings and flags name; each kind has its own data directory."""
    k = settings.kafka
    data_dir = settings.kafka_data_dir.with_name(
        settings.kafka_data_dir.name + (f"-{brokers}" if brokers > 1 else "") + ("-secure" if secure else "")
    )
    sasl = _local_user(settings, data_dir) if secure else None
    if brokers > 1:
        return LocalCluster.consecutive(data_dir, brokers, k.port, k.version, sasl)
    return LocalBroker(data_dir, port=k.port, controller_port=k.controller_port, version=k.version, sasl=sasl)


def _local_user(settings: Settings, data_dir: Path) -> Sasl:
    """The secured broker's user: kafka.sasl_username / sasl_password when configured, else `rlhf`
    with a password made once and kept in DATA/sasl-password (mode 0600)."""
    k = settings.kafka
    if k.sasl_password is not None:
        return Sasl(k.sasl_username or "rlhf", k.sasl_password.get_secret_value())
    file = data_dir / "sasl-password"
    if not file.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return Sasl(k.sasl_username or "rlhf", file.read_text().strip())


def _config_show(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    if args.describe:
        from core.config_reference import describe

        print(describe(settings), end="")
        return
    data = json.loads(settings.model_dump_json())  # SecretStr prints as '**********'
    print(yaml.safe_dump({"rlhf": data}, sort_keys=False), end="")


def _config_reference(args: argparse.Namespace) -> None:
    from core.config_reference import reference_markdown

    print(reference_markdown(), end="")


def _kafka_up(args: argparse.Namespace) -> None:
    broker = broker_of(settings_of(args), args.secure, args.brokers)
    print(f"starting Kafka {broker.version} (KRaft) on {broker.bootstrap_servers}, data in {broker.data_dir} ...", flush=True)
    broker.up()
    print(f"ready: {broker.bootstrap_servers}")
    print(f"  RLHF_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}")
    if broker.sasl is not None:
        tls = (broker.nodes[0] if isinstance(broker, LocalCluster) else broker).tls
        password = (
            f"$(cat {broker.data_dir / 'sasl-password'})"
            if (broker.data_dir / "sasl-password").is_file()
            else "<your kafka.sasl_password>"
        )
        print(
            "  RLHF_KAFKA__SECURITY_PROTOCOL=SASL_SSL RLHF_KAFKA__SASL_MECHANISM=SCRAM-SHA-512 "
            f"RLHF_KAFKA__SASL_USERNAME={broker.sasl.username}\n"
            f"  RLHF_KAFKA__SASL_PASSWORD={password} RLHF_KAFKA__SSL_CA_LOCATION={tls.ca if tls else ''}"
        )
    if isinstance(broker, LocalCluster):
        print(
            f"  RLHF_KAFKA__REPLICATION_FACTOR={min(3, len(broker.ports))} "
            f"RLHF_KAFKA__MIN_INSYNC_REPLICAS={min(2, len(broker.ports))}"
        )


def _kafka_down(args: argparse.Namespace) -> None:
    broker = broker_of(settings_of(args), args.secure, args.brokers)
    print("stopped" if broker.down() else "not running")


def _kafka_status(args: argparse.Namespace) -> int:
    broker = broker_of(settings_of(args), args.secure, args.brokers)
    nodes = broker.nodes if isinstance(broker, LocalCluster) else [broker]
    all_ready = True
    for node in nodes:
        pid = node.pid()
        ready = pid is not None and node.is_ready(brokers=len(nodes))
        all_ready &= ready
        print(
            f"{'running' if pid else 'stopped'}{f' (pid {pid})' if pid else ''}; "
            f"{'ready' if ready else 'not ready'} on {node.bootstrap_servers}; data {node.data_dir}"
        )
    return 0 if all_ready else 1


def _topics_create(args: argparse.Namespace) -> None:
    from sdk.admin import create_topics

    s = settings_of(args)
    for name, state in sorted(create_topics(s.kafka).items()):
        print(f"{state:8} {name}")


def _topics_list(args: argparse.Namespace) -> None:
    from schemas.topics import INTERNAL_TOPICS, TOPICS, partitions_of, topic_name

    s = settings_of(args)
    for spec in TOPICS.values():
        extra = ", ".join(f"{k}={v}" for k, v in spec.config.items())
        print(
            f"{topic_name(s.kafka.topic_prefix, spec.name):32} partitions={partitions_of(spec, s.kafka.partitions)} "
            f"key={spec.key} value={spec.value_schema.__name__} "
            f"versions={','.join(map(str, spec.value_versions))} "
            f"{','.join(spec.producers)} -> {','.join(spec.consumers)} "
            f"{extra} {'dlq=' + spec.dlq if spec.dlq else ''}"
        )
    for internal in INTERNAL_TOPICS:
        print(
            f"{s.kafka.topic_prefix + internal.name:32} (stream worker's own) key={internal.key} value={internal.value}: "
            f"{internal.purpose}"
        )


def _schemas_export(args: argparse.Namespace) -> None:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(Path(args.directory)):
        print(path)


def register(sub: argparse._SubParsersAction) -> None:
    cfg = group(sub, "config", "Inspect the configuration.")
    show = command(cfg, "show", "Print the effective configuration (file + environment + defaults).", _config_show)
    show.add_argument(
        "--describe", action="store_true", help="One entry per setting: dotted path, value, default and what it does."
    )
    command(cfg, "reference", "Print the configuration reference, docs/configuration.md (Markdown).", _config_reference)

    kafka = group(sub, "kafka", "Run a local Apache Kafka broker or cluster (KRaft, 127.0.0.1, no Docker), plaintext or secured.")
    for name, help, func in (
        (
            "up",
            "Start the broker (downloads the jars with Maven on first use) and wait until ready; "
            "prints the settings that reach it.",
            _kafka_up,
        ),
        ("down", "Stop the broker; data and topics persist.", _kafka_down),
        ("status", "Say whether the broker is running and answering (exit 1 if not).", _kafka_status),
    ):
        action = command(kafka, name, help, func)
        action.add_argument(
            "--secure",
            action="store_true",
            help="The SASL_SSL broker: SCRAM-SHA-256/512 and PLAIN users, TLS from a local CA (its own data directory).",
        )
        action.add_argument(
            "--brokers",
            type=int,
            default=1,
            metavar="N",
            help="A cluster of N KRaft nodes on consecutive loopback ports from kafka.port (its own data directory).",
        )

    topics = group(sub, "topics", "Topics as code.")
    command(topics, "create", "Create every registered topic that does not exist yet (idempotent).", _topics_create)
    command(topics, "list", "List the registered topics with keys, schemas and retention.", _topics_list)

    schemas = group(sub, "schemas", "Event schemas.")
    p = command(schemas, "export", "Write the JSON Schema of every event to DIR.", _schemas_export)
    p.add_argument("directory", metavar="DIR")
