"""Durable local spool: where the producer keeps events Kafka cannot take right now.

An append-only log of segment files (`0000000000000001.seg`, ...) in one directory. Each record is
framed as `length (u32) | CRC-32 (u32) | payload`, the payload holding topic, key and value, so a
record torn by a crash or damaged on disk is recognised and never sent. A `cursor` file names the
first record not yet acknowledged by Kafka; a restarted process re-sends from there, so a record
can be sent twice (after a crash between an acknowledgement and the cursor write) but is not lost;
consumers dedupe by event id.

The spool is bounded (`max_bytes`); what happens at the bound is the `on_full` policy, and every
record it costs is counted (`dropped_oldest`, `dropped_newest`). `fsync` says when written bytes
are forced to disk: `always` after every append, `interval` when `sync_if_due` finds the interval
passed, `never` leaves it to the OS. Bytes written survive a kill of the process whatever the
policy; the policy only matters for a crash of the machine.

Not thread-safe: one thread (the producer's pump, sdk/pump.py) appends, reads and commits.
"""

from __future__ import annotations

import builtins
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import DeliveryError

OnFull = Literal["drop_oldest", "drop_newest", "raise"]
FsyncPolicy = Literal["always", "interval", "never"]
Record = tuple[str, "str | bytes | None", bytes]  # topic, key, value

HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
META = struct.Struct("<Hi")  # topic length, key length (-1: no key)
SUFFIX = ".seg"
CURSOR = "cursor"
READ_CHUNK = 1 << 20
log = logging.getLogger(__name__)


class SpoolFullError(DeliveryError):
    """The spool is at its size cap and its policy is `raise`: the event was not accepted."""


def encode(record: Record) -> bytes:
    topic, key, value = record
    t = topic.encode()
    k = key.encode() if isinstance(key, str) else key
    payload = b"".join((META.pack(len(t), -1 if k is None else len(k)), t, k or b"", value))
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes | memoryview) -> Record:
    tlen, klen = META.unpack_from(payload)
    at = META.size
    topic = bytes(payload[at : at + tlen]).decode()
    at += tlen
    key = None if klen < 0 else bytes(payload[at : at + klen])
    return topic, key, bytes(payload[at + max(klen, 0) :])


