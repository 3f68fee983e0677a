"""One-minute feedback windows of a policy: counts and rating sums by model version, experiment,
variant and feedback type, kept in the policy's state until the window closes.

Windows close on event time while feedback flows (a backlog read an hour late still aggregates per
minute) and on wall time when a policy falls quiet (the worker's tick). An event later than the
grace joins a fresh entry of its window, reported as a delta the reader adds up.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import NamedTuple

from schemas import WindowMetrics
from streams.records import Accepted

WINDOW_S = 60
WINDOW_GRACE_S = 5.0  # an event this late still joins its window; a later one is reported as a delta

OpenWindows = dict[int, dict[str, "WindowCount"]]  # window start (s) -> WindowDims.key() -> count


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class WindowDims(NamedTuple):
    """What one window count is broken down by; stored as a JSON string key of the open windows."""

    model_version: str
    experiment: str
    variant: str
    feedback_type: str

    def key(self) -> str:
        return json.dumps(list(self))

    @classmethod
    def of_key(cls, key: str) -> WindowDims:
        return cls(*json.loads(key))


class WindowCount(NamedTuple):
    count: int = 0  # type: ignore[assignment]  # shadows tuple.count; the name is in every stored window
    rating_sum: int = 0
    rating_count: int = 0
    pii: dict[str, int] | None = None  # PII found per type; None (not {}) so state written before it reads the same

    def plus(self, rating: int | None, pii: dict[str, int]) -> WindowCount:
        found = self.pii
        if pii:
            found = dict(found or {})
            for pii_type, n in pii.items():
                found[pii_type] = found.get(pii_type, 0) + n
        if rating is None:
            return WindowCount(self.count + 1, self.rating_sum, self.rating_count, found)
        return WindowCount(self.count + 1, self.rating_sum + rating, self.rating_count + 1, found)


_EMPTY = WindowCount()


@functools.lru_cache(maxsize=4096)
def _dims_key(model_version: str, experiment: str, variant: str, feedback_type: str) -> str:
    # Few distinct combinations, one per event: the JSON key is built once per combination.
    return WindowDims(model_version, experiment, variant, feedback_type).key()


def count(windows: OpenWindows, a: Accepted) -> float:
    """Add one accepted event to its window; returns its event time (s)."""
    at = a.timestamp.timestamp()
    start = int(at // WINDOW_S * WINDOW_S)
    dims = _dims_key(a.model_version, a.experiment or "", a.variant or "", a.feedback_type)
    window = windows.setdefault(start, {})
    held = window.get(dims)
    if held is None:
        held = _EMPTY
    elif type(held) is not WindowCount:  # a list, as state decoded from JSON holds it
        held = WindowCount(*held)
    window[dims] = held.plus(a.rating, a.pii)
    return at


def closable(windows: OpenWindows, until: float) -> bool:
    return any(start + WINDOW_S + WINDOW_GRACE_S <= until for start in windows)


def close(windows: OpenWindows, until: float) -> list[WindowMetrics]:
    """Remove the windows whose grace ended by `until` and report them."""
    metrics = []
    for start in sorted(start for start in windows if start + WINDOW_S + WINDOW_GRACE_S <= until):
        for key, c in windows.pop(start).items():
            dims = WindowDims.of_key(key)
            metrics.append(
                WindowMetrics(
                    window_start=utc(start),
                    window_end=utc(start + WINDOW_S),
                    model_version=dims.model_version,
                    experiment=dims.experiment,
                    variant=dims.variant,
                    feedback_type=dims.feedback_type,
                    count=c[0],
                    rating_sum=c[1],
                    rating_count=c[2],
                    pii=(c[3] if len(c) > 3 else None) or {},
                )
            )
    return metrics
