"""FeedbackClient with no broker to reach (a closed port): sends return, everything is spooled,
close() persists it for the next process, and cap policies are counted, called back and raised.
No broker is started; librdkafka only fails to connect to 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DeliveryError
from core.settings import ProducerSettings
from devtools.kafka_local import free_port
from sdk.client import FeedbackClient
from sdk.pump import Notice
from sdk.spool import Spool, SpoolFullError

pytestmark = pytest.mark.integration


def send(client: FeedbackClient, start: int, stop: int) -> None:
    for n in range(start, stop):
        client.feedback(
            event_id=f"e{n:06d}",
            interaction_id=f"i{n}",
            user_id=f"u{n % 7}",
            query="q?",
            response="a",
            model_version="v1",
            feedback_type="thumbs_up",
        )


def unreachable(tmp_path: Path, **options) -> tuple[FeedbackClient, list[Notice]]:
    notices: list[Notice] = []
    client = FeedbackClient(
        f"127.0.0.1:{free_port()}", "t.", 1.0, options=ProducerSettings(**options), spool_dir=tmp_path, on_notice=notices.append
    )
    return client, notices


def test_close_persists_everything_in_send_order_and_a_new_client_adopts_it(tmp_path):
    client, notices = unreachable(tmp_path)
    send(client, 0, 3000)
    client.close()  # nothing lost: no error
    assert client.stats().spooled == 3000 and client.stats().spool_depth == 3000
    assert any(n.kind == "spooling" for n in notices)
    spool = Spool(tmp_path / "p0")
    got = spool.read(10_000)
    assert [r[2].split(b'"event_id":"')[1][:7] for r in got] == [f"e{n:06d}".encode() for n in range(3000)]
    assert {r[0] for r in got} == {"t.feedback"} and got[0][1] == b"u0"
    spool.close()
    again, _ = unreachable(tmp_path)
    assert again.stats().mode == "spooling" and again.stats().spool_depth == 3000  # re-sent once a broker answers
    send(again, 3000, 3010)
    again.close()
    assert Spool(tmp_path / "p0").depth == 3010


def test_flush_returns_once_spooled_and_reports_nothing_lost(tmp_path):
    client, _ = unreachable(tmp_path)
    send(client, 0, 100)
    client.flush(10)
    assert client.stats().spool_depth == 100 and client.stats().inbox == 0
    client.close()


def test_drop_newest_is_counted_called_back_and_raised_from_flush(tmp_path):
    client, notices = unreachable(tmp_path, spool_max_bytes=1 << 16, spool_segment_bytes=1 << 14, spool_on_full="drop_newest")
    send(client, 0, 1000)
    with pytest.raises(DeliveryError, match="lost since the last flush"):
        client.flush(10)
    stats = client.stats()
    assert stats.dropped > 0 and stats.spooled + stats.dropped == 1000
    client.flush(10)  # reported once
    client._pump._notices.reported_at = 0
    client._pump._report()
    # Told as the counter grew (at most once a second), so a slow machine may split it in parts.
    assert sum(n.count for n in notices if n.kind == "dropped") == stats.dropped
    client.close()


def test_raise_policy_raises_to_the_caller(tmp_path):
    client, _ = unreachable(tmp_path, spool_max_bytes=1 << 16, spool_segment_bytes=1 << 14, spool_on_full="raise")
    with pytest.raises(SpoolFullError):
        send(client, 0, 1000)
    assert isinstance(SpoolFullError("x"), DeliveryError)  # the assistant answers 503 to it
    try:
        client.close()
    except DeliveryError as exc:  # events accepted into the inbox just before the cap was met: lost, and said so
        assert "spool policy raise" in str(exc) and client.stats().dropped > 0


def test_drop_oldest_keeps_the_newest(tmp_path):
    client, _ = unreachable(tmp_path, spool_max_bytes=1 << 16, spool_segment_bytes=1 << 14)
    send(client, 0, 1000)
    with pytest.raises(DeliveryError):
        client.close()
    spool = Spool(tmp_path / "p0")
    got = [int(r[2].split(b'"event_id":"e')[1][:6]) for r in spool.read(10_000)]
    assert got == list(range(1000 - len(got), 1000)) and spool.dropped_oldest == 0
    assert client.stats().dropped == 1000 - len(got)


def test_a_send_that_cannot_get_the_lock_in_time_is_handed_over_and_keeps_its_place(tmp_path):
    client, _ = unreachable(tmp_path)
    send(client, 0, 10)
    client._pump._lock.acquire()  # as if another thread held it for long
    try:
        send(client, 10, 20)  # each waits max_block_ms, then goes to the overflow queue
        assert client.stats().inbox >= 10
    finally:
        client._pump._lock.release()
    send(client, 20, 30)  # queued behind the overflow, not ahead of it
    client.close()
    got = [int(r[2].split(b'"event_id":"e')[1][:6]) for r in Spool(tmp_path / "p0").read(100)]
    assert got == list(range(30))


def test_an_error_cb_in_the_config_is_called_and_what_it_raises_reaches_flush(tmp_path):
    seen = []

    def refuse(err):  # stands for a callback that names refused credentials
        seen.append(err.code())
        raise RuntimeError("credentials refused")

    client = FeedbackClient(f"127.0.0.1:{free_port()}", "t.", 1.0, spool_dir=tmp_path, error_cb=refuse)
    send(client, 0, 10)
    with pytest.raises(DeliveryError, match="credentials refused"):
        client.flush(10)
    assert seen and client.stats().spooled == 10  # the events are kept
    with pytest.raises(DeliveryError):
        client.close()
