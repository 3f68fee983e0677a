"""The per-policy rules on dicts that hold what a changelog would (every value goes through JSON):
threshold, rolling buffer, dedupe, the training gate, crash re-processing and metric windows."""

import json
from collections import UserDict
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.learning_settings import ContinuousLearningSettings
from schemas import TrainingStatus
from streams.ledger import WINDOW_GRACE_S, WINDOW_S, BufferedEvent, DedupeMark, PolicyLedger, PolicyState, WindowCount
from streams.records import Accepted, PolicyRecord

T0 = 1_800_000_000.0  # wall clock of the tests (seconds); a multiple of 60


class Changelog(UserDict):
    """A table whose values are stored as JSON text and read back decoded, like Faust's json codec:
    state that does not round-trip through the changelog fails here."""

    def __setitem__(self, key, value):
        self.data[key] = json.dumps(value)

    def __getitem__(self, key):
        return json.loads(self.data[key])


class Run:
    """A ledger fed like the agent feeds it: one internal-topic offset per record."""

    def __init__(self, **limits):
        self.settings = ContinuousLearningSettings(**{"buffer_size": 5, "train_threshold": 3, **limits})
        self.state, self.seen = Changelog(), Changelog()
        self.ledger = PolicyLedger(self.state, self.seen, self.settings, "t.feedback")
        self.offset = -1
        self.now = T0

    def feed(self, record, offset=None):
        if offset is None:
            self.offset += 1
            offset = self.offset
        return self.ledger.apply(record, offset, self.now)

    def policy_state(self):
        return self.ledger.policy_state("assistant")


def fb(n, partition=0, offset=None, event_id=None, record_ts=T0, **fields):
    accepted = Accepted(
        event_id=event_id or f"e{n}",
        policy="assistant",
        model_version=fields.get("model_version", "v1"),
        experiment=fields.get("experiment"),
        variant=fields.get("variant"),
        feedback_type=fields.get("feedback_type", "thumbs_up"),
        rating=fields.get("rating"),
        timestamp=fields.get("timestamp", datetime.fromtimestamp(T0, UTC)),
        partition=partition,
        offset=n if offset is None else offset,
        record_ts=record_ts,
    )
    return PolicyRecord(policy="assistant", accepted=accepted)


def status(trigger_id, state, at=T0):
    return PolicyRecord(
        policy="assistant",
        status=TrainingStatus(trigger_id=trigger_id, policy="assistant", state=state, timestamp=datetime.fromtimestamp(at, UTC)),
    )


def test_threshold_emits_one_trigger_covering_exact_offsets():
    run = Run()
    effects = [run.feed(fb(n, partition=n % 2)) for n in range(3)]
    assert [e.outcome for e in effects] == ["accepted"] * 3
    assert [len(e.triggers) for e in effects] == [0, 0, 1]
    trigger = effects[2].triggers[0]
    assert trigger.event_ids == ("e0", "e1", "e2") and trigger.counts == {"thumbs_up": 3} and trigger.model_version == "v1"
    assert [(r.topic, r.partition, r.start, r.end) for r in trigger.ranges] == [("t.feedback", 0, 0, 3), ("t.feedback", 1, 1, 2)]
    assert run.policy_state().accepted_since_trigger == 0 and run.policy_state().training.trigger_id == trigger.trigger_id


def test_active_training_blocks_until_it_finishes_then_buffer_is_covered():
    run = Run()
    first = [t for n in range(3) for t in run.feed(fb(n)).triggers][0]
    assert not [t for n in range(3, 7) for t in run.feed(fb(n)).triggers]  # 4 more: blocked
    assert run.feed(status("someone-else", "finished")).outcome == "status-ignored"
    assert run.feed(status(first.trigger_id, "progress")).triggers == []
    assert run.feed(status(first.trigger_id, "guardrail")).triggers == []  # an update rolled back: still training
    second = run.feed(status(first.trigger_id, "finished")).triggers
    assert len(second) == 1 and second[0].event_ids == ("e2", "e3", "e4", "e5", "e6")  # the rolling buffer: last 5
    assert second[0].trigger_id != first.trigger_id
    assert sum(k.startswith("buffered:") for k in run.state) == 5  # older buffered events are deleted


def test_silent_training_is_dead_after_timeout_and_a_tick_triggers():
    run = Run(trigger_timeout_s=30)
    first = [t for n in range(3) for t in run.feed(fb(n)).triggers][0]
    [run.feed(fb(n)) for n in range(3, 6)]
    run.now = T0 + 20
    run.feed(status(first.trigger_id, "started", at=T0 + 20))  # still alive: refreshes last_seen
    run.now = T0 + 45
    assert list(run.ledger.due(run.now)) == []
    run.now = T0 + 51
    assert list(run.ledger.due(run.now)) == ["assistant"]
    tick = run.feed(PolicyRecord(policy="assistant", tick=run.now))
    assert tick.outcome == "tick" and len(tick.triggers) == 1
    assert run.feed(status(first.trigger_id, "finished")).outcome == "status-ignored"  # superseded


