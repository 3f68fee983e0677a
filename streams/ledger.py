"""Per-policy state of the stream app and the rules that change it: dedupe, the rolling buffer,
the trigger counter, the trigger gate (a running training, an open experiment) and the open
one-minute metric windows.

"Policy" is the model-family key of the feedback (`FeedbackEvent.policy`). Its state lives in two
changelog-backed tables (Faust tables in the worker, dicts in unit tests), as JSON values:

    state["policy:<policy>"]           PolicyState: watermarks, counters, trigger gate, open windows
    state["buffered:<policy>:<seq>"]   BufferedEvent: the seq-th accepted event of the rolling buffer
    state["last-trigger:<policy>"]     the last TrainTrigger emitted, to re-send it verbatim after a crash
    seen["<policy>/<event_id>"]        DedupeMark: where the accepted copy of an event sits, and when

PolicyState is a JSON object carrying its `layout` number; the small records are JSON lists in
their NamedTuple's field order (the order is the format: append fields, never reorder). Layout 1
(keys head:/slot:/trigger:) is not read: a worker upgraded over such a changelog starts each
policy's counters and buffer afresh; dedupe marks kept their format and still count.

Why this survives a crash under at-least-once delivery (docs/decisions/0001 says why not
exactly-once): all of a policy's `state` writes go to one changelog partition in order (buffered
events, trigger, PolicyState last), so a crash leaves a prefix of them; Faust flushes every write
before committing the input offset, so a record whose effects may be incomplete is processed again
after a restart. PolicyState's watermarks make that harmless: `last_applied_offset` (on the
internal topic: a record at or below it was applied, only its trigger is re-sent) and
`last_origin_offsets` (per feedback partition: the validation stage re-forwarding records after its
own crash). A dedupe mark names the copy it accepted, so a mark written just before a crash (the
other table's changelog is not ordered with PolicyState) does not reject that copy.

The gate holds the next trigger back while the last one's training runs (until it finishes, fails
or falls silent for `trigger_timeout_s`) and while an experiment of the policy is open: from its
`ExperimentStarted` to its `ExperimentDecided`, however long that takes (the decider ends an
experiment at its horizon; silence does not). Experiments are tracked by the trigger id of the
round whose candidate they test, one experiment per round. The trainer writes a round's
`ExperimentStarted` before its `finished` status at stage `candidate`, but the two topics reach
this stage in no fixed order, so that status holds the round open too, until its decision.
The latest decided rounds are remembered, so a re-delivered start or status does not re-open one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from core.settings import ContinuousLearningSettings
from schemas import OffsetRange, TrainingStatus, TrainTrigger, WindowMetrics
from schemas.events import CANDIDATE_STAGE, FeedbackType
from schemas.experiments import ExperimentStarted
from streams.records import Accepted, ExperimentStep, PolicyRecord

WINDOW_S = 60
WINDOW_GRACE_S = 5.0  # an event this late still joins its window; a later one is reported as a delta
POLICY_KEY_PREFIX = "policy:"
# Far more decided rounds than a re-forwarded backlog of the experiments topic could repeat.
DECIDED_MEMORY = 32

Outcome = Literal[
    "accepted", "duplicate", "reforwarded", "status", "status-ignored", "experiment", "experiment-ignored", "tick", "replayed"
]


def policy_key(policy: str) -> str:
    return f"{POLICY_KEY_PREFIX}{policy}"


def buffered_key(policy: str, seq: int) -> str:
    return f"buffered:{policy}:{seq}"


def last_trigger_key(policy: str) -> str:
    return f"last-trigger:{policy}"


def mark_key(policy: str, event_id: str) -> str:
    return f"{policy}/{event_id}"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class BufferedEvent(NamedTuple):
    """One accepted event in the rolling buffer: enough to name it in a trigger."""

    partition: int  # on the feedback topic
    offset: int
    event_id: str
    feedback_type: FeedbackType


class DedupeMark(NamedTuple):
    """The copy of an event that was accepted; a later copy within the horizon is a duplicate."""

    partition: int  # on the feedback topic
    offset: int
    record_ts: float  # Kafka record timestamp (s) of the accepted copy

    def is_copy(self, a: Accepted) -> bool:
        return (self.partition, self.offset) == (a.partition, a.offset)


class WindowDims(NamedTuple):
    """What one window count is broken down by; stored as a JSON string key of `open_windows`."""

    model_version: str
    experiment: str
    variant: str
    feedback_type: str

    def key(self) -> str:
        return json.dumps(list(self))

    @classmethod
    def of_key(cls, key: str) -> "WindowDims":
        return cls(*json.loads(key))


class WindowCount(NamedTuple):
    count: int = 0
    rating_sum: int = 0
    rating_count: int = 0

    def plus(self, rating: int | None) -> "WindowCount":
        if rating is None:
            return self._replace(count=self.count + 1)
        return WindowCount(self.count + 1, self.rating_sum + rating, self.rating_count + 1)


class Training(BaseModel):
    """The training a trigger started; it blocks re-triggering until it ends or falls silent."""

    trigger_id: str
    last_seen: float  # wall-clock seconds of the trigger or of its latest status


class PolicyState(BaseModel):
    """Everything about one policy but its buffered events: read, changed and written back per record."""

    layout: Literal[2] = 2  # see the module docstring; a record of another layout fails to load
    last_applied_offset: int = -1  # internal-topic offset of the last record applied
    last_origin_offsets: dict[int, int] = {}  # feedback partition -> offset of the last record seen from it
    accepted: int = 0  # accepted events ever; also the next buffered event's seq
    duplicates: int = 0
    accepted_since_trigger: int = 0
    model_version: str = ""  # of the latest accepted event
    training: Training | None = None
    # Open experiments: trigger id of the round -> experiment id ("" until its ExperimentStarted is read).
    experiments: dict[str, str] = {}
    decided: list[str] = []  # trigger ids of the latest decided experiments, oldest first
    last_trigger_offset: int = -1  # internal-topic offset of the record that emitted the last trigger
    latest_event_time: float = 0.0  # latest feedback timestamp seen (s): closes windows while a backlog is read
    open_windows: dict[int, dict[str, WindowCount]] = {}  # window start (s) -> WindowDims.key() -> count


@dataclass
class Effects:
    """What applying one record did (`outcome`, for logs and tests) and what must be sent."""

    outcome: Outcome
    triggers: list[TrainTrigger] = field(default_factory=list)
    metrics: list[WindowMetrics] = field(default_factory=list)


class PolicyLedger:
    def __init__(self, state: MutableMapping[str, Any], seen: MutableMapping[str, Any], settings: ContinuousLearningSettings, feedback_topic: str):
        self.state = state
        self.seen = seen
        self.settings = settings
        self.feedback_topic = feedback_topic

    def policy_state(self, policy: str) -> PolicyState:
        raw = self.state.get(policy_key(policy))
        return PolicyState() if raw is None else PolicyState.model_validate(raw)

    def apply(self, record: PolicyRecord, offset: int, now: float) -> Effects:
        """Apply one internal-topic record at wall-clock time `now` (seconds)."""
        ps = self.policy_state(record.policy)
        if offset <= ps.last_applied_offset:
            return self._reapply(record, ps, offset)
        if record.accepted is not None:
            effects = Effects(self._feedback(ps, record.accepted))
        elif record.status is not None:
            effects = Effects(self._status(ps, record.status))
        elif record.experiment is not None:
            effects = Effects(self._experiment(ps, record.experiment))
        else:
            effects = Effects("tick")
        trigger = self._maybe_trigger(record.policy, ps, now)
        if trigger is not None:
            self.state[last_trigger_key(record.policy)] = trigger.model_dump(mode="json")
            ps.last_trigger_offset = offset
            effects.triggers.append(trigger)
        # Windows close on event time as feedback flows (a backlog still aggregates), on wall time when idle.
        effects.metrics = self._close_windows(ps, now if record.tick is not None else ps.latest_event_time)
        ps.last_applied_offset = offset
        self.state[policy_key(record.policy)] = ps.model_dump(mode="json")
        return effects

    def due(self, now: float) -> Iterator[str]:
        """Policies that need a tick: a metric window to close, or a trigger a dead training held back.
        (A decision releases its held-back trigger as it is applied.)"""
        for key in list(self.state.keys()):
            if key.startswith(POLICY_KEY_PREFIX):
                ps = PolicyState.model_validate(self.state[key])
                closable = any(start + WINDOW_S + WINDOW_GRACE_S <= now for start in ps.open_windows)
                if closable or (ps.accepted_since_trigger >= self.settings.train_threshold and not self._blocked(ps, now)):
                    yield key.removeprefix(POLICY_KEY_PREFIX)

    def dedupe_mark(self, policy: str, event_id: str) -> DedupeMark | None:
        raw = self.seen.get(mark_key(policy, event_id))
        return None if raw is None else DedupeMark(*raw)

    def _set_mark(self, a: Accepted) -> None:
        self.seen[mark_key(a.policy, a.event_id)] = list(DedupeMark(a.partition, a.offset, a.record_ts))

    def _reapply(self, record: PolicyRecord, ps: PolicyState, offset: int) -> Effects:
        # Applied before a crash, input offset not yet committed: redo only what may not have landed.
        a = record.accepted
        if a is not None and self._live_mark(a) is None:
            self._set_mark(a)
        if offset == ps.last_trigger_offset:
            return Effects("replayed", triggers=[TrainTrigger.model_validate(self.state[last_trigger_key(record.policy)])])
        return Effects("replayed")

    def _live_mark(self, a: Accepted) -> DedupeMark | None:
        mark = self.dedupe_mark(a.policy, a.event_id)
        if mark is None or abs(a.record_ts - mark.record_ts) > self.settings.dedupe_horizon_s:
            return None
        return mark

    def _feedback(self, ps: PolicyState, a: Accepted) -> Outcome:
        if a.offset <= ps.last_origin_offsets.get(a.partition, -1):
            return "reforwarded"
        ps.last_origin_offsets[a.partition] = a.offset
        mark = self._live_mark(a)
        if mark is not None and not mark.is_copy(a):
            ps.duplicates += 1
            return "duplicate"
        self._set_mark(a)
        self.state[buffered_key(a.policy, ps.accepted)] = list(BufferedEvent(a.partition, a.offset, a.event_id, a.feedback_type))
        expired = buffered_key(a.policy, ps.accepted - self.settings.buffer_size)
        if expired in self.state:
            del self.state[expired]
        ps.accepted += 1
        ps.accepted_since_trigger += 1
        ps.model_version = a.model_version
        self._count(ps, a)
        return "accepted"

    def _status(self, ps: PolicyState, status: TrainingStatus) -> Outcome:
        # Only the training we triggered last counts: a late word from a superseded one is ignored.
        if ps.training is None or status.trigger_id != ps.training.trigger_id:
            return "status-ignored"
        if status.active:
            ps.training.last_seen = max(ps.training.last_seen, status.timestamp.timestamp())
            return "status"
        ps.training = None
        if status.stage == CANDIDATE_STAGE and status.trigger_id not in ps.decided:
            ps.experiments.setdefault(status.trigger_id, "")  # its ExperimentStarted may not have been read yet
        return "status"

    def _experiment(self, ps: PolicyState, step: ExperimentStep) -> Outcome:
        if step.trigger_id in ps.decided:
            return "experiment-ignored"  # a re-delivered start or decision of a decided round
        if isinstance(step, ExperimentStarted):
            ps.experiments[step.trigger_id] = step.experiment_id
        else:
            ps.experiments.pop(step.trigger_id, None)
            ps.decided = [*ps.decided, step.trigger_id][-DECIDED_MEMORY:]
        return "experiment"

    def _blocked(self, ps: PolicyState, now: float) -> bool:
        training = ps.training is not None and now - ps.training.last_seen <= self.settings.trigger_timeout_s
        return training or bool(ps.experiments)

    def _maybe_trigger(self, policy: str, ps: PolicyState, now: float) -> TrainTrigger | None:
        if ps.accepted_since_trigger < self.settings.train_threshold or self._blocked(ps, now):
            return None
        trigger = self._trigger(policy, ps, now)
        ps.accepted_since_trigger = 0
        ps.training = Training(trigger_id=trigger.trigger_id, last_seen=now)
        return trigger

    def buffered_events(self, policy: str, ps: PolicyState) -> list[BufferedEvent]:
        """The rolling buffer: the last `buffer_size` accepted events, oldest first."""
        first = max(0, ps.accepted - self.settings.buffer_size)
        raws = (self.state.get(buffered_key(policy, seq)) for seq in range(first, ps.accepted))
        return [BufferedEvent(*raw) for raw in raws if raw is not None]

    def _trigger(self, policy: str, ps: PolicyState, now: float) -> TrainTrigger:
        """A trigger covering the rolling buffer."""
        events = self.buffered_events(policy, ps)
        bounds: dict[int, tuple[int, int]] = {}
        for e in events:
            lo, hi = bounds.get(e.partition, (e.offset, e.offset))
            bounds[e.partition] = (min(lo, e.offset), max(hi, e.offset))
        ranges = tuple(OffsetRange(topic=self.feedback_topic, partition=p, start=lo, end=hi + 1) for p, (lo, hi) in sorted(bounds.items()))
        # Deterministic: the same buffer always gets the same id, so a re-emitted trigger is recognisable.
        digest = hashlib.sha256(json.dumps([policy, [[r.partition, r.end] for r in ranges]]).encode()).hexdigest()[:32]
        return TrainTrigger(
            trigger_id=f"trg-{digest}", policy=policy, model_version=ps.model_version, counts=dict(Counter(e.feedback_type for e in events)),
            ranges=ranges, event_ids=tuple(e.event_id for e in events), timestamp=_utc(now),
        )  # fmt: skip

    def _count(self, ps: PolicyState, a: Accepted) -> None:
        ps.latest_event_time = max(ps.latest_event_time, a.timestamp.timestamp())
        start = int(a.timestamp.timestamp() // WINDOW_S * WINDOW_S)
        dims = WindowDims(a.model_version, a.experiment or "", a.variant or "", a.feedback_type).key()
        window = ps.open_windows.setdefault(start, {})
        window[dims] = window.get(dims, WindowCount()).plus(a.rating)

    def _close_windows(self, ps: PolicyState, until: float) -> list[WindowMetrics]:
        closed = sorted(start for start in ps.open_windows if start + WINDOW_S + WINDOW_GRACE_S <= until)
        metrics = []
        for start in closed:
            for key, c in ps.open_windows.pop(start).items():
                dims = WindowDims.of_key(key)
                metrics.append(
                    WindowMetrics(
                        window_start=_utc(start), window_end=_utc(start + WINDOW_S), model_version=dims.model_version,
                        experiment=dims.experiment, variant=dims.variant, feedback_type=dims.feedback_type,
                        count=c.count, rating_sum=c.rating_sum, rating_count=c.rating_count,
                    )
                )  # fmt: skip
        return metrics
