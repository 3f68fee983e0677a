"""Training data from user feedback. For the reward model: pairwise preferences where the feedback
supports them, pointwise labels for the rest, split train/eval by a stable hash of the conversation
context. For the policy: the conversations users gave feedback on, split the same way
(`split_policy_queries`).

    from trainers.dataset import build_dataset, read_jsonl
    data = build_dataset(read_jsonl("feedback.jsonl"), min_rating=4)
    data.summary            # counts per source, per split, dropped and why
    data.train_pairs        # datasets.Dataset: query, conversation, chosen, rejected, source, chosen_kind, ...
    prompts(data.train_pairs)   # the rows' conversations (`trainers.chat_format.Conversation`)

Every example is an answer in its conversation: `Conversation.of(event)`, the app's system prompt
and the turns before the answered question (none for a version 1 event, which is a one-turn
conversation). The `query` column is the answered question, for people; `conversation` holds the
whole context (`Conversation.to_json`), and that is what the reward model reads.

Input is any iterable of `FeedbackEvent`s, or of raw records (dicts, JSON text or bytes) that are
validated here: a trigger's replayed offset range, a JSONL file, a ClickHouse query. A record that
fails validation is counted under `invalid` in the summary, never raised.
Of several verdicts on one answer (a user who changed their mind) only the latest counts
(`schemas.events.latest_verdicts`; a correction is kept beside the verdict).

Pairing rules, within one conversation context (`context_key`: the same system prompt, earlier
turns and question, compared after collapsing whitespace and case; the same last question in two
different conversations is two contexts):
- ratings: a response rated higher is preferred over one rated lower;
- thumbs: a thumbs_up response is preferred over a thumbs_down one;
- corrections: the user's correction is preferred over the response it corrects.
An event that takes part in no pair becomes a pointwise example, positive or negative by
`FeedbackEvent.is_positive(min_rating)`: thumbs_up and `rating >= min_rating` are positive,
thumbs_down and `rating < min_rating` negative (a thumbs_up carries no rating, so it is judged by its type).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value

from core.errors import EventValidationError, RlhfError, TrainingError
from core.hashing import stable_fraction, stable_hash64
from schemas.events import FeedbackEvent, latest_verdicts, parse_event, validate_event
from trainers.chat_format import Conversation, Prompt, as_conversation

PAIR_FEATURES = Features(
    {
        # `query`: the answered question, for people; `conversation`: its whole context (`Conversation.to_json`)
        **{
            name: Value("string")
            for name in ("query", "conversation", "chosen", "rejected", "source", "chosen_kind", "rejected_kind")
        },
        "recent": Value("bool"),
        "weight": Value("float32"),
    }
)
POINT_FEATURES = Features(
    {
        **{name: Value("string") for name in ("query", "conversation", "response")},
        "label": Value("float32"),
        "kind": Value("string"),
        "recent": Value("bool"),
        "weight": Value("float32"),
    }
)
INVALID_EXAMPLES_KEPT = 5  # a few reasons in the summary say what is wrong without flooding it


class DatasetError(RlhfError):
    """A feedback source could not be read at all (the file is missing or unreadable)."""


@dataclass(frozen=True)
class Pair:
    prompt: Conversation  # the answered question in its conversation
    chosen: str
    rejected: str
    source: str  # the rule that made the pair: rating, thumbs or correction
    chosen_kind: str  # what the user said about each side, e.g. rating_5, thumbs_up, correction, corrected
    rejected_kind: str
    recent: bool = False  # both sides come from the newest data (the answers of the newest policies)
    weight: float = 1.0  # how much the users behind it are trusted (`trainers.trust`): the product of theirs


@dataclass(frozen=True)
class Point:
    prompt: Conversation
    response: str
    label: float
    kind: str
    recent: bool = False
    weight: float = 1.0  # its user's weight (`trainers.trust`)


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
    """What makes two questions "the same": whitespace and case do not matter."""
    return " ".join(query.split()).casefold()


def context_key(prompt: Prompt) -> str:
    """What makes two answered questions "the same" (pairing, dedupe, the train/eval split): the same
    conversation context, `Conversation.key`. A lone question (no earlier turns, no system prompt: every
    version 1 event) is its `query_key`, as before conversations, so old feedback pairs and splits as it did."""
    conversation = as_conversation(prompt)
    return conversation.key if conversation.history or conversation.system else query_key(conversation.query)


def is_eval_query(prompt: Prompt, eval_fraction: float, salt: str) -> bool:
    """Stable across processes and runs, so a conversation context always lands on the same side."""
    return _hashes_to_eval(context_key(prompt), eval_fraction, salt)


def _hashes_to_eval(key: str, eval_fraction: float, salt: str) -> bool:
    return stable_fraction("reward-split", salt, key) < eval_fraction


def prompts(rows: Dataset) -> list[Prompt]:
    """The conversations of a dataset's rows (its `conversation` column); for a hand-made dataset with
    only a `query` column, its bare questions (one-turn conversations)."""
    if "conversation" in rows.column_names:
        return [Conversation.from_json(text) for text in rows["conversation"]]
    return list(rows["query"])


def split_policy_queries(
    events: Iterable[FeedbackEvent], eval_fraction: float = 0.2
) -> tuple[list[Conversation], list[Conversation]]:
    """Every distinct conversation users gave feedback on (up to the answered question; whatever the
    verdict: a policy must learn the questions it answered badly too), split into (train, held-out) by
    a stable hash of its context, so a conversation never moves sides as feedback grows and every
    answer to one context lands on one side. TrainingError when either side is empty."""
    conversations = sorted({Conversation.of(e) for e in events}, key=lambda c: (c.query, c.to_json()))
    held_out = [c for c in conversations if _policy_side(c) < eval_fraction]
    train = [c for c in conversations if _policy_side(c) >= eval_fraction]
    if not train or not held_out:
        raise TrainingError(
            f"need queries on both sides of the train / held-out split, got {len(train)} train and {len(held_out)} held-out"
        )
    return train, held_out


def _policy_side(conversation: Conversation) -> float:
    # A lone question hashes its own text, as before conversations: old feedback keeps its split.
    lone = not conversation.history and not conversation.system
    return stable_fraction("policy-eval", conversation.query if lone else conversation.key)


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
    user_weight: Callable[[str], float] = lambda _: 1.0,
) -> RewardData:
    """Pairs and points from feedback records, split by conversation context; see the module docstring for the rules.

    `recent_ids` names the newest events (the latest trigger's, when training on a history): a pair
    of two of them, or a point from one, is `recent`, so training can weigh it up and evaluation can
    say how well the model ranks the newest policies' own answers. `user_weight` (`UserTrust.weight`)
    weighs each example by the users whose verdicts made it."""
    dropped: Counter[str] = Counter()
    invalid: list[str] = []
    events = _accepted_events(records, max_text_chars, dropped, invalid)

    by_context: dict[str, list[FeedbackEvent]] = defaultdict(list)
    for event in events:
        by_context[context_key(Conversation.of(event))].append(event)

    pairs: list[Pair] = []
    points: list[Point] = []
    for group in by_context.values():
        group_pairs, paired_ids = _pairs_of(group, recent_ids, user_weight)
        if len(group_pairs) > max_pairs_per_query:
            dropped["pair_cap"] += len(group_pairs) - max_pairs_per_query
            # Keep a deterministic, content-based subset so replaying a trigger rebuilds the same data;
            # the newest comparisons first (older answers in this context are what the policy no longer says).
            group_pairs = sorted(group_pairs, key=lambda p: (not p.recent, stable_hash64(p.chosen, p.rejected)))[
                :max_pairs_per_query
            ]
        pairs += group_pairs
        unpaired = [e for e in group if e.event_id not in paired_ids]
        points += [_point_of(e, min_rating, e.event_id in recent_ids, user_weight(e.user_id)) for e in unpaired]

    pairs = _dedupe(pairs, lambda p: (context_key(p.prompt), p.chosen, p.rejected), "duplicate_pair", dropped)
    points = _dedupe(points, lambda p: (context_key(p.prompt), p.response, p.label), "duplicate_point", dropped)

    split: dict[str, list[Any]] = {"train_pairs": [], "eval_pairs": [], "train_points": [], "eval_points": []}
    for pair in pairs:
        split["eval_pairs" if is_eval_query(pair.prompt, eval_fraction, split_salt) else "train_pairs"].append(pair)
    for point in points:
        split["eval_points" if is_eval_query(point.prompt, eval_fraction, split_salt) else "train_points"].append(point)

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
        # Answers to a follow-up (a question with earlier turns), the turns a single-turn model misreads.
        "follow_ups": {"events": sum(bool(e.history) for e in events), "pairs": sum(bool(p.prompt.history) for p in pairs)},
        "splits": {name: len(rows) for name, rows in split.items()},
        "queries": {"total": len(by_context), "eval": sum(_hashes_to_eval(k, eval_fraction, split_salt) for k in by_context)},
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


def _pairs_of(
    group: list[FeedbackEvent], recent_ids: frozenset[str] = frozenset(), user_weight: Callable[[str], float] = lambda _: 1.0
) -> tuple[list[Pair], set[str]]:
    """Every preference the events of one conversation context support, and the ids of the events
    used in one. Pairs cross model versions: during an A/B test two versions answer the same
    question, and their judged answers are comparisons of the newest policies."""
    pairs: list[Pair] = []
    used: set[str] = set()

    def add(chosen: FeedbackEvent, rejected: FeedbackEvent, source: str) -> None:
        if chosen.response != rejected.response:  # two verdicts on the same text are no preference
            recent = chosen.event_id in recent_ids and rejected.event_id in recent_ids
            pairs.append(
                Pair(
                    Conversation.of(chosen),
                    chosen.response,
                    rejected.response,
                    source,
                    kind_of(chosen),
                    kind_of(rejected),
                    recent,
                    user_weight(chosen.user_id) * user_weight(rejected.user_id),
                )
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
            recent = e.event_id in recent_ids
            weight = user_weight(e.user_id)
            pairs.append(
                Pair(Conversation.of(e), e.correction, e.response, "correction", "correction", "corrected", recent, weight)
            )
            used.add(e.event_id)
    return pairs, used


def _point_of(event: FeedbackEvent, min_rating: int, recent: bool, weight: float) -> Point:
    # Only ratings and thumbs get here: a correction always makes a pair.
    return Point(Conversation.of(event), event.response, float(event.is_positive(min_rating)), kind_of(event), recent, weight)


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
    text = {"query": [r.prompt.query for r in rows], "conversation": [r.prompt.to_json() for r in rows]}
    columns = {name: text[name] if name in text else [getattr(r, name) for r in rows] for name in features}
    return Dataset.from_dict(columns, features=features)
