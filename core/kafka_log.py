"""librdkafka's log and errors, through Python logging, and quiet while a broker is away.

Left alone, librdkafka prints its log to stderr from its own threads, a `Connect to ... failed`
line per reconnect attempt, which no logging setting of the application reaches. `client_logging`
is the part of every client's configuration (`core.kafka_clients.client_config`, the SDK's
producer) that hands that log to a Python logger, from the client's poll, and takes its errors:

- a broker that cannot be reached is said once when it goes and once when it is back, with the
  number of errors in between (and a reminder after 1, 2, 4 ... minutes of a long outage):
      Kafka broker 127.0.0.1:9092 unreachable: ... Connect to ipv4#127.0.0.1:9092 failed: Connection refused ...
      Kafka broker 127.0.0.1:9092 reachable again after 12.3 s (17 errors in between)
  librdkafka reports no reconnection, so a thread that lives as long as the outage opens a TCP
  connection to the broker every second to see it return. One outage per broker address is
  shared by the clients of a process;
- an error while the broker still accepts connections (it closed one) is logged, at most once a
  minute per broker; other errors are logged as they come;
- librdkafka's `FAIL` log lines repeat what those errors say and go to DEBUG; the rest keep their level.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

KAFKA_LOG = logging.getLogger("rlhf.kafka")
KAFKA_LOG.addHandler(logging.NullHandler())  # a library's logger: silent unless the application configures logging
PROBE_S = 1.0
REPEAT_S = 60.0
OUTAGE_CODES = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TIMED_OUT}
_ADDRESS = re.compile(r"(?:[a-z_]+://)?(\[[0-9a-fA-F:.]+\]|[\w.-]+):(\d+)")


def client_logging(
    servers: str, logger: logging.Logger = KAFKA_LOG, check: Callable[[KafkaError], None] | None = None
) -> dict[str, Any]:
    """librdkafka properties: the `logger` and `error_cb` of one client, and no log of the idle
    connections brokers close. `check` sees each error first and may raise (refused credentials):
    the client's next poll raises it."""
    broker_log = BrokerLog(servers, logger, check)
    return {"logger": broker_log, "error_cb": broker_log.on_error, "log.connection.close": False}


class BrokerLog(logging.LoggerAdapter[logging.Logger]):
    """What confluent-kafka calls: `log(level, "%s [%s] %s", facility, client, text)` for each log
    line, `on_error(err)` for each error."""

    def __init__(self, servers: str, logger: logging.Logger, check: Callable[[KafkaError], None] | None = None):
        super().__init__(logger, {})
        self._fallback = servers.split(",")[0].strip()  # for errors that name no broker ("1/1 brokers are down")
        self._check = check

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if args and args[0] == "FAIL":  # also reported as an error, which is what gets logged
            level = logging.DEBUG
        self.logger.log(level, msg, *args, **kwargs)

    def on_error(self, err: KafkaError) -> None:
        if self._check is not None:
            self._check(err)
        text = err.str()
        if err.code() not in OUTAGE_CODES:
            self.logger.log(logging.ERROR if err.fatal() else logging.WARNING, "Kafka client error: %s", text)
            return
        found = _ADDRESS.search(text)
        address = f"{found[1]}:{found[2]}" if found else self._fallback
        with _lock:
            outage = _outages.get(address)
            if outage is None:
                outage = _outages[address] = _Outage(address, text, self.logger)
                outage.thread.start()
            outage.errors += 1
            outage.clients.add(self)


_lock = threading.Lock()
_outages: dict[str, _Outage] = {}
_blips: dict[str, float] = {}  # broker address -> when an error of a broker that still answered was last logged


class _Outage:
    """A broker that a client could not reach, watched until it answers (or no client is left)."""

    def __init__(self, address: str, first: str, logger: logging.Logger):
        self.address, self.first, self.logger = address, first, logger
        self.since, self.errors = time.monotonic(), 0
        self.clients: weakref.WeakSet[BrokerLog] = weakref.WeakSet()
        self.thread = threading.Thread(target=self._watch, name=f"kafka-probe-{address}", daemon=True)

    def _watch(self) -> None:
        host, _, port = self.address.rpartition(":")
        announced, remind = False, 60.0
        while True:
            up = _answers(host.strip("[]"), port)
            with _lock:
                if up or not self.clients:  # back, or nobody left to tell
                    del _outages[self.address]
                    break
            away = time.monotonic() - self.since
            if not announced:
                self.logger.warning("Kafka broker %s unreachable: %s", self.address, self.first)
                announced = True
            elif away >= remind:
                self.logger.warning("Kafka broker %s still unreachable after %.0f s (%d errors)", self.address, away, self.errors)
                remind = min(remind * 2, 3600.0)
            time.sleep(PROBE_S)
        away = time.monotonic() - self.since
        if up and announced:
            message = "Kafka broker %s reachable again after %.1f s (%d errors in between)"
            self.logger.warning(message, self.address, away, self.errors)
        elif up and time.monotonic() - _blips.get(self.address, -REPEAT_S) >= REPEAT_S:  # it answers: it closed a connection
            _blips[self.address] = time.monotonic()
            self.logger.warning("Kafka client error: %s", self.first)


def _answers(host: str, port: str) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_S):
            return True
    except (OSError, ValueError):
        return False
