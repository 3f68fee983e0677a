"""Which triggers a round's reward model learns from: the window (count, age, events), the newest
events, merging overlapping buffers, and the history.json that makes a version's data replayable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import TrainingError
from schemas import FeedbackEvent, OffsetRange, TrainTrigger
from trainers.history import (
    HistoryWindow,
    between_ranges,
    load_history,
    merge_events,
    recent_ids,
    replay_history,
    replay_sample,
    save_history,
    select_history,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def trigger(n: int, ids: range, policy: str = "assistant") -> TrainTrigger:
    return TrainTrigger(
        trigger_id=f"t{n}",
        policy=policy,
        model_version="base",
        timestamp=T0 + timedelta(hours=n),
        ranges=(OffsetRange(topic="feedback", partition=n % 2, start=ids.start, end=ids.stop),),
        event_ids=tuple(f"e{i}" for i in ids),
    )


EARLIER = [trigger(1, range(0, 100)), trigger(2, range(100, 200)), trigger(3, range(200, 300))]
LATEST = trigger(4, range(250, 400))  # its buffer overlaps the trigger before


def event(i: int, policy: str = "assistant") -> FeedbackEvent:
    return FeedbackEvent(
        event_id=f"e{i}",
        interaction_id=f"i{i}",
        user_id="u",
        query="q",
        response="r",
        model_version="base",
        feedback_type="thumbs_up",
        policy=policy,
    )


def ids(triggers: list[TrainTrigger]) -> list[str]:
    return [t.trigger_id for t in triggers]


def test_the_window_keeps_the_newest_earlier_triggers_oldest_first():
    assert ids(select_history(EARLIER, LATEST, HistoryWindow())) == ["t1", "t2", "t3", "t4"]
    assert ids(select_history(EARLIER, LATEST, HistoryWindow(max_triggers=0))) == [
        "t4"
    ]  # today's learner: the latest buffer only
    assert ids(select_history(EARLIER, LATEST, HistoryWindow(max_triggers=2))) == ["t2", "t3", "t4"]
    assert ids(select_history(EARLIER, LATEST, HistoryWindow(max_age_s=2 * 3600))) == ["t2", "t3", "t4"]
    # Distinct events: t4 and t3 overlap by 50, so they hold 200; with t2 300, with t1 400.
    assert ids(select_history(EARLIER, LATEST, HistoryWindow(max_events=300))) == ["t2", "t3", "t4"]
    assert ids(select_history(EARLIER, LATEST, HistoryWindow(max_events=299))) == ["t3", "t4"]


def test_other_policies_and_the_latest_itself_are_not_history():
    other = trigger(5, range(500, 600), policy="other")
    assert ids(select_history([*EARLIER, other, LATEST], LATEST, HistoryWindow())) == ["t1", "t2", "t3", "t4"]


def test_the_newest_events_are_those_no_earlier_trigger_held():
    used = select_history(EARLIER, LATEST, HistoryWindow())
    assert recent_ids(used) == frozenset(f"e{i}" for i in range(300, 400))
    assert recent_ids([LATEST]) == frozenset(LATEST.event_ids)


def test_replaying_a_history_reads_every_range_and_keeps_each_event_once():
    events = {f"e{i}": event(i) for i in range(400)}
    asked: list[tuple] = []

    def replay(t: TrainTrigger) -> list[FeedbackEvent]:
        asked.append((t.trigger_id, [(r.partition, r.start, r.end) for r in t.ranges]))
        return [events[i] for i in t.event_ids]

    merged, recent, read, between = replay_history(select_history(EARLIER, LATEST, HistoryWindow(max_triggers=1)), replay)
    assert asked == [("t3", [(1, 200, 300)]), ("t4", [(0, 250, 400)])]  # exactly the triggers' ranges
    assert [t.trigger_id for t in read] == ["t3", "t4"]
    assert [e.event_id for e in merged] == [f"e{i}" for i in range(200, 400)]
    assert recent == frozenset(f"e{i}" for i in range(300, 400)) and between == []  # no replay_between given
    assert merge_events([[events["e1"]], [events["e1"], events["e2"]]]) == [events["e1"], events["e2"]]


def test_a_capped_sample_keeps_every_newest_event_and_the_same_older_ones_on_every_replay():
    events = [event(i) for i in range(1000)]
    recent = frozenset(f"e{i}" for i in range(900, 1000))
    sample = replay_sample(events, recent, 400)
    assert recent <= {e.event_id for e in sample} and 350 <= len(sample) <= 450  # 100 newest + ~300 of 900 older
    assert sample == replay_sample(list(events), recent, 400) and [e.event_id for e in sample] == sorted(
        (e.event_id for e in sample), key=lambda i: int(i[1:])
    )
    assert replay_sample(events, recent, None) == events == replay_sample(events, recent, 1000)


def test_newest_events_beyond_two_thirds_of_the_cap_are_sampled_too_and_the_older_keep_the_rest():
    events = [event(i) for i in range(3000)]
    recent = frozenset(f"e{i}" for i in range(1000, 3000))  # an A/B test's traffic: 2,000 new events
    sample = replay_sample(events, recent, 900)
    newest = sum(e.event_id in recent for e in sample)
    assert 540 <= newest <= 660 and 240 <= len(sample) - newest <= 360  # ~600 (2/3) newest, ~300 older
    few_older = events[900:]  # 100 older: the newest may fill what they leave
    assert sum(e.event_id in recent for e in replay_sample(few_older, recent, 900)) >= 750


def test_an_earlier_trigger_retention_took_is_left_out_and_not_named():
    def replay(t: TrainTrigger) -> list[FeedbackEvent]:
        if t.trigger_id == "t2":
            raise TrainingError("trigger t2: feedback[0] [100, 200) is not readable: the partition now holds [150, 400)")
        return []

    _, _, read, _ = replay_history(select_history(EARLIER, LATEST, HistoryWindow()), replay)
    assert [t.trigger_id for t in read] == ["t1", "t3", "t4"]
    with pytest.raises(TrainingError):  # the latest trigger is the round's own data: it must be there
        replay_history([LATEST], lambda t: replay(EARLIER[1]))


def test_a_version_records_every_trigger_known_and_those_it_used(tmp_path):
    used = select_history(EARLIER, LATEST, HistoryWindow(max_triggers=1))
    save_history(tmp_path, [*EARLIER, LATEST], used)
    known, used_ids = load_history(tmp_path)
    assert known == [*EARLIER, LATEST] and used_ids == ["t3", "t4"]  # whole triggers: ranges and event ids
    assert load_history(tmp_path / "older-version") == ([], []) and load_history(None) == ([], [])


def test_the_feedback_between_two_triggers_is_read_from_exactly_the_offsets_neither_holds():
    # Two partitions; the second trigger's buffer starts past the first's end on both: an A/B test
    # held triggers back while [300, 700) and [50, 90) arrived.
    first = TrainTrigger(
        trigger_id="a",
        policy="assistant",
        model_version="base",
        timestamp=T0,
        event_ids=("e1",),
        ranges=(
            OffsetRange(topic="feedback", partition=0, start=0, end=300),
            OffsetRange(topic="feedback", partition=1, start=0, end=50),
        ),
    )
    second = TrainTrigger(
        trigger_id="b",
        policy="assistant",
        model_version="base",
        timestamp=T0 + timedelta(hours=1),
        event_ids=("e2",),
        ranges=(
            OffsetRange(topic="feedback", partition=0, start=700, end=900),
            OffsetRange(topic="feedback", partition=1, start=40, end=90),
            OffsetRange(topic="feedback", partition=2, start=0, end=10),
        ),
    )
    assert between_ranges(first, second) == [
        OffsetRange(topic="feedback", partition=0, start=300, end=700)
    ]  # partition 1 overlaps; 2 is new
    assert between_ranges(EARLIER[2], LATEST) == []  # different partitions: nothing between them

    asked: list[list[OffsetRange]] = []

    def replay_between(ranges: list[OffsetRange]) -> list[FeedbackEvent]:
        asked.append(ranges)
        return [event(5), event(1)]  # e1 is the first trigger's too: kept once

    events, recent, read, between = replay_history([first, second], lambda t: [event(int(t.event_ids[0][1:]))], replay_between)
    assert asked == [between] == [[OffsetRange(topic="feedback", partition=0, start=300, end=700)]] and read == [first, second]
    assert [e.event_id for e in events] == ["e1", "e5", "e2"]  # oldest first: the first trigger, between, the latest
    assert recent == {"e2", "e5"}  # what arrived since the first trigger


def test_between_ranges_retention_took_are_left_out_and_not_named():
    first = trigger(0, range(0, 100))
    second = trigger(2, range(300, 400))  # the same partition, 200 offsets later

    def gone(ranges: list[OffsetRange]) -> list[FeedbackEvent]:
        raise TrainingError("feedback[0] [100, 300) is not readable")

    events, recent, read, between = replay_history([first, second], lambda t: [event(int(i[1:])) for i in t.event_ids], gone)
    assert between == [] and len(events) == 200 and recent == frozenset(second.event_ids)
