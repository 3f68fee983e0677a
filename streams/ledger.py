"""Per-policy state of the stream app and the rules that change it: dedupe, the rolling buffer,
the trigger counter, the trigger gate (a running training, an open experiment) and the open
one-minute metric windows (streams/windows.py).

"Policy" is the model-family key of the feedback (`FeedbackEvent.policy`). Its state lives in two
changelog-backed tables (Faust tables in the worker, dicts in unit tests), as JSON values:

    state["policy:<policy>"]           PolicyState: watermarks, counters, trigger gate, open windows
    state["buffered:<policy>:<seq>"]   a chunk of the rolling buffer: the BufferedEvents accepted
                                       from seq on in one batch (PolicyState.chunks lists the chunks)
    state["last-trigger:<policy>"]     the last TrainTrigger emitted, to re-send it verbatim after a crash
    seen["<policy>/<event_id>"]        DedupeMark: where the accepted copy of an event sits, and when

Records are applied in batches (`stage` then `commit`, or `apply` for one record): a batch costs
one PolicyState write, one buffer chunk, one write of its dedupe marks (one changelog record in the
worker: streams/changelog.py) and a trigger if one fired, however many events it holds. The rules
are applied event by event inside a batch, so where a batch starts or ends changes no trigger: a
batch re-read after a crash in other boundaries emits the same trigger ids.

PolicyState is a JSON object carrying its `layout` number; the small records are JSON lists in
their NamedTuple's field order (the order is the format: append fields, never reorder). Layout 2
(one `buffered:` key per event) is read and carried on: its keys count as one-event chunks. Layout 1
(keys head:/slot:/trigger:) is not read: such a policy starts its counters and buffer afresh.

Why this survives a crash under at-least-once delivery (docs/decisions/0001 says why not
exactly-once): all of a policy's `state` writes go to one changelog partition in order (buffer
chunk, trigger, PolicyState last), so a crash leaves a prefix of them; Faust flushes every write
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
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from core.learning_settings import ContinuousLearningSettings
from schemas import OffsetRange, TrainingStatus, TrainTrigger, WindowMetrics
from schemas.events import CANDIDATE_STAGE, FeedbackType
from schemas.experiments import ExperimentStarted
from streams import windows
from streams.records import Accepted, ExperimentStep, PolicyRecord
from streams.windows import WINDOW_GRACE_S, WINDOW_S, WindowCount, WindowDims

__all__ = ["WINDOW_GRACE_S", "WINDOW_S", "WindowCount", "WindowDims"]  # re-exported: part of the state format

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


class Training(BaseModel):
    """The training a trigger started; it blocks re-triggering until it ends or falls silent."""

    trigger_id: str
    last_seen: float  # wall-clock seconds of the trigger or of its latest status


class PolicyState(BaseModel):
    """Everything about one policy but its buffered events: read once, changed and written back per batch."""

    layout: Literal[2, 3] = 3  # see the module docstring; a record of another layout fails to load
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
    open_windows: windows.OpenWindows = {}
    chunks: list[int] = []  # first seq of each stored buffer chunk, oldest first


@dataclass
class Effects:
    """What applying one record did (`outcome`, for logs and tests) and what must be sent.
    A record carrying a batch of feedback has the outcome of its last event; `accepted` counts them."""

    outcome: Outcome
    triggers: list[TrainTrigger] = field(default_factory=list)
    metrics: list[WindowMetrics] = field(default_factory=list)
    accepted: int = 0
    replayed: bool = False  # applied before a crash: its triggers were sent then (see streams/app.py)


@dataclass
class Staged:
    """A policy's batch applied in memory (`PolicyLedger.stage`), not yet written (`commit`)."""

    policy: str
    ps: PolicyState
    effects: list[Effects] = field(default_factory=list)
    chunk_start: int = 0
    chunk: list[list[Any]] = field(default_factory=list)  # BufferedEvents, as they are stored
    marks: dict[str, list[Any]] = field(default_factory=dict)
    last_trigger: TrainTrigger | None = None

    @property
    def triggers(self) -> list[TrainTrigger]:
        return [t for e in self.effects for t in e.triggers]


