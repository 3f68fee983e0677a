"""Real Apache Kafka 4.x brokers (KRaft) on 127.0.0.1, without Docker: one node, or a cluster of
several (`LocalCluster`), plaintext or secured (SASL_SSL).

`rlhf kafka up [--secure] [--brokers 3]|down|status`. The official runtime jars are resolved from
Maven Central with the machine's Maven (cached under ~/.cache/rlhf-stream/kafka-VERSION), storage is
formatted once in a persistent data directory, each JVM runs detached with its log in
DATA/broker.log, and `up` returns only when the brokers answer a metadata request.

Secured (`sasl=`): the client listener is SASL_SSL, with one user accepted by SCRAM-SHA-256,
SCRAM-SHA-512 (credentials written into the metadata log when storage is formatted) and PLAIN,
and TLS from a local CA (devtools/kafka_tls.py); brokers talk to each other the same way. Only the
controller listener, on loopback, is plaintext.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import BrokerError
from core.settings import cache_home
from devtools.kafka_tls import TlsFiles, ensure_tls

FILES = Path(__file__).parent / "kafka"  # pom.xml (the runtime jars) and log4j2.yaml (the broker log)


def resolve_jars(version: str) -> Path:
    """Directory holding the broker's runtime jars, downloading them with Maven on first use."""
    home = cache_home() / f"kafka-{version}"
    lib = home / "lib"
    if (lib / f"kafka_2.13-{version}.jar").is_file():
        return lib
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise BrokerError("the local broker needs Java 17+ and Maven on PATH (apt-get install openjdk-17-jre-headless maven)")
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(FILES / "pom.xml", home / "pom.xml")
    staging = home / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        "mvn",
        "-B",
        "-q",
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    done = subprocess.run(cmd, cwd=home, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"could not resolve Kafka {version} jars with Maven:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)  # atomic: a half-downloaded lib/ never looks complete
    return lib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Sasl:
    """The secured listener's one user (its password is a plain str here: the broker's config needs it)."""

    username: str
    password: str


@dataclass(frozen=True)
class LocalBroker:
    """One node: its ports, its data directory, the Kafka version, and, in a cluster, its id and
    the controller quorum (`voters`: (node id, controller port) of every node)."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    version: str = "4.1.1"
    node_id: int = 1
    voters: tuple[tuple[int, int], ...] = ()
    sasl: Sasl | None = None
    tls_dir: Path | None = None  # default DATA/tls; a cluster shares one CA

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def _properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def tls(self) -> TlsFiles | None:
        return None if self.sasl is None else TlsFiles(self.tls_dir or self.data_dir / "tls")

    def client_config(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """confluent-kafka settings that reach this broker (as its user, when secured)."""
        config = {"bootstrap.servers": self.bootstrap_servers}
        if self.sasl is not None and self.tls is not None:
            config |= {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": mechanism,
                "sasl.username": self.sasl.username,
                "sasl.password": self.sasl.password,
                "ssl.ca.location": str(self.tls.ca),
            }
        return config

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the properties hold the secured listener's password
        nodes = len(self.voters) or 1
        listener = "PLAINTEXT" if self.sasl is None else "SASL_SSL"
        quorum = (
            {"controller.quorum.voters": ",".join(f"{n}@127.0.0.1:{p}" for n, p in self.voters)}
            if self.voters
            else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"}
        )
        internal_rf, internal_isr = str(min(3, nodes)), str(min(2, nodes))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"{listener}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"{listener}://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": internal_rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": internal_rf,
            "transaction.state.log.min.isr": internal_isr,
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": internal_rf,
            "share.coordinator.state.topic.min.isr": internal_isr,
            "group.initial.rebalance.delay.ms": "0",
            **self._security_properties(),
        }
        self._properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        os.chmod(self._properties, 0o600)
        shutil.copy(FILES / "log4j2.yaml", self.data_dir / "log4j2.yaml")

    def _security_properties(self) -> dict[str, str]:
        if self.sasl is None or self.tls is None:
            return {}
        ensure_tls(self.tls.directory)
        user, password = self.sasl.username, self.sasl.password
        scram = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'
        plain = (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{user}" password="{password}" '
            f'user_{user}="{password}";'
        )
        return {
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.plain.sasl.jaas.config": plain,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca),
            "ssl.client.auth": "none",
        }

    def _java(self, lib: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def _format_once(self, lib: Path, cluster_id: str | None = None) -> None:
        if (self.data_dir / "logs" / "meta.properties").is_file():
            return
        cluster_id = cluster_id or new_cluster_id(lib)
        fmt = self._java(lib, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self._properties))
        if not self.voters:
            fmt.append("--standalone")
        if self.sasl is not None:  # SCRAM credentials live in the metadata log, written here
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                fmt += ["--add-scram", f"{mechanism}=[name={self.sasl.username},password={self.sasl.password}]"]
        done = subprocess.run(fmt, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"formatting {self.data_dir} failed: {done.stdout}{done.stderr}")

    def pid(self) -> int | None:
        """PID of the running broker, or None (a stale pid file is ignored)."""
        try:
            pid = int(self._pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None
        return pid

    def is_ready(self, timeout: float = 2.0, brokers: int = 1) -> bool:
        """Does it answer a metadata request naming at least `brokers` brokers?"""
        from confluent_kafka.admin import AdminClient

        from core.kafka_log import client_logging

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout):
                pass
            admin = AdminClient(
                {**self.client_config(), **client_logging(self.bootstrap_servers), "socket.timeout.ms": int(timeout * 1000)}
            )
            return len(admin.list_topics(timeout=timeout).brokers) >= brokers
        except Exception:
            return False

    def up(self, timeout: float = 120.0) -> None:
        """Start the broker if it is not running and wait until it serves metadata."""
        if self.pid() is not None:
            if self.wait_ready(timeout):
                return
            raise BrokerError(
                f"broker pid {self.pid()} is running but not answering on {self.bootstrap_servers}; see {self.log_file}"
            )
        proc = self.start(resolve_jars(self.version))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"broker exited with code {proc.returncode}; see {self.log_file} and {self.data_dir / 'broker.stdout'}"
                )
            if self.is_ready():
                return
            time.sleep(0.5)
        raise BrokerError(f"broker did not become ready on {self.bootstrap_servers} within {timeout:.0f}s; see {self.log_file}")

    def start(self, lib: Path, cluster_id: str | None = None) -> subprocess.Popen:
        """Write the config, format once, and launch the JVM detached; does not wait."""
        self._write_config()
        self._format_once(lib, cluster_id)
        with open(self.data_dir / "broker.stdout", "ab") as out:
            proc = subprocess.Popen(
                self._java(lib, "kafka.Kafka", str(self._properties)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file.write_text(str(proc.pid))
        return proc

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready():
                return True
            time.sleep(0.5)
        return False

    def down(self, timeout: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`). False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, for fault drills."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)

    def console_consumer(self, lib: Path | None = None) -> list[str]:
        """Command line of Kafka's own console consumer (an independent client for interop tests)."""
        lib = lib or resolve_jars(self.version)
        return self._java(lib, "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", self.bootstrap_servers)


def new_cluster_id(lib: Path) -> str:
    done = subprocess.run(
        ["java", "-cp", f"{lib}/*", "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a zombie does not count as alive.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())
