"""Every route of the assistant fuzzed with schemathesis from the OpenAPI schema it serves, over the
micro policy and the real broker (issue 33): no 5xx, no response that breaks the schema (status,
content type, body), invalid input refused with a 4xx, and no event without a 2xx: the producer is
watched per request, and at the end the topics hold exactly the events the 2xx responses sent.

Two passes: every operation alone (schemathesis's examples, coverage and fuzzing phases, valid and
invalid data), then the stateful machine, which follows the schema's links from an answer to
`POST /v1/feedback` with its interaction id and feedback token. `FUZZ_EXAMPLES` sets the cases per
operation (default 50, ~20 s here and ~20 s for the dashboard; a longer local run: FUZZ_EXAMPLES=500)."""

from __future__ import annotations

import os
import time

import hypothesis
import pytest
import schemathesis
from confluent_kafka import Consumer, TopicPartition
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.core.errors import NoLinksFound
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from assistant.answering import Assistant, PolicyPool
from assistant.service import build_app
from core.settings import FeedbackSettings
from schemas.experiments import ExperimentBook
from schemas.topics import topic_name
from sdk.client import FeedbackClient
from tests.integration.assistant.test_service import registry  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EVENT_TOPICS = ("interactions", "exposures", "feedback")
# An invalid body may also be refused for its size (413, `assistant.max_body_bytes`) before it is read:
# a conversation's schema allows 64 turns of 16,000 characters, which fuzzing fills.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]}}}
)


class Watched:
    """The real producer, counting what the service asked it to send."""

    def __init__(self, client: FeedbackClient):
        self.client = client
        self.sent = 0

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def interaction(self, **event):
        sent = self.client.interaction(**event)
        self.sent += sent is not None
        return sent

    def exposure(self, **event):
        self.sent += 1
        return self.client.exposure(**event)

    def send(self, topic, event, key):
        self.sent += 1
        self.client.send(topic, event, key)


class Fuzzed:
    """The app under test and the per-request bookkeeping: requests by status, and events sent without a 2xx."""

    def __init__(self, settings, models):
        self.settings = settings
        self.producer = Watched(FeedbackClient.from_settings(settings))
        # The real producer behind a counter.
        self.assistant = Assistant(settings, PolicyPool(models, ExperimentBook()), self.producer)
        self.app = build_app(settings, self.assistant)
        self.statuses: dict[int, int] = {}
        self.by_operation: dict[str, int] = {}
        self.cases = 0
        self.unanswered_events: list[str] = []

    def call(self, case, **kwargs):
        before = self.producer.sent
        response = case.call(**kwargs)
        self.cases += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        key = f"{case.method} {case.path} {response.status_code}"
        self.by_operation[key] = self.by_operation.get(key, 0) + 1
        if not 200 <= response.status_code < 300 and self.producer.sent != before:
            self.unanswered_events.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}")
        return response

    def close(self) -> int:
        """Stop the app's worker and producer; the number of events the broker holds on the event topics."""
        self.assistant.close()
        self.producer.client.flush()
        self.producer.client.close()
        return on_topics(self.settings)


def fuzz(schema, call, examples: int) -> int:
    """Every operation of `schema` alone, valid and invalid cases, then the stateful machine along its links:
    each case through `call` (which returns the response), validated with CHECKS. The number of operations."""
    settings = hypothesis.settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck)
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
        try:
            strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
        except Exception:  # nothing to make invalid (no parameters, no body)
            pass

        @hypothesis.given(case=st.one_of(strategies))
        @settings
        def alone(case):
            case.validate_response(call(case), checks=CHECKS)

        alone()

    class Linked(schema.as_state_machine()):  # type: ignore[misc]
        def call(self, case, **kwargs):
            return call(case, **kwargs)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS)

    try:
        Linked.run(settings=hypothesis.settings(settings, max_examples=max(5, examples // 2), stateful_step_count=6))
    except NoLinksFound:  # an API whose answers name nothing another route takes (the dashboard)
        pass
    return len(operations)


def on_topics(settings) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "fuzz-count"})
    try:
        total = 0
        for name in EVENT_TOPICS:
            topic = topic_name(settings.kafka.topic_prefix, name)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += high - low
        return total
    finally:
        consumer.close()


@pytest.fixture
def fuzzed(settings, registry):  # noqa: F811
    # Every answer collected (so the stateful links reach feedback); the limits at their defaults, open API (loopback).
    yield Fuzzed(settings.model_copy(update={"feedback": FeedbackSettings(collection_rate=1.0)}), registry)


def test_every_route_survives_fuzzing_no_5xx_no_schema_break_no_event_without_a_2xx(fuzzed):
    started = time.perf_counter()
    operations = fuzz(schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app, config=CONFIG), fuzzed.call, EXAMPLES)
    held = fuzzed.close()
    took = time.perf_counter() - started
    print(f"\nassistant fuzz: {fuzzed.cases} cases over {operations} operations in {took:.1f} s: {fuzzed.by_operation}")
    assert not fuzzed.unanswered_events, fuzzed.unanswered_events
    assert held == fuzzed.producer.sent, f"the topics hold {held} events, the 2xx responses sent {fuzzed.producer.sent}"
    assert fuzzed.statuses.get(200, 0) > 0 and not any(s >= 500 for s in fuzzed.statuses)
