"""The producer's durable spool (sdk/spool.py): order, segments, cap policies, restart recovery,
torn and corrupt records. Files under tmp_path only; no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.spool import HEADER, Spool, claim, encode

SEG = 4096  # small segments, so a few hundred records span several


def records(start: int, stop: int, topic: str = "t.feedback") -> list[tuple[str, bytes | None, bytes]]:
    return [(topic, f"user-{n % 5}".encode(), f"event-{n:06d}".encode() * 3) for n in range(start, stop)]  # all the same size


def values(recs: list) -> list[int]:
    return [int(r[2][6:12]) for r in recs]


def open_spool(path: Path, **kw) -> Spool:
    return Spool(path, **{"max_bytes": 1 << 20, "segment_bytes": SEG, **kw})


def test_records_come_back_in_order_across_segments_with_topic_key_and_value(tmp_path):
    spool = open_spool(tmp_path)
    sent = records(0, 500) + records(500, 510, topic="t.exposures") + [("t.feedback", None, b"event-000510 without a key")]
    assert spool.append(sent) == 0
    assert len(spool.segments) > 3 and all(s.size <= SEG for s in spool.segments)
    got = spool.read(200) + spool.read(10_000)
    assert got == sent
    assert spool.depth == 511 and not spool.unread


def test_commit_deletes_spent_segments_and_rewind_rereads_what_was_not_committed(tmp_path):
    spool = open_spool(tmp_path)
    spool.append(records(0, 400))
    first = spool.read(150)
    spool.commit()
    assert spool.depth == 250
    assert min(s.number for s in spool.segments) > 1  # the first segment was spent and deleted
    assert not (tmp_path / f"{1:016d}.seg").exists()
    second = spool.read(100)
    spool.rewind()
    assert spool.read(100) == second  # not acknowledged: read again
    assert values(first + second) == list(range(250))
    spool.read(10_000)
    spool.commit()
    assert spool.depth == 0 and spool.bytes == 0 and not list(tmp_path.glob("*.seg"))
    spool.append(records(400, 410))  # a fresh start after everything was delivered
    assert values(spool.read(100)) == list(range(400, 410))


def test_restart_resumes_after_the_last_commit(tmp_path):
    spool = open_spool(tmp_path)
    spool.append(records(0, 300))
    spool.read(120)
    spool.commit()
    spool.read(50)  # read, never acknowledged: a crash now must not lose them
    spool.close()
    again = open_spool(tmp_path)
    assert again.depth == 180
    assert values(again.read(10_000)) == list(range(120, 300))
    again.append(records(300, 310))
    assert values(again.read(100)) == list(range(300, 310))


def test_a_cursor_between_records_resends_the_record_it_cuts(tmp_path):
    spool = open_spool(tmp_path)
    spool.append(records(0, 10))
    size = len(encode(records(0, 1)[0]))
    spool.close()
    (tmp_path / "cursor").write_text(f"1 {4 * size - 1}\n")  # inside the fourth record
    assert values(open_spool(tmp_path).read(100)) == list(range(3, 10))


def test_a_torn_tail_record_is_cut_and_appending_continues(tmp_path):
    spool = open_spool(tmp_path)
    spool.append(records(0, 50))
    spool.close()
    tail = sorted(tmp_path.glob("*.seg"))[-1]
    whole = tail.stat().st_size
    with open(tail, "ab") as f:  # a crash in the middle of writing a record
        f.write(encode(records(50, 51)[0])[:-4])
    again = open_spool(tmp_path)
    assert tail.stat().st_size == whole and again.corrupt == 0
    again.append(records(51, 60))
    assert values(again.read(1000)) == [*range(50), *range(51, 60)]


def test_a_corrupt_record_inside_an_older_segment_is_skipped_and_counted(tmp_path):
    spool = open_spool(tmp_path)
    spool.append(records(0, 300))
    spool.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    size = len(encode(records(0, 1)[0]))
    data[2 * size + HEADER.size + 3] ^= 0xFF  # flip a payload byte of the third record
    first.write_bytes(bytes(data))
    per_segment = len(data) // size
    again = open_spool(tmp_path)
    assert again.corrupt == 1
    got = values(again.read(10_000))
    assert got == [0, 1, *range(per_segment, 300)]  # the rest of that segment is gone, later ones intact


def test_drop_oldest_keeps_the_newest_and_counts_every_loss(tmp_path):
    spool = open_spool(tmp_path, max_bytes=4 * SEG, on_full="drop_oldest")
    sent = records(0, 1000)
    assert spool.append(sent) == 0
    assert spool.bytes <= 4 * SEG
    got = values(spool.read(10_000))
    assert got == list(range(1000 - len(got), 1000))  # a contiguous newest suffix
    assert spool.dropped_oldest == 1000 - len(got) > 0


def test_drop_oldest_counts_only_undelivered_records_of_a_partly_committed_segment(tmp_path):
    spool = open_spool(tmp_path, max_bytes=4 * SEG, on_full="drop_oldest")
    spool.append(records(0, 20))
    spool.read(5)
    spool.commit()  # 5 delivered, still in the first segment
    spool.append(records(20, 1000))
    got = values(spool.read(10_000))
    assert spool.dropped_oldest == 1000 - 5 - len(got)


@pytest.mark.parametrize("policy", ["drop_newest", "raise"])
def test_drop_newest_and_raise_keep_the_oldest_and_refuse_the_rest(tmp_path, policy):
    # Under `raise` the client raises SpoolFullError to the caller before queueing (sdk/pump.py);
    # the spool itself refuses and counts whatever still reaches it.
    spool = open_spool(tmp_path, max_bytes=4 * SEG, on_full=policy)
    refused = spool.append(records(0, 1000))
    got = values(spool.read(10_000))
    assert got == list(range(len(got))) and refused == 1000 - len(got) > 0
    assert spool.dropped_newest == refused and spool.bytes <= 4 * SEG


def test_fsync_always_and_never_both_keep_the_records(tmp_path):
    for policy in ("always", "never"):
        spool = open_spool(tmp_path / policy, fsync=policy)
        spool.append(records(0, 100))
        spool.close()
        assert values(open_spool(tmp_path / policy).read(1000)) == list(range(100))


def test_segment_must_fit_twice_under_the_cap(tmp_path):
    with pytest.raises(ValueError):
        Spool(tmp_path, max_bytes=SEG, segment_bytes=SEG)


def test_one_process_per_slot_and_a_restart_adopts_the_leftover_slot(tmp_path):
    held = claim(tmp_path, create=True)
    assert held is not None and held.dir.name == "p0"
    with pytest.raises(BlockingIOError):
        Spool(tmp_path / "p0")
    other = claim(tmp_path, create=True)
    assert other is not None and other.dir.name == "p1"
    other.append(records(0, 10))
    other.close()  # its process ended with 10 undelivered records
    assert claim(tmp_path / "none", create=False) is None
    adopted = claim(tmp_path, create=False)
    assert adopted is not None and adopted.dir.name == "p1" and adopted.depth == 10
    held.close()
    adopted.close()