class PolicyLedger:
    def __init__(
        self,
        state: MutableMapping[str, Any],
        seen: MutableMapping[str, Any],
        settings: ContinuousLearningSettings,
        feedback_topic: str,
    ):
        self.state = state
        self.seen = seen
        self.settings = settings
        self.feedback_topic = feedback_topic

    def policy_state(self, policy: str) -> PolicyState:
        raw = self.state.get(policy_key(policy))
        if raw is None:
            return PolicyState()
        ps = PolicyState.model_validate(raw)
        if ps.layout == 2:  # one buffered key per event: each is a chunk of one
            first = max(0, ps.accepted - self.settings.buffer_size)
            ps.chunks = [seq for seq in range(first, ps.accepted) if buffered_key(policy, seq) in self.state]
            ps.layout = 3
        return ps

    def apply(self, record: PolicyRecord, offset: int, now: float) -> Effects:
        """Apply one internal-topic record at wall-clock time `now` (seconds) and write its effects."""
        staged = self.stage(record.policy, [(record, offset)], now)
        self.commit(staged)
        return staged.effects[0]

    def stage(self, policy: str, records: Sequence[tuple[PolicyRecord, int]], now: float) -> Staged:
        """Apply a policy's records (with their internal-topic offsets, in order) in memory. Triggers
        are in the effects; nothing is written until `commit`, so the caller can make them durable first."""
        staged = Staged(policy, self.policy_state(policy))
        staged.chunk_start = staged.ps.accepted
        for record, offset in records:
            staged.effects.append(self._stage_one(staged, record, offset, now))
        return staged

    def commit(self, staged: Staged) -> None:
        """Write a staged batch: buffer chunk, expired chunks away, dedupe marks, trigger, PolicyState last."""
        policy, ps = staged.policy, staged.ps
        if staged.chunk:
            self.state[buffered_key(policy, staged.chunk_start)] = staged.chunk
            ps.chunks.append(staged.chunk_start)
        oldest_kept = ps.accepted - self.settings.buffer_size
        while len(ps.chunks) > 1 and ps.chunks[1] <= oldest_kept:  # the next chunk starts early enough: all expired
            self.state.pop(buffered_key(policy, ps.chunks.pop(0)), None)
        if staged.marks:
            self.seen.update(staged.marks)
        if staged.last_trigger is not None:
            self.state[last_trigger_key(policy)] = staged.last_trigger.model_dump(mode="json")
        self.state[policy_key(policy)] = ps.model_dump(mode="json")

    def due(self, now: float) -> Iterator[str]:
        """Policies that need a tick: a metric window to close, or a trigger a dead training held back.
        (A decision releases its held-back trigger as it is applied.)"""
        for key in list(self.state.keys()):
            if key.startswith(POLICY_KEY_PREFIX):
                ps = PolicyState.model_validate(self.state[key])
                held = ps.accepted_since_trigger >= self.settings.train_threshold and not self._blocked(ps, now)
                if windows.closable(ps.open_windows, now) or held:
                    yield key.removeprefix(POLICY_KEY_PREFIX)

    def dedupe_mark(self, policy: str, event_id: str, staged: Staged | None = None) -> DedupeMark | None:
        key = mark_key(policy, event_id)
        raw = staged.marks.get(key) if staged is not None else None
        if raw is None:
            raw = self.seen.get(key)
        return None if raw is None else DedupeMark(*raw)

    def buffered_events(self, policy: str, ps: PolicyState, staged: Staged | None = None) -> list[BufferedEvent]:
        """The rolling buffer: the last `buffer_size` accepted events, oldest first."""
        first = max(0, ps.accepted - self.settings.buffer_size)
        events: list[BufferedEvent] = []
        for start in ps.chunks:
            raw = self.state.get(buffered_key(policy, start))
            chunk = [] if raw is None else [raw] if raw and isinstance(raw[0], int) else raw  # layout 2: one event
            events.extend(BufferedEvent(*e) for seq, e in enumerate(chunk, start) if seq >= first)
        if staged is not None:
            events.extend(BufferedEvent(*e) for seq, e in enumerate(staged.chunk, staged.chunk_start) if seq >= first)
        return events

    def _stage_one(self, staged: Staged, record: PolicyRecord, offset: int, now: float) -> Effects:
        ps = staged.ps
        if offset <= ps.last_applied_offset:
            return self._reapply(staged, record, offset)
        if record.accepted is not None or record.batch:
            effects = self._feedback(staged, record, offset, now)
        else:
            if record.status is not None:
                effects = Effects(self._status(ps, record.status))
            elif record.experiment is not None:
                effects = Effects(self._experiment(ps, record.experiment))
            else:
                effects = Effects("tick")
            self._maybe_trigger(staged, effects, offset, now)
        # Windows close on event time as feedback flows (a backlog still aggregates), on wall time when idle.
        effects.metrics = windows.close(ps.open_windows, now if record.tick is not None else ps.latest_event_time)
        ps.last_applied_offset = offset
        return effects

    def _reapply(self, staged: Staged, record: PolicyRecord, offset: int) -> Effects:
        # Applied before a crash, input offset not yet committed: redo only what may not have landed.
        for a in _events(record):
            if self._live_mark(staged, a) is None:
                staged.marks[mark_key(a.policy, a.event_id)] = list(DedupeMark(a.partition, a.offset, a.record_ts))
        if offset == staged.ps.last_trigger_offset:
            trigger = TrainTrigger.model_validate(self.state[last_trigger_key(staged.policy)])
            return Effects("replayed", triggers=[trigger], replayed=True)
        return Effects("replayed", replayed=True)

    def _live_mark(self, staged: Staged, a: Accepted) -> DedupeMark | None:
        mark = self.dedupe_mark(a.policy, a.event_id, staged)
        if mark is None or abs(a.record_ts - mark.record_ts) > self.settings.dedupe_horizon_s:
            return None
        return mark

    def _feedback(self, staged: Staged, record: PolicyRecord, offset: int, now: float) -> Effects:
        """Each event by the per-event rules; the threshold is checked after every accepted one."""
        effects = Effects("accepted")
        for a in _events(record):
            effects.outcome = self._one_event(staged, a)
            if effects.outcome == "accepted":
                effects.accepted += 1
                self._maybe_trigger(staged, effects, offset, now)
        return effects

    def _one_event(self, staged: Staged, a: Accepted) -> Outcome:
        ps = staged.ps
        if a.offset <= ps.last_origin_offsets.get(a.partition, -1):
            return "reforwarded"
        ps.last_origin_offsets[a.partition] = a.offset
        mark = self._live_mark(staged, a)
        if mark is not None and not mark.is_copy(a):
            ps.duplicates += 1
            return "duplicate"
        staged.marks[mark_key(a.policy, a.event_id)] = [a.partition, a.offset, a.record_ts]  # a DedupeMark as stored
        staged.chunk.append([a.partition, a.offset, a.event_id, a.feedback_type])  # a BufferedEvent as stored
        if len(staged.chunk) > self.settings.buffer_size:  # a batch larger than the buffer keeps its tail
            del staged.chunk[0]
            staged.chunk_start += 1
        ps.accepted += 1
        ps.accepted_since_trigger += 1
        ps.model_version = a.model_version
        ps.latest_event_time = max(ps.latest_event_time, windows.count(ps.open_windows, a))
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

    def _maybe_trigger(self, staged: Staged, effects: Effects, offset: int, now: float) -> None:
        ps = staged.ps
        if ps.accepted_since_trigger < self.settings.train_threshold or self._blocked(ps, now):
            return
        trigger = self._trigger(staged, now)
        ps.accepted_since_trigger = 0
        ps.training = Training(trigger_id=trigger.trigger_id, last_seen=now)
        ps.last_trigger_offset = offset
        staged.last_trigger = trigger
        effects.triggers.append(trigger)

    def _trigger(self, staged: Staged, now: float) -> TrainTrigger:
        """A trigger covering the rolling buffer."""
        policy, ps = staged.policy, staged.ps
        events = self.buffered_events(policy, ps, staged)
        bounds: dict[int, tuple[int, int]] = {}
        for e in events:
            lo, hi = bounds.get(e.partition, (e.offset, e.offset))
            bounds[e.partition] = (min(lo, e.offset), max(hi, e.offset))
        ranges = tuple(
            OffsetRange(topic=self.feedback_topic, partition=p, start=lo, end=hi + 1) for p, (lo, hi) in sorted(bounds.items())
        )
        # Deterministic: the same buffer always gets the same id, so a re-emitted trigger is recognisable.
        digest = hashlib.sha256(json.dumps([policy, [[r.partition, r.end] for r in ranges]]).encode()).hexdigest()[:32]
        return TrainTrigger(
            trigger_id=f"trg-{digest}",
            policy=policy,
            model_version=ps.model_version,
            counts=dict(Counter(e.feedback_type for e in events)),
            ranges=ranges,
            event_ids=tuple(e.event_id for e in events),
            timestamp=windows.utc(now),
        )


def _events(record: PolicyRecord) -> tuple[Accepted, ...]:
    if record.accepted is not None:
        return (record.accepted,)
    return record.batch or ()
