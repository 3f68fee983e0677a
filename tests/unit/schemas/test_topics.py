"""The topic table says which schema versions each topic's value reads, and the exported JSON Schemas
accept every one of them (a version 1 feedback event as an old producer wrote it, a version 2 one
with its conversation) and no other."""

import json

import jsonschema
import pytest

from rlhf.cli import build_parser
from schemas import FeedbackEvent
from schemas.export import export_json_schemas
from schemas.topics import TOPICS

# A version 1 FeedbackEvent exactly as producers wrote it before conversations (no conversation fields).
VERSION_1 = {
    "schema_version": 1,
    "timestamp": "2025-03-01T12:00:00Z",
    "event_id": "e-v1",
    "interaction_id": "i-v1",
    "user_id": "u1",
    "query": "How do I reset my password in Mail?",
    "response": "Open Settings, then Accounts.",
    "model_version": "v1",
    "policy": "assistant",
    "experiment": None,
    "variant": None,
    "feedback_type": "thumbs_up",
    "rating": None,
    "correction": None,
    "metadata": {},
}
VERSION_2 = {
    **VERSION_1,
    "schema_version": 2,
    "context": [
        {"role": "system", "content": "You help with Mail."},
        {"role": "user", "content": "How do I reset my password in Mail?"},
        {"role": "assistant", "content": "Open Settings, then Accounts."},
    ],
    "conversation_id": "c1",
    "turn_index": 1,
    "query": "And how do I undo that?",
}


def test_each_topic_names_the_versions_its_value_reads():
    versions = {name: spec.value_versions for name, spec in TOPICS.items()}
    assert versions["feedback"] == versions["interactions"] == (1, 2)
    assert all(v == (1,) for name, v in versions.items() if name not in ("feedback", "interactions")), versions


def test_topics_list_prints_the_versions(capsys):
    args = build_parser().parse_args(["topics", "list"])
    args.func(args)
    lines = {line.split()[0].rsplit(".", 1)[-1]: line for line in capsys.readouterr().out.splitlines()}
    assert "value=FeedbackEvent versions=1,2 " in lines["feedback"]
    assert "value=ExperimentEvent versions=1 " in lines["experiments"]


@pytest.mark.parametrize(("event", "valid"), [(VERSION_1, True), (VERSION_2, True), ({**VERSION_1, "schema_version": 3}, False)])
def test_the_exported_schema_reads_both_versions(tmp_path, event, valid):
    written = {path.name: path for path in export_json_schemas(tmp_path)}
    schema = json.loads(written["FeedbackEvent.schema.json"].read_text())
    assert schema["properties"]["schema_version"]["enum"] == [1, 2] and schema["properties"]["schema_version"]["default"] == 2
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(event))
    assert not errors if valid else errors
    if valid:  # the model agrees with its schema
        parsed = FeedbackEvent.model_validate_json(json.dumps(event))
        assert (parsed.schema_version, len(parsed.context), parsed.turn_index) == (
            event["schema_version"],
            len(event.get("context", [])),
            event.get("turn_index", 0),
        )
