"""`rlhf stack up`: every service of the loop on one machine, as many of each as asked, supervised.

The one-machine equivalent of docker/compose.yaml, and what the tests run: a local Kafka (one node or
a KRaft cluster, devtools/kafka_local.py), the topics, the starting policy in the registry, then N
stream workers, the sink (embedded ClickHouse and the dashboard), N trainers, N deciders (one acts,
the others stand by) and N assistant replicas, each on its own port, behind a round-robin balancer
(devtools/balancer.py). Every service is an `rlhf ...` process of its own (demo/supervisor.py), with
its log in RUN/logs; one that dies is started again, and so is a broker node.

    stack = Stack(StackPlan(assistants=2, trainers=2), Path("runs/stack"))
    stack.up()                  # returns once every replica, the dashboard and the balancer answer
    stack.kill("trainer-1")     # SIGKILL, as a drill would; `stack.check()` starts it again
    stack.kill("kafka-2")       # a broker node of a cluster (SIGKILL)
    stack.down()                # everything stops; RUN keeps the logs and state

Every process gets the same configuration: the user's (RLHF_CONFIG or ./rlhf.yaml, RLHF_* variables)
under the stack's wiring (RLHF_HOME=RUN/state, the brokers, the dashboard's port, the replica count
and, for several replicas with none configured, a feedback secret they share). RUN/stack.env holds
that wiring, so other `rlhf` commands can reach the stack.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from consumers.trainer.job import ensure_base_policy
from core.errors import ConfigError
from core.settings import Settings, load_settings
from demo.supervisor import Supervisor
from devtools.kafka_cluster import LocalCluster
from devtools.kafka_local import LocalBroker, free_port
from sdk.admin import create_topics

log = logging.getLogger("demo.stack")
HOST = "127.0.0.1"  # everything listens on loopback: the services refuse an open API beyond it


@dataclass(frozen=True)
class StackPlan:
    """How many of each service, and the balancer's port (every other port is a free one)."""

    workers: int = 1
    trainers: int = 1
    deciders: int = 1
    assistants: int = 1
    brokers: int = 1
    port: int = 8300
    config: Path | None = None  # the YAML file every process reads (None: $RLHF_CONFIG or ./rlhf.yaml)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("port", "config") and value < 1:
                raise ConfigError(f"{f.name}: at least 1 of each service runs (got {value})")


