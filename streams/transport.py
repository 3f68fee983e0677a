"""Faust's Kafka consumer with two per-record costs taken out and a seek gap closed, for the stream worker.

Measured on the 2-core dev machine with an agent that only counts records (`stream.take_events`),
faust-streaming 0.15.3 reads about 6,000-8,000 records/s at ~90 CPU µs each; with this consumer
the same agent takes ~42 CPU µs per record. Changes, none to what is delivered, in what order, or
when an offset may be committed:

- `Consumer._drain_messages` wraps every record's delivery in `wait_first(callback(message),
  suspend_flow.wait())`: two tasks and an `asyncio.wait` per record, half of the CPU. Here one such
  wait covers the records of one fetch (the fetch itself stays outside it, as in Faust); a
  rebalance (`suspend_flow`) still cancels the delivery in flight, and records not yet delivered
  keep their read offset unadvanced and are read again after the seek to the committed offsets.
- The aiokafka consumer is built with `fetch_max_wait_ms=1500`. Its fetcher keeps one fetch in flight
  per broker; when that fetch names only partitions already read to their end, the broker holds it
  for up to 1.5 s and the other partitions' next fetch waits behind it (seen as 1 s stalls between
  full fetches while a backlog is read). `fetch_max_wait_ms` comes from the settings instead.
- `perform_seek` also seeks the partitions whose committed offset is 0 or unset (see there).

Three more per-record costs go through Faust's own extension points, none changing what a stream
sees: `StreamsApp.create_event` reads the `Event` setting once, not per record; `RawSchema` hands
raw topics' bytes over without a codec lookup per key and value; `LeanMonitor` (the `Monitor`
setting) drops the statistics sensor's per-record bookkeeping. With them (and cheaper dedupe
lookups and PII counts) the worker's main thread takes ~60 instead of ~70 CPU µs per bench event
(bench/streams.py).

Installed by `StreamsApp`, a `faust.App` whose transport is `BatchTransport` (streams/app.py).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any, cast

import faust
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message, TransportT
from mode import Service

YIELD_EVERY = 100  # records delivered between yields to the event loop (Faust's own figure)


class BatchDeliveryConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; there is no public setter.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", consumer._fetch_max_wait_ms)
        return consumer


class BatchDeliveryConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return BatchDeliveryConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _deliver_fetch(self, records: list[tuple[TP, Message]]) -> None:
        """Faust's per-record body of `_drain_messages`, for every record of one fetch."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        for i, (tp, message) in enumerate(records):
            # What Faust's getmany checks before yielding each record: a rebalance since the fetch
            # (a new generation, the flow stopped) ends the delivery; the rest is fetched again.
            if not self.flow_active or message.generation_id != self.app.consumer_generation_id:
                return
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await callback(message)
                read_offset[tp] = offset

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, plus the partitions it leaves where they are.

        aiokafka's `seek_to_committed` seeks only where the committed offset is above 0. A partition
        committed at 0, or never committed, keeps its fetch position, and records fetched during a
        rebalance and dropped undelivered (the flow stopped, a new generation) stay skipped. Seen
        with two workers (tests/integration/streams/test_scale_out.py): a partition taken over before
        its first owner committed anything was resumed at its end, with Faust's own consumer loop
        too. Those partitions are sought to 0 here (an offset below the log start resets to the
        earliest, the app's `consumer_auto_offset_reset`). Changelogs are left to table recovery."""
        committed = await self.seek_to_committed()
        self._read_offset.update({tp: offset if offset is not None and offset >= 0 else None for tp, offset in committed.items()})
        self._committed_offset.update(
            {ensure_TP(tp): offset if offset else None for tp, offset in committed.items() if offset is not None}
        )
        changelogs = self.app.tables.changelog_topics
        unsought = {tp: 0 for tp, offset in committed.items() if (offset is None or offset <= 0) and tp.topic not in changelogs}
        if unsought:
            await self._thread.seek_wait(unsought)

    async def _drain_messages(self, fetcher: Service) -> None:  # type: ignore[override]  # pragma: no cover - runs in a worker
        consumer_stopped = cast(Service, self)._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                # The fetch itself stays outside the cancellable wait, as in Faust: a fetch cancelled
                # mid-way in the consumer thread would move the position past records never delivered.
                records = [record async for record in self.getmany(timeout=1.0)]
                await self.sleep(0)  # getmany may return at once, again and again: let others run
                if records and not self.should_stop:
                    await self.wait_first(self._deliver_fetch(records), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return  # the broker stopped the consumer because we are shutting down
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class LeanMonitor(Monitor):
    """Faust's statistics sensor without its per-record bookkeeping (counters, timings, a dict per
    event: a few µs per record). Kept: when each partition's stream last took a record, which the
    aiokafka consumer's stalled-stream check reads. Nothing in this project reads the rest (the
    worker runs without Faust's web views, their only reader)."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(self, tp: TP, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        pass


class RawSchema(faust.Schema):
    """Keys and values as the broker delivers them, bytes or None, for topics declared with
    `bytes` types and the `raw` serializer. Faust decodes each record's key and value through its
    serializer registry (codec looked up by name, then `want_bytes`), which for bytes returns them
    unchanged: here bytes are returned as they are, and anything else (a unit test's `str` key)
    goes through Faust's own decoding."""

    def loads_key(self, app: Any, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        key = message.key
        if key is None or type(key) is bytes:
            return key
        return super().loads_key(app, message, loads=loads, serializer=serializer)

    def loads_value(self, app: Any, message: Message, *, loads: Any = None, serializer: Any = None) -> Any:
        value = message.value
        if value is None or type(value) is bytes:
            return value
        return super().loads_value(app, message, loads=loads, serializer=serializer)


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchDeliveryConsumer


class StreamsApp(faust.App):
    """A `faust.App` on `BatchTransport`; `fetch_max_wait_ms` is how long the broker may hold a fetch."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._event_type: Any = None

    def _new_transport(self) -> TransportT:
        return BatchTransport(self.conf.broker_consumer, self)

    def create_event(self, key: Any, value: Any, headers: Any, message: Message) -> EventT:
        """Faust's `create_event`, with the `Event` setting read once: Faust reads it per record,
        through the settings' access tracking and a descriptor (~1 µs each time)."""
        event_type = self._event_type
        if event_type is None:
            event_type = self._event_type = self.conf.Event
        return cast(EventT, event_type(self, key, value, headers, message))
