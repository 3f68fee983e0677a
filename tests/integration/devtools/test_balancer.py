"""The round-robin balancer in front of `rlhf stack up`'s replicas (devtools/balancer.py), on loopback
sockets: connections alternate between upstreams, one that refuses is skipped, bytes pass both ways
and the client's half-close reaches the upstream."""

from __future__ import annotations

import asyncio

import pytest

from devtools.balancer import parse_upstream, serve
from devtools.kafka_local import free_port

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


async def named_upstream(name: bytes) -> asyncio.Server:
    """Answers `name:` and whatever the client sent, once the client has finished sending."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b":" + await reader.read())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(reply, HOST, 0)


async def ask(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(payload)
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


def test_connections_alternate_and_an_upstream_that_refuses_is_skipped():
    async def scenario() -> list[bytes]:
        a, b = await named_upstream(b"a"), await named_upstream(b"b")
        nobody = free_port()  # nothing listens there: a replica being restarted
        upstreams = [(HOST, a.sockets[0].getsockname()[1]), (HOST, nobody), (HOST, b.sockets[0].getsockname()[1])]
        port, ready = free_port(), asyncio.Event()
        balancer = asyncio.create_task(serve(HOST, port, upstreams, ready))
        await ready.wait()
        try:
            return [await ask(port, b"%d" % n) for n in range(4)]
        finally:
            balancer.cancel()
            a.close()
            b.close()

    assert asyncio.run(scenario()) == [b"a:0", b"b:1", b"a:2", b"b:3"]


def test_an_upstream_is_host_and_port():
    assert parse_upstream("127.0.0.1:8301") == ("127.0.0.1", 8301)
    for bad in ("8301", "127.0.0.1:", ":8301", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_upstream(bad)
