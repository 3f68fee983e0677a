"""Training data from user feedback. For the reward model: pairwise preferences where the feedback
supports them, pointwise labels for the rest, split train/eval by a stable hash of the query. For
the policy: the queries users gave feedback on, split the same way (`split_policy_queries`).

    from trainers.dataset import build_dataset, read_jsonl
    data = build_dataset(read_jsonl("feedback.jsonl"), min_rating=4)
    data.summary            # counts per source, per split, dropped and why
    data.train_pairs        # datasets.Dataset: query, chosen, rejected, source, chosen_kind, rejected_kind

Input is any iterable of `FeedbackEvent`s, or of raw records (dicts, JSON text or bytes) that are
validated here: a trigger's replayed offset range, a JSONL file, a ClickHouse query. A record that
fails validation is counted under `invalid` in the summary, never raised.
Of several verdicts on one answer (a user who changed their mind) only the latest counts
(`schemas.events.latest_verdicts`; a correction is kept beside the verdict).

Pairing rules, within one query (compared after collapsing whitespace and case):
- ratings: a response rated higher is preferred over one rated lower;
- thumbs: a thumbs_up response is preferred over a thumbs_down one;
- corrections: the user's correction is preferred over the response it corrects.
An event that takes part in no pair becomes a pointwise example, positive or negative by
`FeedbackEvent.is_positive(min_rating)`: thumbs_up and `rating >= min_rating` are positive,
thumbs_down and `rating < min_rating` negative (a thumbs_up carries no rating, so it is judged by its type).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value

from core.errors import EventValidationError, RlhfError, TrainingError
from core.hashing import stable_fraction, stable_hash64
from schemas.events import FeedbackEvent, latest_verdicts, parse_event, validate_event

PAIR_FEATURES = Features(
    {
        **{name: Value("string") for name in ("query", "chosen", "rejected", "source", "chosen_kind", "rejected_kind")},
        "recent": Value("bool"),
    }
)
POINT_FEATURES = Features(
    {
        "query": Value("string"),
        "response": Value("string"),
        "label": Value("float32"),
        "kind": Value("string"),
        "recent": Value("bool"),
    }
)
INVALID_EXAMPLES_KEPT = 5  # a few reasons in the summary say what is wrong without flooding it


class DatasetError(RlhfError):
    """A feedback source could not be read at all (the file is missing or unreadable)."""


@dataclass(frozen=True)
class Pair:
    query: str
    chosen: str
    rejected: str
    source: str  # the rule that made the pair: rating, thumbs or correction
    chosen_kind: str  # what the user said about each side, e.g. rating_5, thumbs_up, correction, corrected
    rejected_kind: str
    recent: bool = False  # both sides come from the newest data (the answers of the newest policies)


@dataclass(frozen=True)
class Point:
    query: str
    response: str
    label: float
    kind: str
    recent: bool = False


@dataclass(frozen=True)
class RewardData:
    train_pairs: Dataset
    eval_pairs: Dataset
    train_points: Dataset
    eval_points: Dataset
    summary: dict[str, Any]


def read_jsonl(path: str | Path) -> Iterator[str]:
    """The non-blank lines of a JSONL file of FeedbackEvents, unparsed (build_dataset validates them)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield line
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read feedback file: {exc.strerror or exc}") from None


def query_key(query: str) -> str:
    """What makes two queries "the same": whitespace and case do not matter."""
    return " ".join(query.split()).casefold()


def is_eval_query(query: str, eval_fraction: float, salt: str) -> bool:
    """Stable across processes and runs, so a query always lands on the same side."""
    return stable_fraction("reward-split", salt, query_key(query)) < eval_fraction


