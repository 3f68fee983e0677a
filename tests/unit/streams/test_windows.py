"""A window counts its events and the PII found in them, per type, and reports both when it closes;
a window count stored before PII was counted reads the same."""

from datetime import UTC, datetime

from streams.records import Accepted
from streams.windows import WINDOW_GRACE_S, WINDOW_S, WindowCount, close, count

T0 = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)


def accepted(n: int, pii: dict[str, int]) -> Accepted:
    return Accepted(
        event_id=f"e{n}",
        policy="assistant",
        model_version="v1",
        experiment=None,
        variant=None,
        feedback_type="thumbs_up",
        rating=None,
        timestamp=T0,
        partition=0,
        offset=n,
        record_ts=T0.timestamp(),
        pii=pii,
    )


def test_a_closed_window_reports_the_pii_found_per_type():
    windows: dict = {}
    for n, pii in enumerate([{"email": 1}, {}, {"email": 2, "card": 1}]):
        count(windows, accepted(n, pii))
    (metrics,) = close(windows, T0.timestamp() + WINDOW_S + WINDOW_GRACE_S)
    assert (metrics.count, metrics.pii) == (3, {"email": 3, "card": 1})


def test_a_count_stored_without_pii_reads_as_none_found():
    old = WindowCount(*(2, 0, 0))  # the state layout before PII was counted
    assert old.plus(None, {}).pii is None and old.plus(None, {"ip": 1}) == WindowCount(3, 0, 0, {"ip": 1})
    windows = {int(T0.timestamp()) // WINDOW_S * WINDOW_S: {'["v1", "", "", "thumbs_up"]': [2, 0, 0]}}
    # State decoded from JSON holds lists, not WindowCounts.
    (metrics,) = close(windows, T0.timestamp() + WINDOW_S + WINDOW_GRACE_S)  # type: ignore[arg-type]
    assert (metrics.count, metrics.pii) == (2, {})
