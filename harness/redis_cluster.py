"""A real Redis Cluster on loopback for the tests and the benchmarks: Debian's redis-server in cluster mode, joined
by `redis-cli --cluster create`, ready once every node says `cluster_state:ok` and every replica is in sync.

Each node gets two free ports of its own (client and cluster bus, `cluster-port`) instead of the default bus at
port + 10000, which can fall outside the port range or on a port someone else holds.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from harness import (
    POLL_INTERVAL_S,
    ManagedProcess,
    ProcessFailed,
    ProcessGroup,
    free_port,
    redis_answers,
    redis_server_binary,
)

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
# Two seconds to call a master failed keeps failover tests short; the default (15 s) suits a real network.
NODE_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class ClusterNode:
    """One cluster node as CLUSTER NODES lists it."""

    node_id: str
    port: int
    role: str  # "master" or "slave"
    master_id: str | None  # a replica's master; None for a master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges a master serves


@dataclass(frozen=True)
class ClusterInfo:
    """Where the tests' Redis Cluster answers."""

    host: str
    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """One node's URL: clients discover the rest from it."""
        return f"redis://{self.host}:{self.ports[0]}/0"

    @property
    def seeds(self) -> str:
        """Every node, comma-separated, as a seed list."""
        return ",".join(f"redis://{self.host}:{port}/0" for port in self.ports)


def redis_cli_binary() -> str:
    """The redis-cli executable (Debian's redis-tools, which redis-server depends on)."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise ProcessFailed("redis-cli is not installed (run scripts/ensure-redis-server)")
    return binary


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """CLUSTER NODES' lines: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        if "fail" in flags or "noaddr" in flags:
            continue
        port = int(fields[1].split("@")[0].rpartition(":")[2])
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated, not served yet
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        role = "master" if "master" in flags else "slave"
        nodes.append(ClusterNode(fields[0], port, role, None if fields[3] == "-" else fields[3], tuple(slots)))
    return nodes


class OwnCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, every node a child process."""

    def __init__(self, log_dir: Path, *, masters: int = 3, replicas: int = 1) -> None:
        if masters < 3:
            raise ValueError(f"redis-cli --cluster create needs at least 3 masters, not {masters}")
        self.log_dir = log_dir
        self.masters = masters
        self.replicas = replicas
        self.group = ProcessGroup(log_dir / "logs")
        self.nodes: dict[int, ManagedProcess] = {}

    @property
    def info(self) -> ClusterInfo:
        return ClusterInfo(HOST, tuple(self.nodes))

    def start(self, *, timeout_s: float = 30.0) -> ClusterInfo:
        binary = redis_server_binary()
        for index in range(self.masters * (1 + self.replicas)):
            port, bus = free_port(), free_port()
            directory = self.log_dir / f"node-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            # No persistence and no diskless-sync delay: a replica is in sync a moment after it is attached.
            self.nodes[port] = self.group.start(f"redis-cluster-{port}", [
                binary, "--bind", HOST, "--port", str(port), "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(directory / "nodes.conf"), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--dir", str(directory), "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"])
        deadline = time.monotonic() + timeout_s
        for port, proc in self.nodes.items():
            self._wait(lambda port=port: redis_answers(HOST, port), proc, deadline, f"node {port} answers PING")
        create = subprocess.run(
            [redis_cli_binary(), "--cluster", "create", *(f"{HOST}:{port}" for port in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s, check=False)
        if create.returncode != 0:
            raise ProcessFailed(f"redis-cli --cluster create failed ({create.returncode}):\n{create.stdout}"
                                f"\n{create.stderr}\n{self.group.logs()}")
        self.wait_ready(timeout_s=max(1.0, deadline - time.monotonic()))
        return self.info

    def _wait(self, ready: Callable[[], bool], proc: ManagedProcess | None, deadline: float, what: str) -> None:
        while not ready():
            if proc is not None and not proc.alive():
                raise ProcessFailed(f"{proc.name} exited before {what}:\n{proc.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise ProcessFailed(f"Redis Cluster: no {what} in time:\n{self.group.logs()}")
            time.sleep(POLL_INTERVAL_S)

    def wait_ready(self, *, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok with all slots assigned, all agree on who replicates whom,
        only live nodes serve slots (after a kill: the failover is over), and every replica is in sync."""
        self._wait(self.ready, None, time.monotonic() + timeout_s, "ready cluster")

    def ready(self) -> bool:
        live = [port for port, proc in self.nodes.items() if proc.alive()]
        # `--cluster create` returns before every node has heard, by gossip, which nodes became replicas.
        return all(self.state_ok(port) for port in live) and self.views_agree() \
            and all(self.replica_in_sync(port) for port in live if self._own_role(port) == "slave")

    def _own_role(self, port: int) -> str:
        try:
            return str(self._info(port, "replication").get("role"))
        except (OSError, redis.RedisError):
            return "unknown"

    def views_agree(self) -> bool:
        """Every live node lists the same nodes with the same roles, and each one's own role matches."""
        views = []
        for port, proc in self.nodes.items():
            if not proc.alive():
                continue
            try:
                nodes = parse_cluster_nodes(self._command(port, "CLUSTER", "NODES"))
            except (OSError, redis.RedisError):
                return False
            views.append(sorted((node.port, node.role, node.master_id, node.slots) for node in nodes))
            if any(node.port == port and node.role != self._own_role(port) for node in nodes):
                return False
            if any(node.slots and not self.nodes[node.port].alive() for node in nodes if node.port in self.nodes):
                return False  # a dead master not yet marked failed: its replica is not promoted yet
        return bool(views) and all(view == views[0] for view in views)

    def _command(self, port: int, *args: str) -> str:
        client = redis.Redis(host=HOST, port=port, socket_timeout=2.0, decode_responses=True)
        try:
            return str(client.execute_command(*args))
        finally:
            client.close()

    def _info(self, port: int, section: str) -> dict[str, str]:
        client = redis.Redis(host=HOST, port=port, socket_timeout=2.0, decode_responses=True)
        try:
            return {key: str(value) for key, value in client.info(section).items()}
        finally:
            client.close()

    def state_ok(self, port: int) -> bool:
        try:
            info = self._info(port, "cluster")
            text = self._command(port, "CLUSTER", "INFO")
        except (OSError, redis.RedisError):  # a node still starting or loading: readiness is polled
            return False
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return info.get("cluster_enabled") == "1" and fields.get("cluster_state") == "ok" \
            and fields.get("cluster_slots_assigned") == str(CLUSTER_SLOTS) \
            and int(fields.get("cluster_known_nodes", "0")) >= len([p for p in self.nodes.values() if p.alive()])

    def replica_in_sync(self, port: int) -> bool:
        try:
            info = self._info(port, "replication")
        except (OSError, redis.RedisError):
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up" \
            and info.get("master_sync_in_progress") == "0"

    def topology(self) -> list[ClusterNode]:
        """CLUSTER NODES as a live node sees it."""
        for port, proc in self.nodes.items():
            if proc.alive():
                with contextlib.suppress(OSError, redis.RedisError):
                    return parse_cluster_nodes(self._command(port, "CLUSTER", "NODES"))
        raise ProcessFailed(f"no cluster node answers CLUSTER NODES:\n{self.group.logs()}")

    def master_ports(self) -> list[int]:
        return sorted(node.port for node in self.topology() if node.role == "master" and node.slots)

    def reshard(self, source_port: int, target_port: int, slots: int, *, timeout_s: float = 60.0) -> None:
        """Move `slots` slots, keys included, from one master to another with `redis-cli --cluster reshard`, as an
        operator would (the clients see MOVED and ASK meanwhile); returns once the cluster is ready again."""
        ids = {node.port: node.node_id for node in self.topology()}
        run = subprocess.run(
            [redis_cli_binary(), "--cluster", "reshard", f"{HOST}:{source_port}", "--cluster-from", ids[source_port],
             "--cluster-to", ids[target_port], "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s, check=False)
        if run.returncode != 0:
            raise ProcessFailed(f"redis-cli --cluster reshard failed ({run.returncode}):\n{run.stdout[-4000:]}"
                                f"\n{run.stderr}")
        self.wait_ready(timeout_s=timeout_s)

    def slot_count(self, port: int) -> int:
        """How many slots the master at `port` serves."""
        return sum(last - first + 1 for node in self.topology() if node.port == port for first, last in node.slots)

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes[port].kill()

    def stop(self) -> None:
        self.group.stop_all()


@contextlib.contextmanager
def provide_redis_cluster(log_dir: Path, *, masters: int = 3, replicas: int = 1) -> Iterator[OwnCluster]:
    """A new Redis Cluster on free loopback ports, stopped on exit."""
    cluster = OwnCluster(log_dir, masters=masters, replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
