"""A local Kafka cluster: several KRaft nodes (each broker and controller) on loopback ports, one
data directory each, a static controller quorum of all of them, and one cluster id.

    cluster = LocalCluster.consecutive(Path("kafka-3"), size=3, port=9092)   # 9092/9093, 9094/9095, 9096/9097
    cluster.up()                         # returns when every node answers and sees all three brokers
    cluster.bootstrap_servers            # "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    cluster.nodes[1].kill()              # SIGKILL one node (a drill); cluster.up() starts it again

With three nodes the internal topics (offsets, transactions) get replication 3 and min ISR 2, so
consumer groups survive a node's loss; the project's own topics follow `kafka.replication_factor`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core.errors import BrokerError
from devtools.kafka_local import LocalBroker, Sasl, new_cluster_id, resolve_jars


@dataclass(frozen=True)
class LocalCluster:
    data_dir: Path
    ports: tuple[int, ...]
    controller_ports: tuple[int, ...]
    version: str = "4.1.1"
    sasl: Sasl | None = None

    @classmethod
    def consecutive(cls, data_dir: Path, size: int, port: int, version: str = "4.1.1", sasl: Sasl | None = None) -> LocalCluster:
        """Node i listens on port + 2i (clients) and port + 2i + 1 (controller)."""
        return cls(
            data_dir, tuple(port + 2 * i for i in range(size)), tuple(port + 2 * i + 1 for i in range(size)), version, sasl
        )

    @property
    def nodes(self) -> list[LocalBroker]:
        voters = tuple((i + 1, c) for i, c in enumerate(self.controller_ports))
        return [
            LocalBroker(
                self.data_dir / f"node-{i + 1}",
                port=p,
                controller_port=c,
                version=self.version,
                node_id=i + 1,
                voters=voters,
                sasl=self.sasl,
                tls_dir=self.data_dir / "tls",
            )
            for i, (p, c) in enumerate(zip(self.ports, self.controller_ports, strict=True))
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def client_config(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        return {**self.nodes[0].client_config(mechanism), "bootstrap.servers": self.bootstrap_servers}

    def up(self, timeout: float = 180.0) -> None:
        """Start every node not running (a quorum needs a majority, so all start before any is
        waited for), then wait until each answers with the whole cluster in its metadata."""
        lib = resolve_jars(self.version)
        cluster_id = self._cluster_id(lib)
        for node in self.nodes:
            if node.pid() is None:
                node.start(lib, cluster_id)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not node.is_ready(brokers=len(self.nodes)):
                if node.pid() is None:
                    raise BrokerError(f"node {node.node_id} exited; see {node.log_file} and {node.data_dir / 'broker.stdout'}")
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"cluster not ready within {timeout:.0f}s: node {node.node_id} on {node.bootstrap_servers}; "
                        f"see {node.log_file}"
                    )
                time.sleep(0.5)

    def down(self) -> bool:
        """Stop every node at once: one by one, the last ones wait out their timeout for a quorum
        that the earlier ones took away (about a minute for three nodes)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return any(list(pool.map(LocalBroker.down, self.nodes)))

    def _cluster_id(self, lib: Path) -> str:
        """One id for all nodes, kept beside them: every node's storage must be formatted with it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        file = self.data_dir / "cluster.id"
        if not file.is_file():
            file.write_text(new_cluster_id(lib))
        return file.read_text().strip()
