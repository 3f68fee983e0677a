"""Every route of the sink's dashboard and `/sql` fuzzed with schemathesis from the OpenAPI schema it
serves, over a real (embedded) ClickHouse warehouse holding a little of everything (issue 33): no
5xx, no response that breaks the schema, invalid parameters refused with a 4xx naming them."""

from __future__ import annotations

import time

import pytest
import schemathesis

from analytics.dashboard import create_app
from analytics.tables import FEEDBACK
from consumers.sink.rows import feedback_row
from schemas import FeedbackEvent
from schemas.events import Turn
from tests.integration.assistant.test_fuzz import EXAMPLES, fuzz

pytestmark = pytest.mark.integration


def test_every_dashboard_route_survives_fuzzing_with_no_5xx_and_no_schema_break(warehouse, warehouse_settings):
    event = FeedbackEvent(
        event_id="e-1",
        interaction_id="i-1",
        user_id="u-1",
        query="q?",
        response="a.",
        model_version="v1",
        experiment="policy-ab:v2",
        variant="control",
        feedback_type="thumbs_up",
        context=(Turn(role="user", content="First?"), Turn(role="assistant", content="Yes.")),
        conversation_id="c-1",
        turn_index=1,
    )
    row = feedback_row(event, warehouse_settings)
    warehouse.insert_new(FEEDBACK, FEEDBACK.to_arrow([row]))  # a panel with data, a span for the time buckets
    statuses: dict[str, int] = {}

    def call(case, **kwargs):
        response = case.call(**kwargs)
        key = f"{case.method} {case.path} {response.status_code}"
        statuses[key] = statuses.get(key, 0) + 1
        return response

    started = time.perf_counter()
    operations = fuzz(schemathesis.openapi.from_asgi("/openapi.json", create_app(warehouse, warehouse_settings)), call, EXAMPLES)
    took = time.perf_counter() - started
    print(f"\ndashboard fuzz: {sum(statuses.values())} cases over {operations} operations in {took:.1f} s: {statuses}")
    assert not any(int(key.rsplit(" ", 1)[1]) >= 500 for key in statuses), statuses
