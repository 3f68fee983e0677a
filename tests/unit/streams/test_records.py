"""An accepted event carries its PII counts to the policy stage only when it has some: a clean
event (nearly all) puts no `pii` on the internal topic, and every form reads back the same."""

import json

from core.redaction import NO_PII
from schemas import FeedbackEvent
from streams.records import Accepted, PolicyRecord

EVENT = FeedbackEvent(interaction_id="i1", user_id="u1", query="q?", response="a", model_version="v1", feedback_type="thumbs_up")


def test_pii_counts_travel_only_when_found():
    clean = Accepted.of(EVENT, 0, 1, 1.0, NO_PII)
    assert b'"pii"' not in clean.to_bytes() and Accepted.model_validate_json(clean.to_bytes()).pii == {}
    found = Accepted.of(EVENT, 0, 2, 1.0, {"email": 2})
    assert json.loads(found.to_bytes())["pii"] == {"email": 2}
    record = PolicyRecord(policy="assistant", batch=(clean, found))
    assert PolicyRecord.model_validate_json(record.to_bytes()) == record


def test_a_record_with_an_empty_pii_map_reads_as_none_found():
    written = {**json.loads(Accepted.of(EVENT, 0, 1, 1.0).to_bytes()), "pii": {}}  # as records were written before
    assert Accepted.model_validate_json(json.dumps(written)) == Accepted.of(EVENT, 0, 1, 1.0)
