"""Table writes for batched agents: the ledger's state goes to the changelog partition of the
policy's records, and a batch's dedupe marks travel as one changelog record.

Faust's `Table.__setitem__` finds the changelog partition through the current event, a task-local
that `stream.take_events()` does not set in the agent's task, and sends one changelog record per
key. `ChangelogView` is the ledger's `MutableMapping` over a table instead: reads go to the local
store, each write to the store and to the changelog partition the caller names (`route_to`), which
is the internal-topic partition of the records being applied, as Faust's own writes would be.

`MarksView.update` writes a batch's dedupe marks to the store key by key but sends them as one
changelog record under a unique `@batch/` key; `MarksTable` opens such records again while it
recovers, so the store holds the same per-event keys as before the restart. The changelog's
`compact,delete` policy and retention (streams/app.py) drop old batches as they dropped old marks.
The in-memory store is assumed (`store="memory://"`): recovery writes its dict directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import faust
from faust.types import EventT, TableT

MARKS_BATCH_PREFIX = "@batch/"


class ChangelogView(MutableMapping[str, Any]):
    def __init__(self, table: TableT):
        self.table = table
        self.store: MutableMapping[str, Any] = table.data  # the store; its reads skip Faust's per-key sensors
        self.partition: int | None = None

    def route_to(self, partition: int) -> None:
        """Send the next writes to this changelog partition (that of the records being applied)."""
        self.partition = partition

    def _send(self, key: str, value: Any) -> None:
        if self.partition is None:
            raise RuntimeError(f"write to table {self.table.name} before route_to(): no changelog partition")
        if value is None:
            self.table.send_changelog(self.partition, key, None, value_serializer="raw")  # a tombstone
        else:
            self.table.send_changelog(self.partition, key, value)

    def __getitem__(self, key: str) -> Any:
        return self.store[key]

    def get(self, key: str, default: Any = None) -> Any:
        # Nearly every lookup (a new event's dedupe mark) misses: answered without raising a KeyError.
        store = self.store
        return store[key] if key in store else default

    def __setitem__(self, key: str, value: Any) -> None:
        self.store[key] = value
        self._send(key, value)

    def __delitem__(self, key: str) -> None:
        del self.store[key]
        self._send(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)


class MarksView(ChangelogView):
    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """All of `other` to the store, and to the changelog as one record."""
        items = dict(other, **kwargs)
        if not items:
            return
        for key, value in items.items():
            self.store[key] = value
        self._send(f"{MARKS_BATCH_PREFIX}{uuid.uuid4().hex}", items)


class MarksTable(faust.Table):
    """A table whose `@batch/` changelog records stand for the marks they carry."""

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        plain = []
        store = self.data
        for event in batch:
            key, value = event.key, event.value
            if isinstance(key, str) and key.startswith(MARKS_BATCH_PREFIX) and isinstance(value, Mapping):
                for mark_key, mark in value.items():
                    store.data[mark_key] = mark
                    # So that the memory store drops them with their partition when it is revoked.
                    store._key_partition[mark_key] = event.message.partition  # type: ignore[attr-defined]
            else:
                plain.append(event)
        if plain:
            super().apply_changelog_batch(plain)
