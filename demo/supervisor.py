"""Supervised child processes with logs in one directory, for `rlhf demo`, `rlhf stack up` and the
end-to-end tests.

Each service is an `rlhf ...` subcommand in its own process group; `stop_all` sends SIGTERM,
waits, then SIGKILLs what is left, so Ctrl-C leaves nothing running. A service that dies is
restarted (the demo's fault drill relies on that), up to a bounded number of times.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.errors import ServiceError

log = logging.getLogger("demo.supervisor")


@dataclass
class Service:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


# The checkout this process runs from: children import the same code even when the venv's
# editable install points at another checkout (one venv is shared between clones).
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str], max_restarts: int = 5):
        self.log_dir = log_dir
        self.env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)}
        self.max_restarts = max_restarts
        self.services: dict[str, Service] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> Service:
        service = self.services.get(name) or Service(name, [sys.executable, "-m", "rlhf.cli", *args])
        self.services[name] = service
        with open(self.log_dir / f"{name}.log", "ab") as out:
            service.proc = subprocess.Popen(
                service.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
            )
        service.started_at = time.monotonic()
        log.info("started %s (pid %d)", name, service.proc.pid)
        return service

    def start_program(self, name: str, argv: list[str]) -> Service:
        """Like `start`, for a program other than `rlhf` (`python -m devtools.balancer ...`); restarted the same way."""
        self.services.setdefault(name, Service(name, argv))
        return self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a service's whole process group (the fault drill uses SIGKILL)."""
        proc = self.services[name].proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def check(self) -> list[str]:
        """Restart services that died; returns the names restarted."""
        restarted = []
        for service in self.services.values():
            if service.proc is not None and service.proc.poll() is not None:
                if service.restarts >= self.max_restarts:
                    raise ServiceError(
                        f"{service.name} keeps dying (exit {service.proc.returncode}); see {self.log_dir / service.name}.log"
                    )
                service.restarts += 1
                log.warning("%s exited with %s; restarting (%d)", service.name, service.proc.returncode, service.restarts)
                self.start(service.name, *service.argv[3:])
                restarted.append(service.name)
        return restarted

    def wait_http(self, url: str, timeout: float) -> None:
        """Wait until `url` answers 200, restarting whatever dies meanwhile; ServiceError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise ServiceError(f"{url} did not answer within {timeout:.0f}s; see the logs in {self.log_dir}")

    def stop_all(self, timeout: float = 20.0) -> None:
        running = [s.proc for s in self.services.values() if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the same cleanup stops
    every child; the previous handler is back afterwards."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
