"""Which feedback a round's reward model learns from: the latest trigger's buffer plus a window of
earlier triggers (RLHFlow and Llama 2 accumulate preference data across rounds; a reward model fit
to the latest buffer alone only knows the answers of the policy that just changed).

    earlier = load_history(previous_rm_dir)                     # every trigger seen before, oldest first
    used = select_history(earlier, trigger, HistoryWindow.from_settings(settings))
    events, recent, used = replay_history(used, replay)         # their feedback, the newest ids, the triggers read
    train_on = replay_sample(events, recent, 3000)              # the newest, and a stable sample of the rest

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

from core.errors import TrainingError
from core.hashing import stable_fraction
from core.settings import Settings
from schemas import FeedbackEvent, TrainTrigger

HISTORY_FILE = "history.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryWindow:
    max_triggers: int | None = None  # earlier triggers kept beside the latest; None: all, 0: the latest only
    max_age_s: float | None = None
    max_events: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "HistoryWindow":
        c = settings.continuous_learning
        return cls(c.history_triggers, c.history_max_age_s, c.history_max_events)


def select_history(earlier: Sequence[TrainTrigger], latest: TrainTrigger, window: HistoryWindow) -> list[TrainTrigger]:
    """The triggers a round trains on, oldest first, `latest` last: earlier triggers of the same
    policy, newest first, while the window allows (count, age relative to `latest`, events)."""
    chosen: list[TrainTrigger] = []
    events = set(latest.event_ids)  # distinct: consecutive buffers overlap
    for trigger in sorted((t for t in earlier if t.policy == latest.policy and t.trigger_id != latest.trigger_id),
                          key=lambda t: t.timestamp, reverse=True):  # fmt: skip
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
    """At most `max_events` of `events`: every recent one, then older ones chosen by a stable hash of
    their id (the same sample on every replay), in the order given. None keeps them all."""
    if max_events is None or len(events) <= max_events:
        return list(events)
    older = [e for e in events if e.event_id not in recent]
    share = max(0, max_events - (len(events) - len(older))) / len(older)
    return [e for e in events if e.event_id in recent or stable_fraction("history-sample", e.event_id) < share]


def recent_ids(used: Sequence[TrainTrigger]) -> frozenset[str]:
    """The latest trigger's events that no earlier one holds: what arrived since the last round
    (a trigger's buffer can overlap the one before)."""
    *earlier, latest = used
    seen = {event_id for t in earlier for event_id in t.event_ids}
    return frozenset(latest.event_ids) - seen


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


def replay_history(used: Sequence[TrainTrigger], replay: Callable[[TrainTrigger], list[FeedbackEvent]],
                   ) -> tuple[list[FeedbackEvent], frozenset[str], list[TrainTrigger]]:  # fmt: skip
    """Every used trigger's feedback, merged (`merge_events`); the ids that are new in the latest;
    and the triggers actually read. An earlier trigger whose ranges can no longer be read
    (`replay` raises TrainingError: retention took them) is left out and not named as used, so
    what a version names is exactly what it learned from; the latest trigger must be readable."""
    batches, kept = [], []
    for n, trigger in enumerate(used):
        try:
            batches.append(replay(trigger))
        except TrainingError as exc:
            if n == len(used) - 1:
                raise
            log.warning("history: trigger %s left out: %s", trigger.trigger_id, exc)
            continue
        kept.append(trigger)
    return merge_events(batches), recent_ids(kept), kept


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