def parse(buf: bytes, limit: int, max_records: int = 1 << 62) -> tuple[list[Record], list[int], bool]:
    """Whole records in `buf[:limit]` (at most `max_records`): the records, the offset after each, and
    whether the scan stopped at a bad record (CRC mismatch, impossible length) rather than at the end."""
    view = memoryview(buf)
    records: list[Record] = []
    ends: list[int] = []
    at = 0
    while at + HEADER.size <= limit and len(records) < max_records:
        length, crc = HEADER.unpack_from(buf, at)
        end = at + HEADER.size + length
        if length < META.size:
            return records, ends, True
        if end > limit:
            break
        payload = view[at + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            return records, ends, True
        records.append(decode(payload))
        ends.append(end)
        at = end
    return records, ends, False


@dataclass
class Segment:
    number: int
    size: int  # bytes written and valid
    records: int

    def path(self, directory: Path) -> Path:
        return directory / f"{self.number:016d}{SUFFIX}"


class Spool:
    """One process's spool directory (held with an exclusive lock while open)."""

    # Where reading goes on: segment number, byte offset in it, records read from it.
    _read_seg: int
    _read_off: int
    _read_records: int

    def __init__(
        self,
        directory: Path,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        on_full: OnFull = "drop_oldest",
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
    ):
        if segment_bytes * 2 > max_bytes:
            raise ValueError(f"segment_bytes ({segment_bytes}) must be at most half of max_bytes ({max_bytes})")
        self.dir, self.max_bytes, self.segment_bytes = Path(directory), max_bytes, segment_bytes
        self.on_full, self.fsync, self.fsync_interval_s = on_full, fsync, fsync_interval_s
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise
        self.dropped_oldest = self.dropped_newest = self.corrupt = 0
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the tail segment, open for appending
        self._dirty, self._synced_at = False, time.monotonic()
        self._recover()

    # -- state -------------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def depth(self) -> int:
        """Records not yet acknowledged (committed): what a restart would re-send."""
        return sum(s.records for s in self.segments) - self._cursor_records

    @property
    def unread(self) -> bool:
        """Whether records remain past the read position."""
        if not self.segments:
            return False
        return (self._read_seg, self._read_off) != (self.segments[-1].number, self.segments[-1].size)

    def _segment(self, number: int) -> Segment | None:
        return next((s for s in self.segments if s.number == number), None)

    # -- recovery ----------------------------------------------------------------------------
    def _recover(self) -> None:
        """Index the segments, cut torn or corrupt tails, and place the cursor."""
        numbers = sorted(int(p.name[: -len(SUFFIX)]) for p in self.dir.glob(f"*{SUFFIX}") if p.name[: -len(SUFFIX)].isdigit())
        for i, number in enumerate(numbers):
            seg = Segment(number, 0, 0)
            data = seg.path(self.dir).read_bytes()
            records, ends, bad = parse(data, len(data))
            seg.size, seg.records = (ends[-1] if ends else 0), len(records)
            if seg.size < len(data):
                if bad or i < len(numbers) - 1:
                    self.corrupt += 1
                    log.warning(
                        "spool %s: corrupt record at byte %d of %d: rest of the segment skipped",
                        seg.path(self.dir),
                        seg.size,
                        len(data),
                    )
                else:
                    log.warning("spool %s: torn record at the tail (%d bytes) dropped", seg.path(self.dir), len(data) - seg.size)
                os.truncate(seg.path(self.dir), seg.size)
            self.segments.append(seg)
        cseg, coff = self._read_cursor()
        self.segments = [s for s in self.segments if s.number >= cseg or self._unlink(s)]
        head = self.segments[0] if self.segments else None
        if head is not None and head.number == cseg and coff:
            data = head.path(self.dir).read_bytes()[: head.size]
            _, ends, _ = parse(data, len(data))
            kept = [e for e in ends if e <= coff]  # a cursor off a record boundary re-sends that record
            self._cursor = (head.number, kept[-1] if kept else 0)
            self._cursor_records = len(kept)
        else:
            self._cursor, self._cursor_records = ((head.number if head else cseg), 0), 0
        self.rewind()
        if self.segments:
            tail = self.segments[-1]
            self._fd = os.open(tail.path(self.dir), os.O_WRONLY | os.O_APPEND)

    def _read_cursor(self) -> tuple[int, int]:
        try:
            seg, off = (self.dir / CURSOR).read_text().split()[:2]
            return int(seg), int(off)
        except (FileNotFoundError, ValueError):
            return 0, 0

    def _unlink(self, seg: Segment) -> bool:
        seg.path(self.dir).unlink(missing_ok=True)
        return False

    # -- writing -----------------------------------------------------------------------------
    def append(self, records: Iterable[Record]) -> int:
        """Append in order; returns how many records the cap policy refused (counted in
        `dropped_newest`). Under `drop_oldest` the oldest segments are deleted to make room instead."""
        refused, buffered = 0, 0
        buf: list[bytes] = []
        for record in records:
            blob = encode(record)
            if self.bytes + buffered + len(blob) > self.max_bytes:
                self._write(buf)
                buf, buffered = [], 0
                if not self._make_room(len(blob)):
                    refused += 1
                    continue
            if self._fd is None or (
                self.segments[-1].size + buffered + len(blob) > self.segment_bytes and self.segments[-1].records + len(buf)
            ):
                self._write(buf)
                buf, buffered = [], 0
                self._roll()
            buf.append(blob)
            buffered += len(blob)
        self._write(buf)
        self.dropped_newest += refused
        if self.fsync == "always":
            self.sync()
        return refused

    def _write(self, blobs: list[builtins.bytes]) -> None:  # `bytes` in this class is the property
        if not blobs:
            return
        data = memoryview(b"".join(blobs))
        while data:
            data = data[os.write(self._fd, data) :]  # type: ignore[arg-type]
        tail = self.segments[-1]
        tail.size += sum(len(b) for b in blobs)
        tail.records += len(blobs)
        self._dirty = True

    def _make_room(self, need: int) -> bool:
        while self.bytes + need > self.max_bytes:
            if self.on_full != "drop_oldest" or need > self.max_bytes - self.segment_bytes:
                return False
            if len(self.segments) == 1:  # the tail is the oldest: start a new one so it can go
                self._roll()
            self._drop(self.segments[0])
        return True

    def _drop(self, seg: Segment) -> None:
        lost = seg.records - (self._cursor_records if seg.number == self._cursor[0] else 0)
        self.dropped_oldest += lost
        log.warning("spool %s full (%d bytes): dropped its oldest segment, %d undelivered events", self.dir, self.max_bytes, lost)
        self.segments.remove(seg)
        self._unlink(seg)
        nxt = self.segments[0].number if self.segments else seg.number + 1
        if self._cursor[0] == seg.number:
            self._cursor, self._cursor_records = (nxt, 0), 0
            self._write_cursor()
        if self._read_seg == seg.number:
            self._read_seg, self._read_off, self._read_records = nxt, 0, 0

    def _roll(self) -> None:
        if self._fd is not None:
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
        number = self.segments[-1].number + 1 if self.segments else max(self._cursor[0], 1)
        seg = Segment(number, 0, 0)
        self._fd = os.open(seg.path(self.dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.segments.append(seg)
        if self._read_seg < number and self._segment(self._read_seg) is None:
            self._read_seg, self._read_off, self._read_records = number, 0, 0

    def sync(self) -> None:
        """Force written records to disk (what `flush()` of the client promises, unless `never`)."""
        if self._fd is not None and self._dirty and self.fsync != "never":
            os.fsync(self._fd)
        self._dirty, self._synced_at = False, time.monotonic()

    def sync_if_due(self) -> None:
        if self.fsync == "interval" and self._dirty and time.monotonic() - self._synced_at >= self.fsync_interval_s:
            self.sync()

    # -- reading and acknowledging -----------------------------------------------------------
    def read(self, max_records: int) -> list[Record]:
        """Up to `max_records` records after the read position, in append order; advances it."""
        out: list[Record] = []
        while len(out) < max_records and self.segments:
            seg = self._segment(self._read_seg)
            if seg is None or self._read_off >= seg.size:
                later = [s for s in self.segments if s.number > self._read_seg]
                if not later:
                    break
                self._read_seg, self._read_off, self._read_records = later[0].number, 0, 0
                continue
            with open(seg.path(self.dir), "rb") as f:
                f.seek(self._read_off)
                data = f.read(min(seg.size - self._read_off, READ_CHUNK, max(1024 * (max_records - len(out)), 1 << 16)))
            if len(data) >= HEADER.size and HEADER.size + HEADER.unpack_from(data)[0] > len(data):
                with open(seg.path(self.dir), "rb") as f:  # one record larger than a chunk
                    f.seek(self._read_off)
                    data = f.read(min(seg.size - self._read_off, HEADER.size + HEADER.unpack_from(data)[0]))
            records, ends, bad = parse(data, len(data), max_records - len(out))
            if bad and not records:  # damaged after recovery checked it: skip the rest of the segment
                self.corrupt += 1
                log.warning(
                    "spool %s: corrupt record at byte %d: rest of the segment skipped", seg.path(self.dir), self._read_off
                )
                self._read_off = seg.size
                continue
            out.extend(records)
            self._read_off += ends[-1] if ends else 0
            self._read_records += len(records)
        return out

    def commit(self) -> None:
        """Everything read so far was acknowledged: move the cursor there, delete spent segments."""
        self._cursor, self._cursor_records = (self._read_seg, self._read_off), self._read_records
        for seg in [s for s in self.segments if s.number < self._read_seg]:
            self.segments.remove(seg)
            self._unlink(seg)
        tail = self.segments[-1] if self.segments else None
        if tail is not None and self._cursor == (tail.number, tail.size):  # all delivered: start afresh
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None
            self.segments.clear()
            self._unlink(tail)
            self._cursor = (tail.number + 1, 0)
            self._read_seg, self._read_off, self._read_records, self._cursor_records = tail.number + 1, 0, 0, 0
        self._write_cursor()

    def rewind(self) -> None:
        """Forget what was read but not committed (it was not acknowledged): read it again."""
        (self._read_seg, self._read_off), self._read_records = self._cursor, self._cursor_records

    def _write_cursor(self) -> None:
        tmp = self.dir / f"{CURSOR}.tmp"
        tmp.write_text(f"{self._cursor[0]} {self._cursor[1]}\n")
        os.replace(tmp, self.dir / CURSOR)

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        os.close(self._lock_fd)  # releases the lock


def claim(base: Path, create: bool, **options: object) -> Spool | None:
    """Open a spool slot under `base` no other live process holds (`p0`, `p1`, ...), preferring
    one a dead process left records in, so a restarted app re-sends what its predecessor spooled.
    With `create` false, only such a leftover slot is opened (None if there is none)."""
    slots = sorted((p for p in base.glob("p*") if p.name[1:].isdigit()), key=lambda p: int(p.name[1:])) if base.is_dir() else []
    candidates = [p for p in slots if any(p.glob(f"*{SUFFIX}"))]
    if create:
        candidates += [p for p in slots if p not in candidates] + [base / f"p{n}" for n in range(len(slots), len(slots) + 64)]
    for path in candidates:
        try:
            spool = Spool(path, **options)  # type: ignore[arg-type]
        except BlockingIOError:
            continue
        if spool.depth or create:
            return spool
        spool.close()
    return None
