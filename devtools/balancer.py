"""A round-robin TCP load balancer on one machine: the assistant replicas' front door in `rlhf stack up`
(docker/compose.yaml puts nginx there instead).

    python -m devtools.balancer --port 8300 127.0.0.1:8301 127.0.0.1:8302

Each accepted connection is piped, bytes as they are, to the next upstream in turn; an upstream that
refuses the connection (a replica being restarted) is skipped for the next one, so a dead replica
costs no request while another lives. It balances connections, not requests: a client that keeps
its connection alive stays on one replica, which is why any replica must accept feedback on any
answer (assistant/peers.py). Streamed answers pass through as they are written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging

log = logging.getLogger("devtools.balancer")
CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 2.0


def parse_upstream(text: str) -> tuple[str, int]:
    """`HOST:PORT` as a pair; ValueError naming the argument otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"upstream {text!r}: expected HOST:PORT, such as 127.0.0.1:8301")
    return host, int(port)


class RoundRobin:
    """Hands each connection to the next of `upstreams` that accepts it."""

    def __init__(self, upstreams: list[tuple[str, int]]):
        if not upstreams:
            raise ValueError("upstreams: at least one HOST:PORT is needed")
        self.upstreams = upstreams
        self._turn = itertools.cycle(range(len(upstreams)))

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            log.warning("no upstream accepts a connection: %s", self.upstreams)
            client_writer.close()
            return
        reader, writer = upstream
        try:
            await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))
        finally:
            for w in (writer, client_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in self.upstreams:  # each upstream at most once per connection, starting with the next in turn
            host, port = self.upstreams[next(self._turn)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                log.info("upstream %s:%d refused; trying the next", host, port)
        return None


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until the source ends, then pass the end on (a half-close), so the other direction can finish."""
    try:
        while chunk := await source.read(CHUNK):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:  # either side went away: closing both (in `handle`) ends the other direction too
        sink.close()


async def serve(host: str, port: int, upstreams: list[tuple[str, int]], ready: asyncio.Event | None = None) -> None:
    """Listen on host:port until cancelled; `ready` is set once the socket listens."""
    balancer = RoundRobin(upstreams)
    server = await asyncio.start_server(balancer.handle, host, port)
    async with server:
        if ready is not None:
            ready.set()
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("upstreams", nargs="+", metavar="HOST:PORT", help="the replicas, taken in turn")
    args = parser.parse_args(argv)
    try:
        upstreams = [parse_upstream(u) for u in args.upstreams]
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, upstreams))


if __name__ == "__main__":
    main()
