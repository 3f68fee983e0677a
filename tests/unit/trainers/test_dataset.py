"""The reward dataset builder on hand-made feedback: pairing rules, labels, dedupe, drops, split;
the policy's query split; and both on conversations (answers compared only in the same context)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest

from core.errors import RlhfError, TrainingError
from core.hashing import stable_fraction
from schemas.events import FeedbackEvent, Turn
from trainers.chat_format import Conversation, as_conversation
from trainers.dataset import build_dataset, context_key, prompts, query_key, read_jsonl, split_policy_queries

_ids = itertools.count()
Q = "How do I reset my password in Mail?"


def ev(
    response: str,
    kind: str,
    query: str = Q,
    rating: int | None = None,
    correction: str | None = None,
    event_id: str | None = None,
    context: tuple[tuple[str, str], ...] = (),
) -> FeedbackEvent:
    """A feedback event; with `context` ((role, text) turns before the question) a version 2 one."""
    return FeedbackEvent(
        context=tuple(Turn(role=role, content=text) for role, text in context),
        turn_index=sum(role == "user" for role, _ in context),
        conversation_id=f"c{next(_ids)}" if context else None,
        event_id=event_id or f"e{next(_ids)}",
        interaction_id=f"i{next(_ids)}",
        user_id="u1",
        query=query,
        response=response,
        model_version="v1",
        feedback_type=kind,
        rating=rating,
        correction=correction,
    )


def build(events, **kw):
    """All data on the train side unless a test is about the split."""
    return build_dataset(events, **{"eval_fraction": 0.0, **kw})


def pairs_of(data) -> set[tuple[str, str, str]]:
    rows = data.train_pairs.to_list() + data.eval_pairs.to_list()
    return {(r["chosen"], r["rejected"], r["source"]) for r in rows}


def points_of(data) -> set[tuple[str, float, str]]:
    rows = data.train_points.to_list() + data.eval_points.to_list()
    return {(r["response"], r["label"], r["kind"]) for r in rows}


def test_higher_rating_preferred_over_lower_within_a_query():
    data = build(
        [ev("A", "rating", rating=5), ev("B", "rating", rating=3), ev("C", "rating", rating=1), ev("D", "rating", rating=3)]
    )
    assert pairs_of(data) == {(c, r, "rating") for c, r in [("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("D", "C")]}
    assert points_of(data) == set()  # every event took part in a pair
    kinds = {(r["chosen_kind"], r["rejected_kind"]) for r in data.train_pairs}
    assert ("rating_5", "rating_1") in kinds


def test_thumbs_up_preferred_over_thumbs_down():
    data = build([ev("good", "thumbs_up"), ev("also good", "thumbs_up"), ev("bad", "thumbs_down")])
    assert pairs_of(data) == {("good", "bad", "thumbs"), ("also good", "bad", "thumbs")}


def test_correction_preferred_over_the_response_it_corrects():
    data = build([ev("Sorry, no idea.", "correction", correction="Open Mail > Security and press Reset.")])
    assert pairs_of(data) == {("Open Mail > Security and press Reset.", "Sorry, no idea.", "correction")}
    row = data.train_pairs[0]
    assert (row["chosen_kind"], row["rejected_kind"]) == ("correction", "corrected")


def test_no_pairs_across_queries_or_across_feedback_kinds():
    data = build([ev("A", "thumbs_up"), ev("B", "thumbs_down", query="Where is my cache in Maps?"), ev("C", "rating", rating=2)])
    assert pairs_of(data) == set()
    assert points_of(data) == {("A", 1.0, "thumbs_up"), ("B", 0.0, "thumbs_down"), ("C", 0.0, "rating_2")}


def test_same_query_ignores_case_and_whitespace():
    data = build([ev("A", "thumbs_up"), ev("B", "thumbs_down", query="  how do I   RESET my password in mail? ")])
    assert pairs_of(data) == {("A", "B", "thumbs")}
    assert query_key(Q) == query_key("how  do i reset my password in MAIL?")


def test_thumbs_up_without_rating_is_positive_whatever_min_rating():
    # A tempting bug: `rating >= min_rating` on a thumbs_up (rating None) labels it negative.
    for min_rating in (1, 4, 5):
        data = build([ev("A", "thumbs_up")], min_rating=min_rating)
        assert points_of(data) == {("A", 1.0, "thumbs_up")}
    assert points_of(build([ev("B", "thumbs_down")], min_rating=1)) == {("B", 0.0, "thumbs_down")}


def test_unpaired_ratings_are_labelled_by_min_rating():
    events = [ev(f"r{r}", "rating", query=f"question {r}", rating=r) for r in range(1, 6)]
    assert points_of(build(events, min_rating=4)) == {
        ("r1", 0.0, "rating_1"),
        ("r2", 0.0, "rating_2"),
        ("r3", 0.0, "rating_3"),
        ("r4", 1.0, "rating_4"),
        ("r5", 1.0, "rating_5"),
    }


def test_equal_ratings_and_opposite_thumbs_on_one_text_make_no_pair():
    data = build([ev("A", "rating", rating=4), ev("B", "rating", rating=4), ev("X", "thumbs_up"), ev("X", "thumbs_down")])
    assert pairs_of(data) == set()
    assert points_of(data) == {("A", 1.0, "rating_4"), ("B", 1.0, "rating_4"), ("X", 1.0, "thumbs_up"), ("X", 0.0, "thumbs_down")}


def test_duplicates_are_dropped_and_counted():
    twice = ev("A", "thumbs_up", event_id="same-id")
    # Ratings and thumbs agreeing make the same pair twice; a redelivered event repeats its id.
    data = build(
        [
            twice,
            twice,
            ev("B", "thumbs_down"),
            ev("A", "rating", rating=5),
            ev("B", "rating", rating=1),
            ev("C", "thumbs_up", query="q2"),
            ev("C", "thumbs_up", query="q2"),
        ]
    )
    assert data.summary["dropped"] == {"duplicate_event": 1, "duplicate_pair": 1, "duplicate_point": 1}
    assert pairs_of(data) == {("A", "B", "rating")}
    assert points_of(data) == {("C", 1.0, "thumbs_up")}


def test_empty_oversize_and_unchanged_text_is_dropped_with_a_reason():
    data = build(
        [
            ev("   ", "thumbs_up"),
            ev("x" * 101, "thumbs_down"),
            ev("A", "correction", correction=" A "),
            ev("B", "correction", correction="y" * 101),
            ev("ok", "thumbs_up"),
        ],
        max_text_chars=100,
    )
    assert data.summary["dropped"] == {
        "empty_response": 1,
        "oversize_response": 1,
        "correction_unchanged": 1,
        "oversize_correction": 1,
    }
    assert data.summary["events"]["accepted"] == 1


def test_a_changed_mind_counts_once_with_the_latest_verdict_and_a_correction_beside_it():
    up = ev("A", "thumbs_up")
    t = up.timestamp
    down = up.model_copy(update={"event_id": "later", "feedback_type": "thumbs_down", "timestamp": t + timedelta(seconds=5)})
    fix = up.model_copy(
        update={"event_id": "fix", "feedback_type": "correction", "correction": "B", "timestamp": t + timedelta(seconds=1)}
    )
    data = build([down, up, fix])  # arrival order does not matter: the later timestamp wins
    assert data.summary["dropped"] == {"superseded_verdict": 1}
    assert data.summary["events"]["by_type"] == {"thumbs_down": 1, "correction": 1}
    assert [(p["chosen"], p["rejected"]) for p in data.train_pairs] == [("B", "A")]
    assert [(p["response"], p["label"]) for p in data.train_points] == [("A", 0.0)]


def test_bad_records_are_counted_not_raised():
    good = ev("A", "thumbs_up")
    records = [
        good.model_dump(),  # a valid dict
        good.model_copy(update={"event_id": "other", "interaction_id": "i-other"}).to_bytes(),  # valid JSON bytes
        {"query": Q},  # missing fields
        {**good.model_dump(), "event_id": "x", "feedback_type": "rating"},  # rating type without a rating
        {**good.model_dump(), "event_id": "y", "feedback_type": "rating", "rating": 9},
        "not json at all",
        b"\xff\xfe",
        None,
        42,
    ]
    data = build(records)
    assert data.summary["events"]["invalid"] == 7
    assert data.summary["events"]["accepted"] == 2
    assert any("rating" in reason for reason in data.summary["invalid_examples"])


def test_no_query_lands_on_both_sides_of_the_split():
    events = []
    for i in range(300):
        q = f"How do I do thing {i}?"
        events += [
            ev(f"good {i}", "thumbs_up", query=q),
            ev(f"bad {i}", "thumbs_down", query=q.upper()),
            ev(f"meh {i}", "rating", query=f" {q}", rating=3),
        ]
    data = build_dataset(events, eval_fraction=0.3)
    train = {query_key(q) for d in (data.train_pairs, data.train_points) for q in d["query"]}
    held = {query_key(q) for d in (data.eval_pairs, data.eval_points) for q in d["query"]}
    assert train and held and not train & held
    assert 0.2 < len(held) / 300 < 0.4
    assert data.summary["queries"] == {"total": 300, "eval": len(held)}
    again = build_dataset(list(reversed(events)), eval_fraction=0.3)  # stable: order does not matter
    assert sorted(again.eval_pairs["query"]) == sorted(data.eval_pairs["query"])
    other = build_dataset(events, eval_fraction=0.3, split_salt="reshuffle")
    assert set(other.eval_pairs["query"]) != set(data.eval_pairs["query"])


def test_summary_counts_sources_and_splits():
    data = build_dataset(
        [
            ev("A", "thumbs_up"),
            ev("B", "thumbs_down"),
            ev("C", "rating", rating=5, query="q2"),
            ev("D", "correction", correction="E", query="q3"),
        ],
        eval_fraction=0.5,
    )
    s = data.summary
    assert s["events"]["by_type"] == {"thumbs_up": 1, "thumbs_down": 1, "rating": 1, "correction": 1}
    assert s["pairs_by_source"] == {"thumbs": 1, "correction": 1}
    assert s["points_by_kind"] == {"rating_5": 1}
    assert sum(s["splits"].values()) == 3
    assert s["splits"] == {
        "train_pairs": len(data.train_pairs),
        "eval_pairs": len(data.eval_pairs),
        "train_points": len(data.train_points),
        "eval_points": len(data.eval_points),
    }


def test_popular_query_is_capped_deterministically():
    events = [ev(f"r{i}", "rating", rating=1 + i % 5) for i in range(30)]
    data = build(events, max_pairs_per_query=10)
    assert len(data.train_pairs) == 10
    assert data.summary["dropped"]["pair_cap"] == 360 - 10  # 30 ratings, 6 per value: 10 value pairs x 36
    assert build(list(reversed(events)), max_pairs_per_query=10).train_pairs.to_list() == data.train_pairs.to_list()


def test_empty_input_gives_empty_typed_datasets():
    data = build([])
    assert len(data.train_pairs) == len(data.eval_points) == 0
    assert data.train_pairs.column_names == [
        "query",
        "conversation",
        "chosen",
        "rejected",
        "source",
        "chosen_kind",
        "rejected_kind",
        "recent",
        "weight",
    ]
    assert data.summary["time_range"] is None


def test_read_jsonl_skips_blank_lines_and_counts_bad_ones(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text(ev("A", "thumbs_up").model_dump_json() + "\n\n{broken\n" + json.dumps({"query": Q}) + "\n")
    data = build(read_jsonl(path))
    assert data.summary["events"] == {"accepted": 1, "invalid": 2, "by_type": {"thumbs_up": 1}}
    with pytest.raises(RlhfError, match="missing.jsonl"):
        build(read_jsonl(tmp_path / "missing.jsonl"))


def test_policy_queries_keep_every_verdict_and_never_leak():
    events = [ev("r", "thumbs_down" if i % 2 else "thumbs_up", query=f"q{i}") for i in range(200)] + [
        ev("r", "thumbs_up", query="q1")
    ]
    train, held_out = split_policy_queries(events)
    assert sorted(c.query for c in train + held_out) == sorted({e.query for e in events})  # negatives included, deduplicated
    assert not set(train) & set(held_out)
    assert 20 <= len(held_out) <= 60
    more_train, more_held = split_policy_queries(events + [ev("r", "thumbs_up", query="new")])
    assert set(held_out) <= set(more_held) and set(train) <= set(more_train)  # stable as feedback grows


def test_policy_queries_need_both_sides_of_the_split():
    with pytest.raises(TrainingError, match="got 1 train and 0 held-out"):
        split_policy_queries([ev("r", "thumbs_up", query="q0")], eval_fraction=0.0)
    with pytest.raises(TrainingError, match="got 0 train and 0 held-out"):
        split_policy_queries([])


# ----------------------------------------------------------------------------- conversations

MAIL = (("user", "How do I reset my password in Mail?"), ("assistant", "Open Mail, go to Security, then press Reset."))
DRIVE = (("user", "How do I share a folder in Drive?"), ("assistant", "Open Drive, go to Sharing, then press Share."))
UNDO = "And how do I undo that?"
CONVERSATION = {"context", "conversation_id", "turn_index"}  # the fields version 2 added


def test_the_same_last_question_in_two_conversations_never_pairs():
    data = build(
        [ev("Press Restore in Mail.", "thumbs_up", UNDO, context=MAIL), ev("No idea.", "thumbs_down", UNDO, context=DRIVE)]
    )
    assert pairs_of(data) == set()
    assert points_of(data) == {("Press Restore in Mail.", 1.0, "thumbs_up"), ("No idea.", 0.0, "thumbs_down")}
    assert data.summary["queries"]["total"] == 2
    # Nor does a lone question pair with the same question asked as a follow-up.
    assert pairs_of(build([ev("A", "thumbs_up", UNDO), ev("B", "thumbs_down", UNDO, context=MAIL)])) == set()
    # Nor two conversations that differ only by the app's system prompt.
    support = (("system", "You are Mail's support assistant."), *MAIL)
    assert pairs_of(build([ev("A", "thumbs_up", UNDO, context=MAIL), ev("B", "thumbs_down", UNDO, context=support)])) == set()


def test_the_same_context_and_question_in_two_events_pairs_in_that_conversation():
    again = tuple((role, f"  {text.upper()} ") for role, text in MAIL)  # whitespace and case aside, the same turns
    data = build(
        [
            ev("Press Restore in Mail.", "rating", UNDO, rating=5, context=MAIL),
            ev("Open Drive.", "rating", f" {UNDO.lower()}", rating=2, context=again),
            ev("Wrong.", "correction", UNDO, correction="Press Restore.", context=MAIL),
        ]
    )
    assert pairs_of(data) == {("Press Restore in Mail.", "Open Drive.", "rating"), ("Press Restore.", "Wrong.", "correction")}
    rows = data.train_pairs.to_list()
    assert {r["query"] for r in rows} == {UNDO}  # the readable question
    assert all(as_conversation(p).history == MAIL for p in prompts(data.train_pairs))  # the whole context travels with the row
    assert Conversation.from_json(rows[0]["conversation"]) == prompts(data.train_pairs)[0]
    assert data.summary["follow_ups"] == {"events": 3, "pairs": 2}


def test_a_conversation_context_lands_on_one_side_of_the_split():
    events = []
    for i in range(200):
        earlier = (("user", f"How do I do thing {i}?"), ("assistant", f"Like this {i}."))
        events += [
            ev(f"good {i}", "thumbs_up", UNDO, context=earlier),
            ev(f"bad {i}", "thumbs_down", UNDO.upper(), context=earlier),
            ev(f"meh {i}", "rating", UNDO, rating=3, context=earlier),
        ]
    data = build_dataset(events, eval_fraction=0.3)
    train = {context_key(p) for d in (data.train_pairs, data.train_points) for p in prompts(d)}
    held = {context_key(p) for d in (data.eval_pairs, data.eval_points) for p in prompts(d)}
    assert train and held and not train & held  # one question, 200 contexts: split by context, not by question
    assert 0.2 < len(held) / 200 < 0.4 and data.summary["queries"] == {"total": 200, "eval": len(held)}
    policy_train, policy_held = split_policy_queries(events)
    assert not {context_key(c) for c in policy_train} & {context_key(c) for c in policy_held}
    assert len(policy_train) + len(policy_held) == 400  # two spellings of the question per context, each a prompt
    assert all(isinstance(c, Conversation) and c.history for c in policy_train + policy_held)


def test_a_version_1_event_pairs_and_splits_as_before_conversations():
    v1 = [  # as a version 1 producer sends them: no conversation fields at all
        FeedbackEvent.model_validate(
            {**ev(f"r{i}", "rating", f"Q {i // 3}?", rating=1 + i % 5).model_dump(exclude=CONVERSATION), "schema_version": 1}
        )
        for i in range(60)
    ]
    data = build_dataset(v1, eval_fraction=0.3, split_salt="s")
    rows = data.train_pairs.to_list() + data.eval_pairs.to_list()
    assert all(Conversation.from_json(r["conversation"]) == Conversation(r["query"]) for r in rows)  # one turn, no system
    assert {r["query"] for r in data.eval_pairs} == {  # the split hashes the normalised question, as it always did
        e.query for e in v1 if stable_fraction("reward-split", "s", query_key(e.query)) < 0.3
    } & {r["query"] for r in rows}
    assert pairs_of(data) == pairs_of(build_dataset([e.model_copy(update={"schema_version": 2}) for e in v1], eval_fraction=0.3))
    train, held_out = split_policy_queries(v1)
    assert [c.query for c in held_out] == sorted(
        {e.query for e in v1 if stable_fraction("policy-eval", e.query) < 0.2}
    )  # the policy's split and order too
    assert all(c == Conversation(c.query) for c in train + held_out)


def test_an_event_stripped_of_its_context_trains_as_a_one_turn_conversation():
    # How a "last turn only" ablation trains: the same feedback with `context` removed.
    followed = [ev("Press Restore.", "thumbs_up", UNDO, context=MAIL), ev("No idea.", "thumbs_down", UNDO, context=DRIVE)]
    stripped = [e.model_copy(update={"context": (), "conversation_id": None, "turn_index": 0}) for e in followed]
    data = build(stripped)
    assert pairs_of(data) == {("Press Restore.", "No idea.", "thumbs")}
    assert prompts(data.train_pairs) == [Conversation(UNDO)]


def test_prompts_of_a_hand_made_dataset_are_its_questions():
    from datasets import Dataset

    assert prompts(Dataset.from_dict({"query": ["q?"], "chosen": ["a"], "rejected": ["b"]})) == ["q?"]
