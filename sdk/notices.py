"""What a producer tells its application: its counters (`ProducerStats`), and notices of losses and
of mode changes (`Notice`), logged to the SDK's logger and passed to the optional callback
(`Notices`; losses at most once a second, each counter as it grew)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)
Mode = Literal["direct", "switching", "spooling"]
LOSSES = ("failed", "dropped", "corrupt")


@dataclass(frozen=True)
class Notice:
    """What the optional callback is told (from the pump thread): losses, and mode changes."""

    kind: Literal["failed", "dropped", "corrupt", "spooling", "direct"]
    count: int
    detail: str


@dataclass(frozen=True)
class ProducerStats:
    mode: Mode
    produced: int  # handed to librdkafka by a send
    spooled: int  # written to the spool
    resent: int  # re-sent from the spool and acknowledged
    failed: int  # permanent delivery failures (the broker refused the event)
    dropped: int  # lost to a cap (spool, inbox), by policy
    corrupt: int  # damaged spool records skipped
    spool_depth: int  # spooled events not yet acknowledged
    spool_bytes: int
    inbox: int  # accepted, in memory, not yet spooled
    in_librdkafka: int


class Notices:
    """Logs each notice (losses as warnings, mode changes as info) and calls the callback with it."""

    def __init__(self, on_notice: Callable[[Notice], None] | None, spool_on_full: str):
        self._on_notice, self._policy = on_notice, spool_on_full
        self._reported: dict[str, int] = {}
        self.reported_at = 0.0

    def tell(self, kind: str, count: int, detail: str) -> None:
        (log.warning if kind in LOSSES else log.info)("producer: %s", detail)
        if self._on_notice is not None:
            try:
                self._on_notice(Notice(kind, count, detail))  # type: ignore[arg-type]
            except Exception:
                log.exception("producer notice callback failed")

    def losses(self, stats: Callable[[], ProducerStats], recent: Callable[[], str]) -> None:
        """Tell each loss counter that grew since it was last told, at most once a second."""
        now = time.monotonic()
        if now - self.reported_at < 1.0:
            return
        self.reported_at = now
        counters = stats()
        for kind in LOSSES:
            value = getattr(counters, kind)
            grew = value - self._reported.get(kind, 0)
            if grew > 0:
                extra = f" (latest: {recent()})" if kind == "failed" else f" (spool policy {self._policy})"
                self.tell(kind, grew, f"{grew} events {kind}{extra}")
                self._reported[kind] = value
