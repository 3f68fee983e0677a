"""Per-policy state of the stream app and the rules that change it: dedupe, the rolling buffer,
the trigger counter, the training gate and the open one-minute metric windows.

State lives in two changelog-backed tables (Faust tables in the worker, dicts in unit tests):

    state["head:<policy>"]        counters, watermarks, training gate, open windows (one small record)
    state["slot:<policy>:<seq>"]  the seq-th accepted event: [partition, offset, event_id, feedback_type]
    state["trigger:<policy>"]     the last trigger emitted, to re-send it verbatim after a crash
    seen["<policy>/<event_id>"]   [partition, offset, record_ts] of the accepted copy of an event

Why this survives a crash under at-least-once delivery (app.py says why not exactly-once): all of
a policy's `state` writes go to one changelog partition in order (slots, trigger, head last), so a
crash leaves a prefix of them; Faust flushes every write before committing the input offset, so a
record whose effects may be incomplete is processed again after a restart. The head's watermarks
make that harmless: `offset` (on the internal topic: a record at or below it was applied, only its
trigger is re-sent) and `origins` (per feedback partition: the validation stage re-forwarding
records after its own crash). A dedupe mark names the copy it accepted, so a mark written just
before a crash (the other table's changelog is not ordered with the head) does not reject it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from core.settings import ContinuousLearningSettings
from schemas import OffsetRange, TrainingStatus, TrainTrigger, WindowMetrics
from streams.records import Accepted, PolicyRecord

WINDOW_S = 60
WINDOW_GRACE_S = 5.0  # an event this late still joins its window; a later one is reported as a delta


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class Training(BaseModel):
    """The training a trigger started; it blocks re-triggering until it ends or falls silent."""

    trigger_id: str
    last_seen: float  # wall-clock seconds of the trigger or of its latest status


class Head(BaseModel):
    offset: int = -1  # internal-topic offset of the last record applied
    origins: dict[int, int] = {}  # feedback partition -> offset of the last record seen from it
    accepted: int = 0  # accepted events ever; also the next slot's seq
    duplicates: int = 0
    since_trigger: int = 0
    model_version: str = ""
    training: Training | None = None
    trigger_offset: int = -1  # internal-topic offset of the record that emitted the last trigger
    event_time: float = 0.0  # latest feedback timestamp seen (s): closes windows while a backlog is read
    windows: dict[int, dict[str, list[int]]] = {}  # window start (s) -> dims (json) -> [count, rating_sum, rating_count]


@dataclass
class Effects:
    """What applying one record did (`outcome`, for logs and tests) and what must be sent."""

    outcome: str
    triggers: list[TrainTrigger] = field(default_factory=list)
    metrics: list[WindowMetrics] = field(default_factory=list)


class PolicyLedger:
    def __init__(self, state: MutableMapping[str, Any], seen: MutableMapping[str, Any], settings: ContinuousLearningSettings, feedback_topic: str):
        self.state = state
        self.seen = seen
        self.settings = settings
        self.feedback_topic = feedback_topic

    def head(self, policy: str) -> Head:
        raw = self.state.get(f"head:{policy}")
        return Head() if raw is None else Head.model_validate(raw)

    def apply(self, record: PolicyRecord, offset: int, now: float) -> Effects:
        """Apply one internal-topic record at wall-clock time `now` (seconds)."""
        head = self.head(record.policy)
        if offset <= head.offset:
            return self._reapply(record, head, offset)
        if record.accepted is not None:
            effects = Effects(self._feedback(head, record.accepted))
        elif record.status is not None:
            effects = Effects(self._status(head, record.status))
        else:
            effects = Effects("tick")
        trigger = self._maybe_trigger(record.policy, head, now)
        if trigger is not None:
            self.state[f"trigger:{record.policy}"] = trigger.model_dump(mode="json")
            head.trigger_offset = offset
            effects.triggers.append(trigger)
        # Windows close on event time as feedback flows (a backlog still aggregates), on wall time when idle.
        effects.metrics = self._close_windows(head, now if record.tick is not None else head.event_time)
        head.offset = offset
        self.state[f"head:{record.policy}"] = head.model_dump(mode="json")
        return effects

    def due(self, now: float) -> Iterator[str]:
        """Policies that need a tick: a metric window to close, or a trigger a dead training held back."""
        for key in list(self.state.keys()):
            if key.startswith("head:"):
                head = Head.model_validate(self.state[key])
                closable = any(start + WINDOW_S + WINDOW_GRACE_S <= now for start in head.windows)
                if closable or (head.since_trigger >= self.settings.train_threshold and not self._blocked(head, now)):
                    yield key.removeprefix("head:")

    def _reapply(self, record: PolicyRecord, head: Head, offset: int) -> Effects:
        # Applied before a crash, input offset not yet committed: redo only what may not have landed.
        a = record.accepted
        if a is not None and self._live_mark(a) is None:
            self.seen[f"{a.policy}/{a.event_id}"] = [a.partition, a.offset, a.record_ts]
        if offset == head.trigger_offset:
            return Effects("replayed", triggers=[TrainTrigger.model_validate(self.state[f"trigger:{record.policy}"])])
        return Effects("replayed")

    def _live_mark(self, a: Accepted) -> list[Any] | None:
        mark = self.seen.get(f"{a.policy}/{a.event_id}")
        if mark is None or abs(a.record_ts - mark[2]) > self.settings.dedupe_horizon_s:
            return None
        return mark

    def _feedback(self, head: Head, a: Accepted) -> str:
        if a.offset <= head.origins.get(a.partition, -1):
            return "reforwarded"
        head.origins[a.partition] = a.offset
        mark = self._live_mark(a)
        if mark is not None and mark[:2] != [a.partition, a.offset]:
            head.duplicates += 1
            return "duplicate"
        self.seen[f"{a.policy}/{a.event_id}"] = [a.partition, a.offset, a.record_ts]
        self.state[f"slot:{a.policy}:{head.accepted}"] = [a.partition, a.offset, a.event_id, a.feedback_type]
        expired = f"slot:{a.policy}:{head.accepted - self.settings.buffer_size}"
        if expired in self.state:
            del self.state[expired]
        head.accepted += 1
        head.since_trigger += 1
        head.model_version = a.model_version
        self._count(head, a)
        return "accepted"

    def _status(self, head: Head, status: TrainingStatus) -> str:
        # Only the training we triggered last counts: a late word from a superseded one is ignored.
        if head.training is None or status.trigger_id != head.training.trigger_id:
            return "status-ignored"
        if status.active:
            head.training.last_seen = max(head.training.last_seen, status.timestamp.timestamp())
        else:
            head.training = None
        return "status"

    def _blocked(self, head: Head, now: float) -> bool:
        return head.training is not None and now - head.training.last_seen <= self.settings.trigger_timeout_s

    def _maybe_trigger(self, policy: str, head: Head, now: float) -> TrainTrigger | None:
        if head.since_trigger < self.settings.train_threshold or self._blocked(head, now):
            return None
        trigger = self._trigger(policy, head, now)
        head.since_trigger = 0
        head.training = Training(trigger_id=trigger.trigger_id, last_seen=now)
        return trigger

    def _trigger(self, policy: str, head: Head, now: float) -> TrainTrigger:
        """A trigger covering the rolling buffer: the last `buffer_size` accepted events."""
        first = max(0, head.accepted - self.settings.buffer_size)
        slots = [s for s in (self.state.get(f"slot:{policy}:{n}") for n in range(first, head.accepted)) if s is not None]
        bounds: dict[int, tuple[int, int]] = {}
        for partition, offset, *_ in slots:
            lo, hi = bounds.get(partition, (offset, offset))
            bounds[partition] = (min(lo, offset), max(hi, offset))
        ranges = tuple(OffsetRange(topic=self.feedback_topic, partition=p, start=lo, end=hi + 1) for p, (lo, hi) in sorted(bounds.items()))
        # Deterministic: the same buffer always gets the same id, so a re-emitted trigger is recognisable.
        digest = hashlib.sha256(json.dumps([policy, [[r.partition, r.end] for r in ranges]]).encode()).hexdigest()[:32]
        return TrainTrigger(
            trigger_id=f"trg-{digest}", policy=policy, model_version=head.model_version, counts=dict(Counter(s[3] for s in slots)),
            ranges=ranges, event_ids=tuple(s[2] for s in slots), timestamp=_utc(now),
        )  # fmt: skip

    def _count(self, head: Head, a: Accepted) -> None:
        head.event_time = max(head.event_time, a.timestamp.timestamp())
        start = int(a.timestamp.timestamp() // WINDOW_S * WINDOW_S)
        dims = json.dumps([a.model_version, a.experiment or "", a.variant or "", a.feedback_type])
        cell = head.windows.setdefault(start, {}).setdefault(dims, [0, 0, 0])
        cell[0] += 1
        if a.rating is not None:
            cell[1] += a.rating
            cell[2] += 1

    def _close_windows(self, head: Head, until: float) -> list[WindowMetrics]:
        closed = sorted(start for start in head.windows if start + WINDOW_S + WINDOW_GRACE_S <= until)
        metrics = []
        for start in closed:
            for dims, (count, rating_sum, rating_count) in head.windows.pop(start).items():
                model_version, experiment, variant, feedback_type = json.loads(dims)
                metrics.append(
                    WindowMetrics(
                        window_start=_utc(start), window_end=_utc(start + WINDOW_S), model_version=model_version, experiment=experiment,
                        variant=variant, feedback_type=feedback_type, count=count, rating_sum=rating_sum, rating_count=rating_count,
                    )
                )  # fmt: skip
        return metrics