class Stack:
    def __init__(self, plan: StackPlan, run_dir: Path, environ: Mapping[str, str] | None = None):
        self.plan, self.run_dir = plan, run_dir
        base = {**(os.environ if environ is None else environ), **({"RLHF_CONFIG": str(plan.config)} if plan.config else {})}
        own = load_settings(None, environ=base)  # what the user configured, before the stack's wiring
        self.broker = _local_kafka(run_dir / "kafka", plan.brokers, own.kafka.version)
        self.replica_ports = [free_port() for _ in range(plan.assistants)]
        self.dashboard_port = free_port()
        self.wiring = self._wiring(own)
        self.env = {**base, **self.wiring}
        self.settings: Settings = load_settings(None, environ=self.env)  # what every service loads
        self.supervisor = Supervisor(run_dir / "logs", self.env)

    @property
    def url(self) -> str:
        """The assistant, through the balancer."""
        return f"http://{HOST}:{self.plan.port}"

    @property
    def replica_urls(self) -> dict[str, str]:
        return {f"assistant-{n}": f"http://{HOST}:{port}" for n, port in enumerate(self.replica_ports, start=1)}

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def commands(self) -> dict[str, list[str]]:
        """Each service's `rlhf` arguments, by name."""
        p = self.plan
        numbered = (("worker", p.workers, ["streams", "worker"]), ("trainer", p.trainers, ["trainer", "run"]))
        services = {f"{name}-{n}": args for name, count, args in numbered for n in range(1, count + 1)}
        services["sink"] = ["sink", "run"]
        services |= {f"decider-{n}": ["decider", "run"] for n in range(1, p.deciders + 1)}
        services |= {f"assistant-{n}": ["serve", "--port", str(port)] for n, port in enumerate(self.replica_ports, start=1)}
        return services

    def up(self, timeout: float = 300.0, prepare: Callable[[], None] | None = None) -> None:
        """Start Kafka, create the topics, register the starting policy, `prepare()` (the demo deploys
        it to an engine there), start every service; return when the replicas, the dashboard and the
        balancer answer, within `timeout` seconds of the services' start (ServiceError naming the logs
        if not)."""
        _require_free(self.plan.port)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.run_dir / "stack.env", "".join(f"{k}={v}\n" for k, v in self.wiring.items()))
        self.broker.up()
        create_topics(self.settings.kafka)
        ensure_base_policy(self.settings)  # here, once: replicas starting together would race to register it
        if prepare is not None:
            prepare()
        for name, args in self.commands().items():
            self.supervisor.start(name, *args)
        upstreams = [url.removeprefix("http://") for url in self.replica_urls.values()]
        balancer = [sys.executable, "-m", "devtools.balancer", "--host", HOST, "--port", str(self.plan.port), *upstreams]
        self.supervisor.start_program("balancer", balancer)
        deadline = time.monotonic() + timeout  # for the whole start, not each service
        for url in [*self.replica_urls.values(), self.dashboard_url, self.url]:
            self.supervisor.wait_http(f"{url}/healthz", max(1.0, deadline - time.monotonic()))

    def describe(self) -> str:
        """Where everything is, for a person."""
        replicas = "  ".join(f"{name} {url}" for name, url in self.replica_urls.items())
        return "\n".join(
            [
                f"  assistant:  {self.url}/  (balancer over {replicas})",
                f"  dashboard:  {self.dashboard_url}/",
                f"  kafka:      {self.broker.bootstrap_servers}",
                f"  services:   {', '.join(self.running())}",
                f"  logs:       {self.supervisor.log_dir}",
                f"  other rlhf commands reach it with: set -a; . {self.run_dir / 'stack.env'}; set +a",
            ]
        )

    def running(self) -> list[str]:
        """Names of the services whose process is alive, broker nodes included."""
        alive = [name for name in self.supervisor.services if self.pid(name) is not None]
        return [*(f"kafka-{n.node_id}" for n in self._nodes() if n.pid() is not None), *alive]

    def pid(self, name: str) -> int | None:
        proc = self.supervisor.services[name].proc if name in self.supervisor.services else None
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one service by name (`trainer-1`, `assistant-2`, `balancer`, `sink`), or SIGKILL a
        broker node (`kafka-1`)."""
        node = next((n for n in self._nodes() if name == f"kafka-{n.node_id}"), None)
        if node is not None:
            node.kill()
        elif name in self.supervisor.services:
            self.supervisor.kill(name, sig)
        else:
            raise ValueError(f"no service {name!r} in this stack: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [*(f"kafka-{n.node_id}" for n in self._nodes()), *self.supervisor.services]

    def check(self) -> list[str]:
        """Start again whatever died (a broker node included); the names started."""
        restarted = self.supervisor.check()
        down = [f"kafka-{n.node_id}" for n in self._nodes() if n.pid() is None]
        if down:
            log.warning("%s not running; starting again", ", ".join(down))
            self.broker.up()
        return [*down, *restarted]

    def watch(self, stop: threading.Event | None = None, every_s: float = 1.0) -> None:
        """Supervise until `stop` is set (forever without one: Ctrl-C ends it)."""
        stop = stop or threading.Event()
        while not stop.wait(every_s):
            for name in self.check():
                print(f"restarted {name} (log {self.supervisor.log_dir / name}.log)", flush=True)

    def down(self) -> None:
        self.supervisor.stop_all()
        self.broker.down()

    def _nodes(self) -> list[LocalBroker]:
        return self.broker.nodes if isinstance(self.broker, LocalCluster) else [self.broker]

    def _wiring(self, own: Settings) -> dict[str, str]:
        values = {
            "RLHF_HOME": str(self.run_dir.resolve() / "state"),
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "RLHF_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",  # the stack's own brokers, on loopback
            "RLHF_CLICKHOUSE__DASHBOARD_PORT": str(self.dashboard_port),  # the decider asks the sink there
            "RLHF_ASSISTANT__REPLICAS": str(self.plan.assistants),
        }
        if self.plan.brokers > 1:  # as `rlhf kafka up --brokers N` advises: a node may go without losing a write
            values["RLHF_KAFKA__REPLICATION_FACTOR"] = str(min(3, self.plan.brokers))
            values["RLHF_KAFKA__MIN_INSYNC_REPLICAS"] = str(min(2, self.plan.brokers))
        if self.plan.assistants > 1 and own.assistant.feedback_secret is None:
            values["RLHF_ASSISTANT__FEEDBACK_SECRET"] = _kept_secret(self.run_dir / "feedback-secret")
        return values


def _local_kafka(data_dir: Path, brokers: int, version: str) -> LocalBroker | LocalCluster:
    """The stack's brokers on free ports, the same ones again when its directory is reused (a KRaft
    quorum's log remembers where its voters listen)."""
    file = data_dir / "ports.json"
    ports = json.loads(file.read_text()) if file.is_file() else []
    if len(ports) != 2 * brokers:  # clients' then controllers' ports
        ports = [free_port() for _ in range(2 * brokers)]
        data_dir.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(ports))
    if brokers == 1:
        return LocalBroker(data_dir, port=ports[0], controller_port=ports[1], version=version)
    return LocalCluster(data_dir, tuple(ports[:brokers]), tuple(ports[brokers:]), version)


def _kept_secret(file: Path) -> str:
    """A secret made once per run directory, so feedback tokens outlive a restart of the stack."""
    if not file.is_file():
        _write_private(file, secrets.token_urlsafe(32))
    return file.read_text().strip()


def _write_private(file: Path, text: str) -> None:
    """Write a file only its owner may read (it may hold a secret)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _require_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the balancer will: a closed port's TIME_WAIT is no obstacle
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise ConfigError(f"port {port} (the balancer's, --port): cannot listen there ({exc.strerror})") from None
