"""What the service served, kept so that feedback names an interaction and the server fills in
the rest (the conversation, response, version, experiment, variant, user): a client cannot forge them.

Bounded twice: at most `capacity` interactions (the oldest forgotten first) and each one only for
`ttl_s` seconds (as long as its feedback token). An id never served, or already forgotten for
room, is unknown; one still held but older than `ttl_s` has expired.

    recent = RecentInteractions(capacity=100_000, ttl_s=86_400)
    recent.add(ServedInteraction(...))
    recent.get("i-1")        # ServedInteraction | raises UnknownInteraction / ExpiredInteraction
    recent.verdict_number(("i-1", "verdict"), ("thumbs_up", None))   # 0; a change of mind gets 1
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from core.errors import RlhfError
from schemas.events import Turn


class UnknownInteraction(RlhfError):
    """No interaction with this id is held: never served here, or forgotten for room."""


class ExpiredInteraction(RlhfError):
    """The interaction is older than the feedback window."""


@dataclass(frozen=True)
class ServedInteraction:
    interaction_id: str
    user_id: str
    query: str
    response: str
    model_version: str
    experiment: str | None
    variant: str | None
    context: tuple[Turn, ...] = ()  # the conversation before the query, as its interaction event carries it
    conversation_id: str | None = None
    turn_index: int = 0
    served_at: float = field(default_factory=time.time)

    def conversation_fields(self) -> dict[str, Any]:
        """The conversation fields its feedback event repeats (`schemas.events.ConversationEvent`)."""
        return {"context": self.context, "conversation_id": self.conversation_id, "turn_index": self.turn_index}


class RecentInteractions:
    """Thread-safe: request handlers add and read concurrently."""

    def __init__(self, capacity: int, ttl_s: float):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._held: OrderedDict[str, ServedInteraction] = OrderedDict()
        self._verdicts: dict[str, dict[str, tuple[Hashable, int]]] = {}  # interaction -> slot -> (last verdict, its number)
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, served: ServedInteraction, replace: bool = True) -> None:
        """Hold `served`; one already held is kept unless `replace` (another replica's copy of an
        interaction this one served is the same answer, read back later)."""
        with self._lock:
            if replace or served.interaction_id not in self._held:
                self._held[served.interaction_id] = served
            while len(self._held) > self.capacity:
                forgotten, _ = self._held.popitem(last=False)
                self._verdicts.pop(forgotten, None)
            self._added.notify_all()

    def wait_for(self, interaction_id: str, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `interaction_id` to be added (by another replica's event); True if held."""
        with self._lock:
            return self._added.wait_for(lambda: interaction_id in self._held, timeout_s)

    def observe_verdict(self, key: tuple[str, str], verdict: Hashable, number: int) -> None:
        """Another replica numbered `verdict` under `key`: a later verdict here continues from it."""
        interaction_id, slot = key
        with self._lock:
            slots = self._verdicts.setdefault(interaction_id, {})
            last = slots.get(slot)
            if last is None or number > last[1]:
                slots[slot] = (verdict, number)

    def verdict_number(self, key: tuple[str, str], verdict: Hashable) -> int:
        """The number of `verdict` among the user's verdicts under `key` (FeedbackEvent.verdict_key:
        interaction id and slot), 0, 1, ...: the last number again when it repeats the last verdict
        (a double click, a retry after a 503), the next one when it differs (a change of mind)."""
        interaction_id, slot = key
        with self._lock:
            slots = self._verdicts.setdefault(interaction_id, {})
            last = slots.get(slot)
            number = 0 if last is None else last[1] + (last[0] != verdict)
            slots[slot] = (verdict, number)
            return number

    def get(self, interaction_id: str, now: float | None = None) -> ServedInteraction:
        with self._lock:
            served = self._held.get(interaction_id)
        if served is None:
            raise UnknownInteraction(
                f"interaction_id: {interaction_id!r} is not a recent interaction of this server (unknown, or forgotten)"
            )
        if (time.time() if now is None else now) - served.served_at > self.ttl_s:
            raise ExpiredInteraction(
                f"interaction_id: {interaction_id!r} was served more than {self.ttl_s:.0f} s ago; feedback on it is closed"
            )
        return served