def test_duplicates_within_horizon_do_not_count():
    run = Run(dedupe_horizon_s=60)
    assert run.feed(fb(0, event_id="x", record_ts=T0)).outcome == "accepted"
    assert run.feed(fb(1, event_id="x", record_ts=T0 + 5)).outcome == "duplicate"  # producer retry, later offset
    assert run.feed(fb(0, partition=1, event_id="x", record_ts=T0 + 6)).outcome == "duplicate"  # same id, other partition
    assert run.feed(fb(2, event_id="x", record_ts=T0 + 61)).outcome == "accepted"  # beyond the horizon: new
    assert (run.policy_state().accepted, run.policy_state().duplicates) == (2, 2)


def test_validation_stage_reforwarding_is_ignored():
    run = Run()
    run.feed(fb(0))
    run.feed(fb(1))
    assert run.feed(fb(1)).outcome == "reforwarded"  # same origin offset, new internal offset
    assert run.feed(fb(2)).outcome == "accepted" and run.policy_state().accepted == 3


def test_reprocessing_after_crash_changes_nothing_and_resends_the_trigger():
    run = Run()
    sent = [run.feed(fb(n)) for n in range(3)]
    before = (dict(run.state), dict(run.seen))
    replayed = [run.feed(fb(n), offset=n) for n in range(3)]  # offsets 0..2 again: input was not committed
    assert [e.outcome for e in replayed] == ["replayed"] * 3
    assert (dict(run.state), dict(run.seen)) == before
    assert replayed[2].triggers[0].to_bytes() == sent[2].triggers[0].to_bytes()


def test_mark_that_outlived_its_policy_state_does_not_reject_the_event():
    run = Run()
    run.feed(fb(0))
    state_before = dict(run.state)
    run.feed(fb(1))
    run.state.clear()
    run.state.update(state_before)  # crash: the policy state lost record 1, the seen table kept its mark
    assert run.feed(fb(1), offset=1).outcome == "accepted" and run.policy_state().accepted == 2


def test_lost_mark_is_rewritten_when_the_record_is_reprocessed():
    run = Run()
    run.feed(fb(0))
    run.seen.clear()  # crash: the policy state landed, the mark did not
    assert run.feed(fb(0), offset=0).outcome == "replayed"
    assert run.feed(fb(5, event_id="e0")).outcome == "duplicate"


def test_minute_windows_close_after_grace_with_counts_and_rating_sums():
    run = Run(train_threshold=100, buffer_size=100)
    at = datetime.fromtimestamp(T0 + 10, UTC)
    for n, rating in enumerate([5, 4, 1]):
        run.feed(fb(n, feedback_type="rating", rating=rating, timestamp=at, experiment="ab", variant="a"))
    run.feed(fb(3, timestamp=at, model_version="v2"))
    run.now = T0 + WINDOW_S + WINDOW_GRACE_S - 1
    assert run.feed(PolicyRecord(policy="assistant", tick=run.now)).metrics == []
    run.now = T0 + WINDOW_S + WINDOW_GRACE_S
    assert list(run.ledger.due(run.now)) == ["assistant"]
    metrics = sorted(run.feed(PolicyRecord(policy="assistant", tick=run.now)).metrics, key=lambda m: m.model_version)
    assert [
        (m.model_version, m.experiment, m.variant, m.feedback_type, m.count, m.rating_sum, m.rating_count) for m in metrics
    ] == [
        ("v1", "ab", "a", "rating", 3, 10, 3),
        ("v2", "", "", "thumbs_up", 1, 0, 0),
    ]
    assert metrics[0].window_start.timestamp() == T0 and metrics[0].window_end.timestamp() == T0 + WINDOW_S
    assert run.policy_state().open_windows == {}


def test_backlog_windows_close_on_event_time_aggregated():
    run = Run(train_threshold=100, buffer_size=100)
    run.now = T0 + 3600  # catching up an hour later: every window is long past on the wall clock
    minute = [datetime.fromtimestamp(T0 + s, UTC) for s in (1, 30, 59, WINDOW_S + WINDOW_GRACE_S)]
    effects = [run.feed(fb(n, timestamp=at)) for n, at in enumerate(minute)]
    assert [len(e.metrics) for e in effects] == [0, 0, 0, 1]
    assert effects[3].metrics[0].count == 3 and effects[3].metrics[0].window_start.timestamp() == T0


