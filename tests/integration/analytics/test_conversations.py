"""Conversations in the warehouse: the interactions and feedback tables hold each turn's place in its
conversation (an existing warehouse gains the columns, its rows read as one-turn conversations), the
dashboard splits the positive rate into first turns and follow-ups, and a conversation reads back
turn by turn."""

import json
import math

import pyarrow as pa
import pytest

from analytics.clickhouse import apply_migrations
from analytics.queries import run_query
from analytics.tables import CONVERSATION, FEEDBACK, INTERACTIONS
from consumers.sink.rows import ROUTES
from schemas import FeedbackEvent, InteractionEvent
from schemas.events import Turn, latest_verdicts
from tests.integration.analytics.world import build_world, insert_world

pytestmark = pytest.mark.integration

NAMES = [c.name for c in CONVERSATION]


def stored_columns(warehouse, table: str) -> list[tuple[str, str, str]]:
    frame = warehouse.query_df(
        "SELECT name, type, compression_codec FROM system.columns "
        "WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        {"t": table},
    )
    return list(frame.itertuples(index=False, name=None))


def declared_columns(table) -> list[tuple[str, str, str]]:
    return [(c.name, c.type.sql, f"CODEC({c.codec})" if c.codec else "") for c in table.columns]


def test_an_existing_warehouse_gains_the_conversation_columns_and_its_rows_read_as_one_turn(warehouse, warehouse_settings):
    old = FeedbackEvent(
        schema_version=1,
        interaction_id="i-old",
        user_id="u1",
        query="q?",
        response="a",
        model_version="v0",
        feedback_type="thumbs_up",
    )
    with warehouse.locked() as client:
        for table in (INTERACTIONS, FEEDBACK):  # as they were before schema version 2
            client.command(f"ALTER TABLE {table.name} {', '.join(f'DROP COLUMN {n}' for n in NAMES)}")
        client.command("DELETE FROM schema_migrations WHERE id = '0007_conversations'")
        before = pa.schema([f for f in FEEDBACK.schema if f.name not in NAMES])
        row = {k: v for k, v in ROUTES["feedback"].row(old, warehouse_settings).items() if k not in NAMES}
        client.insert_arrow(FEEDBACK.name, pa.Table.from_pylist([row], schema=before))
        assert apply_migrations(client) == ["0007_conversations"]
        assert apply_migrations(client) == []
    for table in (INTERACTIONS, FEEDBACK):
        assert stored_columns(warehouse, table.name) == declared_columns(table), table.name

    later = FeedbackEvent(
        interaction_id="i-new",
        user_id="u1",
        query="And in Calendar?",
        response="The same.",
        model_version="v1",
        feedback_type="thumbs_down",
        context=(Turn(role="user", content="Mail?"), Turn(role="assistant", content="Open Mail.")),
        conversation_id="c1",
        turn_index=1,
    )
    route = ROUTES["feedback"]
    assert warehouse.insert_new(route.table, route.table.to_arrow([route.row(later, warehouse_settings)])) == 1
    rows = warehouse.query_df(f"SELECT interaction_id, {', '.join(NAMES)} FROM feedback FINAL ORDER BY interaction_id")
    assert rows.to_dict("records") == [
        {"interaction_id": "i-new", "conversation_id": "c1", "turn_index": 1}
        | {"context": '[{"role":"user","content":"Mail?"},{"role":"assistant","content":"Open Mail."}]'}
        | {"context_turns": 2, "context_chars": len("Mail?") + len("Open Mail.")},
        {"interaction_id": "i-old", "conversation_id": "i-old", "turn_index": 0, "context": "[]"}
        | {"context_turns": 0, "context_chars": 0},
    ]


def test_a_new_warehouse_has_the_conversation_columns_as_declared(warehouse):
    for table in (INTERACTIONS, FEEDBACK):
        assert stored_columns(warehouse, table.name) == declared_columns(table), table.name


def test_the_positive_rate_by_turn_agrees_with_the_events(warehouse, warehouse_settings):
    world = build_world(warehouse_settings, users=200)
    insert_world(warehouse, warehouse_settings, world)
    min_rating = warehouse_settings.feedback.min_rating
    expected: dict[tuple[str, str], dict[str, list[bool]]] = {}
    for e in latest_verdicts(world.of("feedback", FeedbackEvent)):
        sides = expected.setdefault((e.model_version, e.variant or ""), {"first_turn": [], "follow_up": []})
        sides["first_turn" if e.turn_index == 0 else "follow_up"].append(e.is_positive(min_rating))

    frame = run_query(warehouse, "positive_rate_by_turn").set_index(["model_version", "variant"])
    assert set(frame.index) == set(expected)
    for key, sides in expected.items():
        for side, verdicts in sides.items():
            assert frame.loc[key, f"{side}_feedback"] == len(verdicts), (key, side)
            rate = frame.loc[key, f"{side}_positive_rate"]
            assert rate == pytest.approx(sum(verdicts) / len(verdicts)) if verdicts else math.isnan(rate), (key, side)
    # The version 1 feedback from before the experiment is all first turns; the experiment's has follow-ups.
    assert frame.loc[("serving-v0", ""), "follow_up_feedback"] == 0 < frame.loc[("serving-v0", ""), "first_turn_feedback"]
    assert (frame.drop(index=("serving-v0", ""))["follow_up_feedback"] > 0).all()
    experiment = warehouse_settings.ab_testing.experiment
    assert len(run_query(warehouse, "positive_rate_by_turn", {"experiment": experiment})) == len(expected) - 1


def test_a_conversation_reads_back_turn_by_turn(warehouse, warehouse_settings):
    world = build_world(warehouse_settings, users=30)
    insert_world(warehouse, warehouse_settings, world)
    turns = [e for e in world.of("interactions", InteractionEvent) if e.conversation_id == "conversation-3"]
    frame = run_query(warehouse, "conversation", {"conversation": "conversation-3"})
    asked = frame[frame["row"] == "interaction"]
    assert asked["interaction_id"].tolist() == [e.interaction_id for e in turns]
    assert asked["turn_index"].tolist() == list(range(len(turns)))
    assert [json.loads(c) for c in asked["context"]] == [[t.model_dump() for t in e.context] for e in turns]
    assert asked["context_turns"].tolist() == [1 + 2 * k for k in range(len(turns))]  # the system prompt, then pairs
    assert set(frame[frame["row"] == "feedback"]["interaction_id"]) <= set(asked["interaction_id"])
    v1 = next(e for e in world.of("feedback", FeedbackEvent) if e.schema_version == 1)
    alone = run_query(warehouse, "conversation", {"conversation": v1.interaction_id})
    assert alone[["row", "turn_index", "context", "context_turns"]].values.tolist() == [["feedback", 0, "[]", 0]]
    assert run_query(warehouse, "conversation", {"conversation": "nobody's"}).empty
