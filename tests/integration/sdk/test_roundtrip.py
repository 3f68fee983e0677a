"""10,000 SDK-produced feedback events are read back by an independent client and match the exported JSON Schema."""

import json
import shutil
import subprocess

import jsonschema
import pytest

from core.errors import EventValidationError
from devtools.kafka_local import LocalBroker
from schemas.export import export_json_schemas
from schemas.topics import topic_name
from sdk.client import FeedbackClient

pytestmark = pytest.mark.integration
N = 10_000


def read_all(bootstrap: str, topic: str, expected: int, local_broker: LocalBroker | None) -> list[str]:
    """Consume the whole topic with kcat (Debian) or, failing that, Kafka's own console consumer."""
    if shutil.which("kcat"):
        cmd = ["kcat", "-b", bootstrap, "-t", topic, "-C", "-e", "-q", "-f", "%s\n"]
    elif local_broker is not None:
        cmd = [
            *local_broker.console_consumer(),
            "--topic",
            topic,
            "--from-beginning",
            "--max-messages",
            str(expected),
            "--timeout-ms",
            "20000",
        ]
    else:
        pytest.skip("neither kcat nor the local broker's console consumer is available")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_sdk_events_read_back_by_independent_client(settings, local_broker, tmp_path):
    schema = json.loads(next(p for p in export_json_schemas(tmp_path) if p.name == "FeedbackEvent.schema.json").read_text())
    sent = set()
    with FeedbackClient.from_settings(settings) as client:
        client.collection_rate = 1.0
        for n in range(N):
            kind = ("thumbs_up", "thumbs_down", "rating", "correction")[n % 4]
            extra = {"rating": 1 + n % 5} if kind == "rating" else {"correction": f"fix {n}"} if kind == "correction" else {}
            ev = client.feedback(
                interaction_id=f"i{n}",
                user_id=f"u{n % 97}",
                query=f"q {n}?",
                response=f"a {n}",
                model_version="v1",
                feedback_type=kind,
                **extra,
            )
            assert ev is not None  # collection_rate 1.0: every one is sent
            sent.add(ev.event_id)
        for bad in ({"feedback_type": "rating"}, {"feedback_type": "thumbs_up", "rating": 5}, {"feedback_type": "correction"}):
            with pytest.raises(EventValidationError):
                client.feedback(interaction_id="bad", user_id="u-bad", query="q?", response="a", model_version="v1", **bad)
    assert client.delivered == N

    lines = read_all(settings.kafka.bootstrap_servers, topic_name(settings.kafka.topic_prefix, "feedback"), N, local_broker)
    received = [json.loads(line) for line in lines]
    validator = jsonschema.Draft202012Validator(schema)
    for record in received:
        validator.validate(record)
    assert {r["event_id"] for r in received} == sent and len(received) == N
    assert not any(r["user_id"] == "u-bad" for r in received)
