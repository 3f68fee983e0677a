"""The reward dataset builder on hand-made feedback: pairing rules, labels, dedupe, drops, split;
and the policy's query split."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest

from core.errors import RlhfError, TrainingError
from schemas.events import FeedbackEvent
from trainers.dataset import build_dataset, query_key, read_jsonl, split_policy_queries

_ids = itertools.count()
Q = "How do I reset my password in Mail?"


def ev(
    response: str,
    kind: str,
    query: str = Q,
    rating: int | None = None,
    correction: str | None = None,
    event_id: str | None = None,
) -> FeedbackEvent:
    return FeedbackEvent(
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
    assert data.train_pairs.column_names == ["query", "chosen", "rejected", "source", "chosen_kind", "rejected_kind", "recent"]
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
    assert sorted(train + held_out) == sorted({e.query for e in events})  # negatives included, deduplicated
    assert not set(train) & set(held_out)
    assert 20 <= len(held_out) <= 60
    more_train, more_held = split_policy_queries(events + [ev("r", "thumbs_up", query="new")])
    assert set(held_out) <= set(more_held) and set(train) <= set(more_train)  # stable as feedback grows


def test_policy_queries_need_both_sides_of_the_split():
    with pytest.raises(TrainingError, match="got 1 train and 0 held-out"):
        split_policy_queries([ev("r", "thumbs_up", query="q0")], eval_fraction=0.0)
    with pytest.raises(TrainingError, match="got 0 train and 0 held-out"):
        split_policy_queries([])