def test_state_is_stored_as_named_records_in_layout_3():
    run = Run()
    run.feed(fb(0, partition=1, offset=7, feedback_type="rating", rating=4))
    stored = json.loads(run.state.data["policy:assistant"])  # the JSON text the changelog carries
    assert stored["layout"] == 3 and stored["last_applied_offset"] == 0 and stored["last_origin_offsets"] == {"1": 7}
    assert stored["chunks"] == [0]
    assert json.loads(run.state.data["buffered:assistant:0"]) == [
        [1, 7, "e0", "rating"]
    ]  # a chunk of BufferedEvents in field order
    assert json.loads(run.seen.data["assistant/e0"]) == [1, 7, T0]  # DedupeMark's field order
    ps = run.policy_state()
    assert run.ledger.buffered_events("assistant", ps) == [
        BufferedEvent(partition=1, offset=7, event_id="e0", feedback_type="rating")
    ]
    assert run.ledger.dedupe_mark("assistant", "e0") == DedupeMark(partition=1, offset=7, record_ts=T0)
    assert ps.open_windows == {int(T0): {'["v1", "", "", "rating"]': WindowCount(count=1, rating_sum=4, rating_count=1)}}
    with pytest.raises(ValidationError, match="layout"):
        PolicyState.model_validate({**stored, "layout": 1})


def test_layout_2_state_is_carried_on():
    """A changelog written by the per-event worker: one buffered key per event, no chunk list."""
    run = Run()
    for n in range(2):
        run.state[f"buffered:assistant:{n}"] = [0, n, f"e{n}", "thumbs_up"]
    run.state["policy:assistant"] = {
        "layout": 2,
        "last_applied_offset": 1,
        "last_origin_offsets": {"0": 1},
        "accepted": 2,
        "accepted_since_trigger": 2,
    }
    run.offset = 1
    trigger = run.feed(fb(2)).triggers[0]
    assert trigger.event_ids == ("e0", "e1", "e2") and run.policy_state().chunks == [0, 1, 2]
    [run.feed(fb(n)) for n in range(3, 6)]
    assert sorted(k for k in run.state.data if k.startswith("buffered:")) == [f"buffered:assistant:{n}" for n in range(1, 6)]


class CountingChangelog(Changelog):
    """Counts the writes a changelog would carry (a dict `update` is one write, as `MarksView` makes it)."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def __setitem__(self, key, value):
        self.writes += 1
        super().__setitem__(key, value)

    def update(self, other=(), /, **kw):
        self.writes += 1
        for key, value in dict(other, **kw).items():
            Changelog.__setitem__(self, key, value)


def batch(events, **fields):
    return PolicyRecord(policy="assistant", batch=tuple(fb(n, **fields).accepted for n in events))


def test_a_batch_costs_one_state_write_one_chunk_and_one_marks_write():
    run = Run(train_threshold=100, buffer_size=100)
    run.state, run.seen = CountingChangelog(), CountingChangelog()
    run.ledger.state, run.ledger.seen = run.state, run.seen
    effects = run.feed(batch(range(50)))
    assert (effects.outcome, effects.accepted) == ("accepted", 50)
    assert (run.state.writes, run.seen.writes) == (2, 1)  # the chunk and PolicyState; the marks
    assert len(run.ledger.buffered_events("assistant", run.policy_state())) == 50


def test_where_batches_start_changes_no_trigger():
    """Records grouped per record, in one batch, or in other batches: same triggers, same state."""
    with_duplicate = PolicyRecord(
        policy="assistant", batch=(fb(7).accepted, fb(30, partition=1, event_id="e3").accepted, fb(3).accepted, fb(8).accepted)
    )
    records = [batch(range(0, 2)), batch(range(2, 7)), status("nobody", "finished"), with_duplicate, batch(range(9, 14))]

    def run_grouped(groups):
        run = Run(train_threshold=4, buffer_size=6)
        triggers, offset = [], 0
        for size in groups:
            staged = run.ledger.stage("assistant", [(r, offset + i) for i, r in enumerate(records[offset : offset + size])], T0)
            run.ledger.commit(staged)
            triggers += staged.triggers
            offset += size
        ps = run.policy_state()
        return (
            [(t.trigger_id, t.event_ids) for t in triggers],
            (ps.accepted, ps.duplicates, ps.accepted_since_trigger),
            run.ledger.buffered_events("assistant", ps),
        )

    one_by_one = run_grouped([1] * len(records))
    assert one_by_one[0][0][1] == ("e0", "e1", "e2", "e3") and one_by_one[1] == (14, 1, 10)  # held: the training runs
    assert run_grouped([len(records)]) == run_grouped([2, 3]) == run_grouped([3, 1, 1]) == one_by_one


def test_a_batch_replayed_after_a_crash_rewrites_lost_marks_and_names_its_trigger_as_replayed():
    run = Run()
    first = run.feed(batch(range(4)))
    run.seen.clear()  # the marks' changelog record did not land; PolicyState did
    again = run.feed(batch(range(4)), offset=0)
    assert again.replayed and [t.trigger_id for t in again.triggers] == [t.trigger_id for t in first.triggers]
    assert run.feed(fb(9, event_id="e2")).outcome == "duplicate"
