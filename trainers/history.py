"""Which feedback a round's reward model learns from: the latest trigger's buffer plus a window of
earlier triggers (RLHFlow and Llama 2 accumulate preference data across rounds; a reward model fit
to the latest buffer alone only knows the answers of the policy that just changed).

    earlier = load_history(previous_rm_dir)                     # every trigger seen before, oldest first
    used = select_history(earlier, trigger, HistoryWindow.from_settings(settings))
    h = replay_history(used, replay, replay_between)            # their feedback and what arrived between them
    train_on = replay_sample(h.events, h.recent, 3000)          # a stable sample, the newest first

Between two triggers the stream app holds triggers back while a training or an A/B test runs; the
feedback users give meanwhile is accepted, but a rolling buffer smaller than that traffic moves past
it and no trigger names it. `between_ranges` finds those offsets and `replay_between` (the
trainer's `replay.replay_accepted`) reads them, so an A/B test's answers from both versions to the
same questions, the newest policy's comparisons, are learned from too.

A version names every trigger it used (`history.json` in the reward model's directory: the triggers
themselves, ranges and event ids), so its data replays exactly, as a single trigger's always did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from core.errors import TrainingError
from core.hashing import stable_fraction
from core.settings import Settings
from schemas import FeedbackEvent, OffsetRange, TrainTrigger

HISTORY_FILE = "history.json"
RECENT_SHARE = 2 / 3  # of a capped sample at most, for the newest events: the older history keeps the rest
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryWindow:
    max_triggers: int | None = None  # earlier triggers kept beside the latest; None: all, 0: the latest only
    max_age_s: float | None = None
    max_events: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> HistoryWindow:
        c = settings.continuous_learning
        return cls(c.history_triggers, c.history_max_age_s, c.history_max_events)


def select_history(earlier: Sequence[TrainTrigger], latest: TrainTrigger, window: HistoryWindow) -> list[TrainTrigger]:
    """The triggers a round trains on, oldest first, `latest` last: earlier triggers of the same
    policy, newest first, while the window allows (count, age relative to `latest`, events)."""
    chosen: list[TrainTrigger] = []
    events = set(latest.event_ids)  # distinct: consecutive buffers overlap
    for trigger in sorted(
        (t for t in earlier if t.policy == latest.policy and t.trigger_id != latest.trigger_id),
        key=lambda t: t.timestamp,
        reverse=True,
    ):
        if window.max_triggers is not None and len(chosen) >= window.max_triggers:
            break
        if window.max_age_s is not None and latest.timestamp - trigger.timestamp > timedelta(seconds=window.max_age_s):
            break
        if window.max_events is not None and len(events | set(trigger.event_ids)) > window.max_events:
            break
        chosen.append(trigger)
        events |= set(trigger.event_ids)
    return [*reversed(chosen), latest]


def replay_sample(events: Sequence[FeedbackEvent], recent: frozenset[str], max_events: int | None) -> list[FeedbackEvent]:
    """At most `max_events` of `events`, in the order given, chosen by a stable hash of their id (the
    same sample on every replay): every recent one while they fit in `RECENT_SHARE` of it (or in
    what the older ones leave), then older ones. None keeps them all."""
    if max_events is None or len(events) <= max_events:
        return list(events)
    n_recent = sum(e.event_id in recent for e in events)
    n_older = len(events) - n_recent
    keep_recent = min(n_recent, max(int(max_events * RECENT_SHARE), max_events - n_older))
    share = {True: keep_recent / n_recent if n_recent else 0.0, False: (max_events - keep_recent) / n_older if n_older else 0.0}
    return [e for e in events if stable_fraction("history-sample", e.event_id) < share[e.event_id in recent]]


def recent_ids(used: Sequence[TrainTrigger], arrived_between: Sequence[FeedbackEvent] = ()) -> frozenset[str]:
    """The latest trigger's events, and those that arrived between it and the trigger before
    (`arrived_between`), that no earlier trigger holds: what arrived since the last round (a
    trigger's buffer can overlap the one before)."""
    *earlier, latest = used
    seen = {event_id for t in earlier for event_id in t.event_ids}
    return frozenset({*latest.event_ids, *(e.event_id for e in arrived_between)} - seen)


def merge_events(batches: Sequence[Sequence[FeedbackEvent]]) -> list[FeedbackEvent]:
    """The events of several triggers, each once (overlapping buffers repeat them), oldest trigger first."""
    seen: set[str] = set()
    out = []
    for batch in batches:
        for event in batch:
            if event.event_id not in seen:
                seen.add(event.event_id)
                out.append(event)
    return out


def between_ranges(before: TrainTrigger, after: TrainTrigger) -> list[OffsetRange]:
    """Per partition both hold, the offsets after `before`'s range and before `after`'s: feedback
    accepted while no trigger could fire, that the rolling buffer moved past (none when they overlap)."""
    ends = {(r.topic, r.partition): r.end for r in before.ranges}
    return [
        OffsetRange(topic=r.topic, partition=r.partition, start=ends[(r.topic, r.partition)], end=r.start)
        for r in after.ranges
        if (r.topic, r.partition) in ends and r.start > ends[(r.topic, r.partition)]
    ]


class History(NamedTuple):
    events: list[FeedbackEvent]  # each once, oldest trigger first, what arrived between two triggers between them
    recent: frozenset[str]  # what arrived since the trigger before the latest
    triggers: list[TrainTrigger]  # the triggers read
    between: list[OffsetRange]  # the ranges between them that were read


def replay_history(
    used: Sequence[TrainTrigger],
    replay: Callable[[TrainTrigger], list[FeedbackEvent]],
    replay_between: Callable[[list[OffsetRange]], list[FeedbackEvent]] | None = None,
) -> History:
    """Every used trigger's feedback and, with `replay_between`, the feedback between each two
    (`between_ranges`), merged (`merge_events`); the ids that arrived since the trigger before the
    latest; the triggers and between-ranges actually read. An earlier trigger, or a between-range,
    that can no longer be read (TrainingError: retention took it) is left out and not named, so
    what a version names is exactly what it learned from; the latest trigger must be readable."""
    batches: list[tuple[TrainTrigger, list[FeedbackEvent]]] = []
    for n, trigger in enumerate(used):
        try:
            batches.append((trigger, replay(trigger)))
        except TrainingError as exc:
            if n == len(used) - 1:
                raise
            log.warning("history: trigger %s left out: %s", trigger.trigger_id, exc)
    out: list[list[FeedbackEvent]] = []
    read: list[OffsetRange] = []
    for n, (trigger, batch) in enumerate(batches):
        ranges = between_ranges(batches[n - 1][0], trigger) if n and replay_between is not None else []
        since_previous: list[FeedbackEvent] = []
        if ranges:
            try:
                since_previous = replay_between(ranges)  # type: ignore[misc]
                read += ranges
            except TrainingError as exc:
                log.warning("history: feedback before trigger %s left out: %s", trigger.trigger_id, exc)
        out += [since_previous, batch]
    kept = [trigger for trigger, _ in batches]
    # since_previous is the loop's last: what arrived between the trigger before and the latest
    return History(merge_events(out), recent_ids(kept, since_previous), kept, read)


def save_history(directory: Path, known: Sequence[TrainTrigger], used: Sequence[TrainTrigger]) -> None:
    """`known`: every trigger seen so far (the next round's window chooses from them); `used`: this version's data."""
    payload = {"used": [t.trigger_id for t in used], "known": [json.loads(t.model_dump_json()) for t in known]}
    (directory / HISTORY_FILE).write_text(json.dumps(payload))


def load_history(directory: Path | None) -> tuple[list[TrainTrigger], list[str]]:
    """(every trigger known to the version in `directory`, the ids of those it trained on); empty
    for a version made before histories were kept, or none."""
    path = directory / HISTORY_FILE if directory is not None else None
    if path is None or not path.is_file():
        return [], []
    payload = json.loads(path.read_text())
    return [TrainTrigger.model_validate(t) for t in payload["known"]], list(payload["used"])
