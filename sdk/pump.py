"""The producer's pump: one background thread owns librdkafka's callbacks and the spool, so that a
caller's send never waits on Kafka, a disk, or a callback.

A send (`Pump.send`, under a lock held for microseconds) does one of two things:
- `direct`: a non-blocking produce into librdkafka's queue;
- otherwise: an append to the in-memory inbox, which the pump writes to the spool every tick.

The pump, in a loop:
- serves librdkafka's callbacks (`poll`): permanent failures are counted; retriable ones (purged,
  timed out) are spooled, never kept in an unbounded list;
- switches to spooling when librdkafka reports every broker down, or a send found its queue full:
  it purges librdkafka's queue, spools the purged events first and the inbox behind them, so the
  spool holds events in the order they were sent (`switching`, then `spooling`);
- while spooling, waits for a probe thread to see the broker answer metadata, then re-sends the
  spool in windows, committing the spool's cursor once a window is acknowledged, and goes back to
  direct sends when spool and inbox are empty. Per partition, events reach Kafka in send order;
  a window cut short by a new outage is re-sent whole (duplicates carry the same event id);
- serves `flush()` barriers: every event accepted before the barrier is acknowledged or written to
  the spool (and fsynced, unless the spool's policy is `never`).
The pump's Python work competes with the caller for the GIL, which CPython hands to a waiting thread
only after its switch interval (5 ms by default) unless the holder blocks: the client lowers the
interval (`producer.gil_switch_interval_ms`, 0.5 ms) so neither starves the other, and the pump
works in slices so it holds the client's lock only briefly.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from core.errors import DeliveryError
from core.kafka_log import client_logging
from core.settings import ProducerSettings
from sdk import KAFKA_LOG
from sdk.notices import Mode, Notice, Notices, ProducerStats
from sdk.spool import Record, Spool, SpoolFullError, claim

__all__ = ["Notice", "ProducerStats", "Pump"]
log = logging.getLogger(__name__)
TICK_S = 0.005  # idle poll: the longest an accepted event waits in the inbox before it is written
SLICE = 256  # records of Python work between releases of the client's lock
RECORD_OVERHEAD = 64  # spool bytes per record beyond its value, for the cap check in the caller
RETRIABLE = {
    KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._FATAL,
}


class Pump:
    """The caller-facing `send`, the pump thread, and the barriers (`flush`, `close`) of one client."""

    def __init__(
        self,
        config: dict[str, Any],
        options: ProducerSettings,
        spool_dir: Path,
        on_notice: Callable[[Notice], None] | None = None,
    ):
        self.o, self._spool_dir = options, spool_dir
        self._notices = Notices(on_notice, options.spool_on_full)
        if options.gil_switch_interval_ms is not None:
            sys.setswitchinterval(min(sys.getswitchinterval(), options.gil_switch_interval_ms / 1000))
        # librdkafka's log and errors to the SDK's logger, sparingly, unless the config brings its own
        config = {**client_logging(config["bootstrap.servers"], KAFKA_LOG), **config}
        self._config_error_cb: Callable[[KafkaError], None] = config["error_cb"]  # may raise: refused credentials
        self._config = {**config, "error_cb": self._on_error, "queue.buffering.max.messages": options.queue_max_events}
        self.refused: str | None = None  # what the config's error_cb raised (refused credentials): flush() reports it
        self._producer = Producer(self._config)
        self._spool_options = dict(
            max_bytes=options.spool_max_bytes,
            segment_bytes=options.spool_segment_bytes,
            on_full=options.spool_on_full,
            fsync=options.spool_fsync,
            fsync_interval_s=options.spool_fsync_interval_s,
        )
        self._spool: Spool | None = claim(spool_dir, create=False, **self._spool_options)  # a predecessor's leftovers
        self._lock = threading.Lock()
        self._max_block_s = options.max_block_ms / 1000
        self.mode: Mode = "spooling" if self._spool else "direct"
        self._inbox: deque[Record] = deque()
        self._inbox_bytes = 0
        self._overflow: deque[Record] = deque()  # sends that did not get the lock within max_block_ms
        self._late: deque[Record] = deque()  # retriable failures of direct sends outside a switch
        self._rescued: list[Record] | None = None  # set while switching: purged direct sends land here
        self.produced = self.spooled = self.resent = self.failed = self.direct_failed = 0
        self._caller_dropped = 0
        self._recent: deque[str] = deque(maxlen=5)
        self._down = self._fatal = self._drain_failed = False
        self._window, self._window_open, self._carry = 0, True, []  # type: ignore[var-annotated]
        self._spool_bytes = self._spool.bytes if self._spool else 0
        self._spool_depth = self._spool.depth if self._spool else 0
        self._cond = threading.Condition()
        self._flush_req = self._flush_done = 0
        self._flush_ack_s = 0.0
        self._closing = self._stop = self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rlhf-producer-pump", daemon=True)
        self._prober = threading.Thread(target=self._probe_loop, name="rlhf-producer-probe", daemon=True)
        self._thread.start()
        self._prober.start()
        atexit.register(self._close_at_exit)  # an app that never calls close() still gets its events spooled

    # -- the caller's side: bounded, never waits on Kafka ------------------------------------
    def send(self, topic: str, value: bytes, key: str | None) -> None:
        record: Record = (topic, key, value)
        if self._closing:
            raise DeliveryError("the producer is closed")
        if self._overflow or not self._lock.acquire(timeout=self._max_block_s):
            if len(self._overflow) >= self.o.inbox_max_events:
                self._caller_dropped += 1  # unlocked: a concurrent drop may go uncounted
            else:
                self._overflow.append(record)
            return
        try:
            self._take(record)
        finally:
            self._lock.release()

    def _take(self, record: Record) -> None:
        """Produce directly, or queue for the spool (lock held)."""
        if self.mode == "direct":
            try:
                self._producer.produce(record[0], record[2], record[1], on_delivery=self._on_direct_report)
                self.produced += 1
                return
            except BufferError:  # librdkafka's queue is full: from here on, events are spooled
                self.mode = "switching"
        self._admit(record)

    def _admit(self, record: Record) -> None:
        """Queue for the spool (lock held), applying the cap policy now, so `raise` reaches the caller."""
        size = len(record[2]) + RECORD_OVERHEAD
        policy = self.o.spool_on_full
        inbox_full = len(self._inbox) >= self.o.inbox_max_events
        if inbox_full or (policy != "drop_oldest" and self._spool_bytes + self._inbox_bytes + size > self.o.spool_max_bytes):
            if policy == "raise":
                raise SpoolFullError(
                    f"spool {self._spool_dir} is full ({self.o.spool_max_bytes} bytes) and Kafka is not taking events"
                )
            self._caller_dropped += 1
            if policy == "drop_newest":
                return
            if inbox_full:
                self._inbox_bytes -= len(self._inbox.popleft()[2]) + RECORD_OVERHEAD
        self._inbox.append(record)
        self._inbox_bytes += size

    # -- librdkafka callbacks (served in the pump thread) --------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        try:
            self._config_error_cb(err)
        except Exception as exc:
            if self.refused is None:
                log.error("producer: %s", exc)
            self.refused = str(exc)
        if err.fatal():
            log.error("producer fatal error, rebuilding the producer: %s", err.str())
            self._fatal = self._down = True
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down = True

    def _on_direct_report(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self.direct_failed += 1
        if err.code() in RETRIABLE or err.retriable():
            record: Record = (msg.topic(), msg.key(), msg.value())  # type: ignore[assignment]
            (self._rescued if self._rescued is not None else self._late).append(record)
        else:
            self._permanent(err, msg)

    def _on_drain_report(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if err.code() in RETRIABLE or err.retriable():
            self._drain_failed = True  # still in the spool: the window is re-sent
        else:
            self._permanent(err, msg)  # skipped when the window commits

    def recent_failures(self) -> str:
        return "; ".join(self._recent)

    def _permanent(self, err: KafkaError, msg: Message) -> None:
        self.failed += 1
        self._recent.append(f"{msg.topic()}: {err.str()}")

    # -- the pump -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                drainable = self.mode == "spooling" and not self._down and (self._carry or self._window_open)
                busy = self._inbox or self._overflow or self._late or drainable
                self._producer.poll(0 if busy else TICK_S)
                self._step()
        except BaseException as exc:
            self.error = exc
            log.exception("producer pump stopped; events now stay in memory until flush() reports it")
        finally:
            with self._cond:
                self._cond.notify_all()

    def _step(self) -> None:
        self._fold_overflow()
        if self._fatal:
            self._switch()
            with self._lock:
                self._producer, self._fatal = Producer(self._config), False
        if self.mode == "switching" or (self.mode == "direct" and (self._down or self._late)):
            self._switch()
        if self.mode == "spooling":
            self._write_inbox(SLICE * 4)
            self._drain()
        if self._spool is not None:
            self._spool.sync_if_due()
        self._serve_flush()
        self._report()

    def _fold_overflow(self) -> None:
        if not self._overflow:
            return
        with self._lock:  # sends queue behind the overflow until it is empty, keeping their order
            while self._overflow:
                try:
                    self._take(self._overflow.popleft())
                except SpoolFullError:
                    self._caller_dropped += 1

    def _switch(self) -> None:
        """Move what librdkafka holds (and earlier retriable failures) to the spool, ahead of the inbox."""
        with self._lock:
            self.mode = "switching"
        self._rescued = []
        self._take_back(10.0, in_flight=self._down)
        rescued, self._rescued = [*self._late, *self._rescued], None
        self._late.clear()
        self._spool_write(rescued)
        with self._lock:
            self.mode = "spooling"
        reason = "no broker reachable" if self._down else "librdkafka's queue is full or not acknowledged"
        self._notices.tell("spooling", len(rescued), f"{reason}: spooling events ({len(rescued)} taken back from librdkafka)")

    def _take_back(self, wait_s: float, in_flight: bool = True) -> None:
        """Purge librdkafka's queue (and what is in flight, at once or once it is not acknowledged
        within a second) and serve the purged events' reports, for at most `wait_s`."""
        self._producer.purge(in_queue=True, in_flight=in_flight, blocking=False)
        start = time.monotonic()
        while len(self._producer) and time.monotonic() - start < wait_s:
            self._producer.poll(0.005)
            if not in_flight and (self._down or time.monotonic() - start > 1.0):  # in-flight sends are not being acknowledged
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
                in_flight = True

    def _write_inbox(self, limit: int) -> None:
        if self._late:  # retriable failures reported after their switch ended: behind what is spooled
            late = list(self._late)
            self._late.clear()
            self._spool_write(late)
        while self._inbox and limit > 0:
            batch: list[Record] = []
            while self._inbox and len(batch) < SLICE:
                batch.append(self._inbox.popleft())
            limit -= len(batch)
            with self._lock:
                self._inbox_bytes -= sum(len(r[2]) for r in batch) + RECORD_OVERHEAD * len(batch)
            self._spool_write(batch)
            time.sleep(0)

    def _spool_write(self, records: list[Record]) -> None:
        if not records:
            return
        if self._spool is None:
            self._spool = claim(self._spool_dir, create=True, **self._spool_options)
            assert self._spool is not None
        refused = self._spool.append(records)
        self.spooled += len(records) - refused
        self._spool_bytes, self._spool_depth = self._spool.bytes, self._spool.depth

    def _drain(self) -> None:
        """Re-send the spool in windows; commit a window once acknowledged; go direct when empty."""
        spool = self._spool
        if spool is None and not self._down:  # the switch found nothing to take back
            with self._lock:
                if not self._inbox:
                    self.mode = "direct"
            return
        if spool is None or self._down or self._drain_failed:  # stop, and read the unacknowledged window again later
            if spool is not None and (self._window or self._carry):  # a window is read from the spool
                self._take_back(10.0)
                spool.rewind()
                self._window, self._window_open, self._carry = 0, True, []
            if self._drain_failed:
                self._drain_failed, self._down = False, True  # retry once the probe sees the broker
            return
        if self._carry or (self._window_open and self._window < self.o.drain_window):
            records = self._carry or spool.read(min(SLICE, self.o.drain_window - self._window))
            self._carry = []
            if not records:
                self._window_open = False
            for i, (topic, key, value) in enumerate(records):
                try:
                    self._producer.produce(topic, value, key, on_delivery=self._on_drain_report)
                except BufferError:
                    self._carry = records[i:]
                    self._producer.poll(TICK_S)
                    break
                self._window += 1
            time.sleep(0)
            return
        if len(self._producer):
            return  # the window is in flight
        if self._window:
            spool.commit()
            self.resent += self._window
            self._spool_bytes, self._spool_depth = spool.bytes, spool.depth
        self._window, self._window_open = 0, True
        if not spool.unread:
            with self._lock:
                if not self._inbox and not self._overflow and not self._late:
                    self.mode = "direct"
            if self.mode == "direct":
                self._notices.tell("direct", self.resent, "broker reachable and spool re-sent: sending directly")

    def _probe_loop(self) -> None:
        """While the broker is thought down, ask it for metadata (blocking here, not in the pump)."""
        while not self._closed:
            if self._down:
                try:
                    if self._producer.list_topics(timeout=max(self.o.probe_interval_s, 0.2)).brokers:
                        self._down = False
                except KafkaException:
                    pass
            time.sleep(self.o.probe_interval_s)

    def _serve_flush(self) -> None:
        target = self._flush_req
        if target <= self._flush_done:
            return
        if self.mode == "switching":
            self._switch()
        if self.mode == "direct":
            deadline = time.monotonic() + self._flush_ack_s
            while len(self._producer) and not self._down and not self._late and time.monotonic() < deadline:
                self._producer.poll(0.002)
            if len(self._producer) or self._late:  # not acknowledged in time: persist them instead
                self._switch()
        if self.mode == "spooling":
            self._write_inbox(len(self._inbox))
        if self._spool is not None:
            self._spool.sync()
        with self._cond:
            self._flush_done = target
            self._cond.notify_all()

    # -- reporting ------------------------------------------------------------------------------
    def _report(self) -> None:
        self._notices.losses(self.stats, self.recent_failures)

    @property
    def delivered(self) -> int:
        """Sends acknowledged so far (a re-sent event counts each time it is acknowledged)."""
        in_flight = len(self._producer) if self.mode == "direct" else 0
        return self.produced - self.direct_failed - in_flight + self.resent

    def stats(self) -> ProducerStats:
        spool = self._spool
        dropped = self._caller_dropped + (spool.dropped_oldest + spool.dropped_newest if spool else 0)
        return ProducerStats(
            self.mode,
            self.produced,
            self.spooled,
            self.resent,
            self.failed,
            dropped,
            spool.corrupt if spool else 0,
            self._spool_depth,
            self._spool_bytes,
            len(self._inbox) + len(self._overflow),
            len(self._producer),
        )

    # -- barriers -------------------------------------------------------------------------------
    def flush(self, timeout: float) -> None:
        """Block until everything accepted so far is acknowledged or spooled; DeliveryError if that
        did not happen within `timeout` (a stopped pump)."""
        with self._cond:
            self._flush_req += 1
            ticket = self._flush_req
            self._flush_ack_s = timeout / 2  # then the rest is spooled instead
            done = self._cond.wait_for(lambda: self._flush_done >= ticket or self.error is not None, timeout)
        if self.error is not None or not done:
            raise DeliveryError(f"producer could not flush within {timeout}s: {self.error or 'pump busy'}")

    def _close_at_exit(self) -> None:
        try:
            self.close(5.0)
        except Exception:
            log.exception("producer: closing at exit failed")

    def close(self, timeout: float) -> None:
        """Flush (deliver or spool everything), stop the threads, release the spool slot."""
        if self._closed:
            return
        atexit.unregister(self._close_at_exit)
        self._closing = True
        try:
            self.flush(timeout)
        finally:
            self._stop = True
            self._thread.join(timeout)
            self._closed = True
            if len(self._producer):  # a window in flight: it is in the spool, re-sent by the next process
                self._take_back(0.1)
            if self._spool is not None:
                self._spool.close()