def split_policy_queries(events: Iterable[FeedbackEvent], eval_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Every distinct query users gave feedback on, whatever the verdict (a policy must learn the
    questions it answered badly too), split into (train, held-out) by a stable hash of the text,
    so a query never moves sides as feedback grows. TrainingError when either side is empty."""
    queries = sorted({e.query for e in events})
    held_out = [q for q in queries if stable_fraction("policy-eval", q) < eval_fraction]
    train = [q for q in queries if stable_fraction("policy-eval", q) >= eval_fraction]
    if not train or not held_out:
        raise TrainingError(
            f"need queries on both sides of the train / held-out split, got {len(train)} train and {len(held_out)} held-out"
        )
    return train, held_out


def kind_of(event: FeedbackEvent) -> str:
    return f"rating_{event.rating}" if event.feedback_type == "rating" else event.feedback_type


def build_dataset(
    records: Iterable[FeedbackEvent | dict | str | bytes],
    *,
    min_rating: int = 4,
    eval_fraction: float = 0.2,
    split_salt: str = "",
    max_text_chars: int = 4_000,
    max_pairs_per_query: int = 64,
    recent_ids: frozenset[str] = frozenset(),
) -> RewardData:
    """Pairs and points from feedback records, split by query; see the module docstring for the rules.

    `recent_ids` names the newest events (the latest trigger's, when training on a history): a pair
    of two of them, or a point from one, is `recent`, so training can weigh it up and evaluation can
    say how well the model ranks the newest policies' own answers."""
    dropped: Counter[str] = Counter()
    invalid: list[str] = []
    events = _accepted_events(records, max_text_chars, dropped, invalid)

    by_query: dict[str, list[FeedbackEvent]] = defaultdict(list)
    for event in events:
        by_query[query_key(event.query)].append(event)

    pairs: list[Pair] = []
    points: list[Point] = []
    for group in by_query.values():
        group_pairs, paired_ids = _pairs_of(group, recent_ids)
        if len(group_pairs) > max_pairs_per_query:
            dropped["pair_cap"] += len(group_pairs) - max_pairs_per_query
            # Keep a deterministic, content-based subset so replaying a trigger rebuilds the same data;
            # the newest comparisons first (older answers of this query are what the policy no longer says).
            group_pairs = sorted(group_pairs, key=lambda p: (not p.recent, stable_hash64(p.chosen, p.rejected)))[
                :max_pairs_per_query
            ]
        pairs += group_pairs
        points += [_point_of(e, min_rating, e.event_id in recent_ids) for e in group if e.event_id not in paired_ids]

    pairs = _dedupe(pairs, lambda p: (query_key(p.query), p.chosen, p.rejected), "duplicate_pair", dropped)
    points = _dedupe(points, lambda p: (query_key(p.query), p.response, p.label), "duplicate_point", dropped)

    split: dict[str, list[Any]] = {"train_pairs": [], "eval_pairs": [], "train_points": [], "eval_points": []}
    for pair in pairs:
        split["eval_pairs" if is_eval_query(pair.query, eval_fraction, split_salt) else "train_pairs"].append(pair)
    for point in points:
        split["eval_points" if is_eval_query(point.query, eval_fraction, split_salt) else "train_points"].append(point)

    summary = {
        "events": {"accepted": len(events), "invalid": len(invalid), "by_type": dict(Counter(e.feedback_type for e in events))},
        "invalid_examples": invalid[:INVALID_EXAMPLES_KEPT],
        "pairs_by_source": dict(Counter(p.source for p in pairs)),
        "recent": {
            "events": sum(e.event_id in recent_ids for e in events),
            "pairs": sum(p.recent for p in pairs),
            "points": sum(p.recent for p in points),
        },
        "points_by_kind": dict(Counter(p.kind for p in points)),
        "splits": {name: len(rows) for name, rows in split.items()},
        "queries": {"total": len(by_query), "eval": sum(is_eval_query(q, eval_fraction, split_salt) for q in by_query)},
        "dropped": dict(dropped),
        "time_range": [min(e.timestamp for e in events).isoformat(), max(e.timestamp for e in events).isoformat()]
        if events
        else None,
    }
    return RewardData(
        train_pairs=_to_dataset(split["train_pairs"], PAIR_FEATURES),
        eval_pairs=_to_dataset(split["eval_pairs"], PAIR_FEATURES),
        train_points=_to_dataset(split["train_points"], POINT_FEATURES),
        eval_points=_to_dataset(split["eval_points"], POINT_FEATURES),
        summary=summary,
    )


def _accepted_events(records: Iterable[Any], max_chars: int, dropped: Counter[str], invalid: list[str]) -> list[FeedbackEvent]:
    """Valid, unique (by event_id, as redelivery repeats them) events with usable text, the latest
    verdict per answer (`latest_verdicts`)."""
    seen: set[str] = set()
    out = []
    for record in records:
        try:
            event = (
                parse_event(FeedbackEvent, record) if isinstance(record, str | bytes) else validate_event(FeedbackEvent, record)
            )
        except EventValidationError as exc:
            invalid.append(str(exc))
            continue
        if event.event_id in seen:
            dropped["duplicate_event"] += 1
            continue
        seen.add(event.event_id)
        reason = _unusable_text(event, max_chars)
        if reason:
            dropped[reason] += 1
            continue
        out.append(event)
    kept = latest_verdicts(out)
    if len(kept) < len(out):
        dropped["superseded_verdict"] += len(out) - len(kept)  # a change of mind: the latest verdict counts
    return kept


def _unusable_text(event: FeedbackEvent, max_chars: int) -> str | None:
    texts = {"query": event.query, "response": event.response}
    if event.correction is not None:
        texts["correction"] = event.correction
    for name, text in texts.items():
        if not text.strip():
            return f"empty_{name}"
        if len(text) > max_chars:
            return f"oversize_{name}"
    if event.correction is not None and event.correction.strip() == event.response.strip():
        return "correction_unchanged"  # nothing to prefer
    return None


def _pairs_of(group: list[FeedbackEvent], recent_ids: frozenset[str] = frozenset()) -> tuple[list[Pair], set[str]]:
    """Every preference one query's events support, and the ids of the events used in one. Pairs
    cross model versions: during an A/B test two versions answer the same query, and their judged
    answers are comparisons of the newest policies."""
    pairs: list[Pair] = []
    used: set[str] = set()

    def add(chosen: FeedbackEvent, rejected: FeedbackEvent, source: str) -> None:
        if chosen.response != rejected.response:  # two verdicts on the same text are no preference
            recent = chosen.event_id in recent_ids and rejected.event_id in recent_ids
            pairs.append(
                Pair(chosen.query, chosen.response, rejected.response, source, kind_of(chosen), kind_of(rejected), recent)
            )
            used.update((chosen.event_id, rejected.event_id))

    ratings = [e for e in group if e.feedback_type == "rating"]
    for a, b in product(ratings, ratings):
        if a.rating > b.rating:  # type: ignore[operator]  # ratings always carry one
            add(a, b, "rating")
    ups = [e for e in group if e.feedback_type == "thumbs_up"]
    downs = [e for e in group if e.feedback_type == "thumbs_down"]
    for up, down in product(ups, downs):
        add(up, down, "thumbs")
    for e in group:
        if e.correction is not None:  # the schema requires it exactly when feedback_type is "correction"
            pairs.append(
                Pair(e.query, e.correction, e.response, "correction", "correction", "corrected", e.event_id in recent_ids)
            )
            used.add(e.event_id)
    return pairs, used


def _point_of(event: FeedbackEvent, min_rating: int, recent: bool) -> Point:
    # Only ratings and thumbs get here: a correction always makes a pair.
    return Point(event.query, event.response, float(event.is_positive(min_rating)), kind_of(event), recent)


def _dedupe(rows: list, key: Any, reason: str, dropped: Counter[str]) -> list:
    seen: set = set()
    out = []
    for row in rows:
        k = key(row)
        if k in seen:
            dropped[reason] += 1
        else:
            seen.add(k)
            out.append(row)
    return out


def _to_dataset(rows: list[Pair] | list[Point], features: Features) -> Dataset:
    return Dataset.from_dict({name: [getattr(r, name) for r in rows] for name in features}, features=features)
