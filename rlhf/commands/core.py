"""Core subcommands: `config show`, `kafka up|down|status`, `topics create|list`, `schemas export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from core.settings import Settings
from rlhf.arguments import command, group, settings_of
from devtools.kafka_local import LocalBroker


def broker_of(settings: Settings) -> LocalBroker:
    k = settings.kafka
    return LocalBroker(settings.kafka_data_dir, port=k.port, controller_port=k.controller_port, version=k.version)


def _config_show(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    data = json.loads(settings.model_dump_json())  # SecretStr prints as '**********'
    print(yaml.safe_dump({"rlhf": data}, sort_keys=False), end="")


def _kafka_up(args: argparse.Namespace) -> None:
    broker = broker_of(settings_of(args))
    print(f"starting Kafka {broker.version} (KRaft) on {broker.bootstrap_servers}, data in {broker.data_dir} ...", flush=True)
    broker.up()
    print(f"ready: {broker.bootstrap_servers} (pid {broker.pid()}, log {broker.log_file})")


def _kafka_down(args: argparse.Namespace) -> None:
    broker = broker_of(settings_of(args))
    print("stopped" if broker.down() else "not running")


def _kafka_status(args: argparse.Namespace) -> int:
    broker = broker_of(settings_of(args))
    pid = broker.pid()
    ready = pid is not None and broker.is_ready()
    print(f"{'running' if pid else 'stopped'}{f' (pid {pid})' if pid else ''}; {'ready' if ready else 'not ready'} on {broker.bootstrap_servers}; data {broker.data_dir}")
    return 0 if ready else 1


def _topics_create(args: argparse.Namespace) -> None:
    from sdk.admin import create_topics

    s = settings_of(args)
    for name, state in sorted(create_topics(s.kafka.bootstrap_servers, s.kafka.topic_prefix, s.kafka.partitions).items()):
        print(f"{state:8} {name}")


def _topics_list(args: argparse.Namespace) -> None:
    from schemas.topics import INTERNAL_TOPICS, TOPICS, partitions_of, topic_name

    s = settings_of(args)
    for spec in TOPICS.values():
        extra = ", ".join(f"{k}={v}" for k, v in spec.config.items())
        print(f"{topic_name(s.kafka.topic_prefix, spec.name):32} partitions={partitions_of(spec, s.kafka.partitions)} key={spec.key} "
              f"value={spec.value_schema.__name__} {','.join(spec.producers)} -> {','.join(spec.consumers)} {extra} {'dlq=' + spec.dlq if spec.dlq else ''}")  # fmt: skip
    for internal in INTERNAL_TOPICS:
        print(f"{s.kafka.topic_prefix + internal.name:32} (stream worker's own) key={internal.key} value={internal.value}: {internal.purpose}")


def _schemas_export(args: argparse.Namespace) -> None:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(Path(args.directory)):
        print(path)


def register(sub: argparse._SubParsersAction) -> None:
    cfg = group(sub, "config", "Inspect the configuration.")
    command(cfg, "show", "Print the effective configuration (file + environment + defaults).", _config_show)

    kafka = group(sub, "kafka", "Run a local single-node Apache Kafka broker (KRaft, 127.0.0.1, no Docker).")
    command(kafka, "up", "Start the broker (downloads the jars with Maven on first use) and wait until ready.", _kafka_up)
    command(kafka, "down", "Stop the broker; data and topics persist.", _kafka_down)
    command(kafka, "status", "Say whether the broker is running and answering (exit 1 if not).", _kafka_status)

    topics = group(sub, "topics", "Topics as code.")
    command(topics, "create", "Create every registered topic that does not exist yet (idempotent).", _topics_create)
    command(topics, "list", "List the registered topics with keys, schemas and retention.", _topics_list)

    schemas = group(sub, "schemas", "Event schemas.")
    p = command(schemas, "export", "Write the JSON Schema of every event to DIR.", _schemas_export)
    p.add_argument("directory", metavar="DIR")
