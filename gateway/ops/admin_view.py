"""The admin page's data, pure: who may read it, node figures from their /health and /metrics, the JSON document.

The I/O (Consul, the nodes, static files) is in `admin.py`; this module turns what was fetched into the document
`GET /actuator/admin/data` answers, and is table-tested.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.discovery.consul_build import aggregate_status

Labels = tuple[tuple[str, str], ...]

# Node counters (prometheus_client adds `_total`) whose per-second rates the page shows, by the name it uses.
NODE_COUNTERS = {
    "messages_out": "wsnode_messages_out_total",
    "messages_in": "wsnode_messages_in_total",
    "pushes": "wsnode_pushes_total",
    "connects": "wsnode_connects_total",
}
NO_TOKEN_MESSAGE = (
    "management data needs a token: set `wsgate: {admin-token: <secret>}` in routes.yaml "
    "(or listen on loopback only, e.g. --host 127.0.0.1)"
)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Whether a data request may be answered: HTTP status (200, 401 or 403) and the reason when not."""

    status: int
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


def loopback_only(hosts: Sequence[str]) -> bool:
    """True when every listening address is a loopback one (and there is at least one)."""
    if not hosts:
        return False
    for host in hosts:
        try:
            if not ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback:
                return False
        except ValueError:
            if host != "localhost":
                return False
    return True


def decide_access(token: str | None, authorization: str | None, *, listen_hosts: Sequence[str]) -> AccessDecision:
    """The admin token wants `Authorization: Bearer <token>`; without one only a loopback-only gateway answers."""
    if not token:
        return AccessDecision(200) if loopback_only(listen_hosts) else AccessDecision(403, NO_TOKEN_MESSAGE)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return AccessDecision(401, "missing or wrong admin token (Authorization: Bearer <token>)")
    return AccessDecision(200)


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum of every sample per metric name in a Prometheus text exposition; unreadable lines are skipped."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            rest = rest.rpartition("}")[2]
        else:
            name, _, rest = line.partition(" ")
        parts = rest.split()
        if not name.strip() or not parts:
            continue
        name = name.strip()
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isfinite(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One reading of a node: its /health fields and counter totals, taken at `taken_at_s` (monotonic)."""

    taken_at_s: float
    node: str | None = None
    health: str | None = None
    draining: bool = False
    sessions: int | None = None
    counters: Mapping[str, float] = field(default_factory=dict)


def node_sample(taken_at_s: float, health: object, metrics_text: str | None) -> NodeSample:
    """A sample from a node's /health JSON (any shape) and /metrics text (None when it did not answer)."""
    info: Mapping[str, Any] = health if isinstance(health, Mapping) else {}
    sums = parse_prometheus(metrics_text) if metrics_text is not None else {}
    sessions = info.get("sessions")
    if not isinstance(sessions, int) or isinstance(sessions, bool):
        gauge = sums.get("wsnode_sessions")
        sessions = int(gauge) if gauge is not None else None
    node = info.get("node")
    health_status = info.get("status")
    return NodeSample(
        taken_at_s=taken_at_s,
        node=node if isinstance(node, str) else None,
        health=health_status if isinstance(health_status, str) else None,
        draining=info.get("draining") is True,
        sessions=sessions,
        counters={key: sums[name] for key, name in NODE_COUNTERS.items() if name in sums},
    )


def rates_per_s(previous: NodeSample | None, current: NodeSample) -> dict[str, float]:
    """Per-second rates of the counters between two samples (none for the first; a reset counts from zero)."""
    if previous is None or current.taken_at_s <= previous.taken_at_s:
        return {}
    elapsed_s = current.taken_at_s - previous.taken_at_s
    rates: dict[str, float] = {}
    for key, value in current.counters.items():
        before = previous.counters.get(key)
        if before is None:
            continue
        delta = value - before if value >= before else value  # the node restarted: its counters began again
        rates[key] = round(delta / elapsed_s, 2)
    return rates


def instance_tunnels(totals: Mapping[tuple[str, Labels], float]) -> tuple[dict[str, int], dict[str, int]]:
    """(active tunnels, upgrades so far) per instance address from the gateway's aggregated metric totals."""
    active: dict[str, int] = {}
    upgrades: dict[str, int] = {}
    for (name, labels), value in totals.items():
        target = active if name == "wsgate_instance_tunnels" else upgrades if name == "wsgate_upgrades_total" else None
        if target is None:
            continue
        instance = dict(labels).get("instance")
        if instance is not None:
            target[instance] = target.get(instance, 0) + int(value)
    return active, upgrades


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service as the admin page lists it."""

    instance_id: str
    host: str
    port: int
    status: str  # passing | warning | critical (Consul's), or "static" without Consul
    node_id: str | None = None
    checks: tuple[tuple[str, str], ...] = ()  # (check name, status)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def consul_instances(entries: object) -> list[Instance]:
    """Every instance in a `/v1/health/service/<name>` answer, whatever its status; malformed entries skipped."""
    found: list[Instance] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("Service"), Mapping):
            continue
        service: Mapping[str, Any] = entry["Service"]
        node = entry.get("Node")
        host = service.get("Address") or (node.get("Address") if isinstance(node, Mapping) else None)
        port = service.get("Port")
        if not isinstance(host, str) or not host or not isinstance(port, int) or isinstance(port, bool):
            continue
        if not 0 < port < 65536:
            continue
        raw_checks = entry.get("Checks")
        checks = [c for c in raw_checks if isinstance(c, Mapping)] if isinstance(raw_checks, list) else []
        meta = service.get("Meta")
        node_id = meta.get("node_id") if isinstance(meta, Mapping) else None
        found.append(Instance(
            instance_id=str(service.get("ID") or f"{host}:{port}"), host=host, port=port,
            status=aggregate_status(checks if isinstance(raw_checks, list) else [{"Status": "critical"}]),
            node_id=node_id if isinstance(node_id, str) else None,
            checks=tuple((str(c.get("Name") or c.get("CheckID") or "check"), str(c.get("Status"))) for c in checks),
        ))
    return sorted(found, key=lambda i: (i.host, i.port, i.instance_id))


@dataclass(frozen=True, slots=True)
class NodeReading:
    """What the last poll of one instance gave: a sample and its rates, or the error when it did not answer."""

    sample: NodeSample | None
    rates: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None


def instance_document(instance: Instance, *, in_pool: bool, active: Mapping[str, int], upgrades: Mapping[str, int],
                      reading: NodeReading | None) -> dict[str, object]:
    """One instance's entry of the admin document."""
    stats: dict[str, object] | None = None
    if reading is not None:
        sample = reading.sample
        stats = {
            "reachable": sample is not None,
            "error": reading.error,
            "node": sample.node if sample else None,
            "health": sample.health if sample else None,
            "draining": sample.draining if sample else False,
            "sessions": sample.sessions if sample else None,
            "rates": dict(reading.rates),
        }
    return {
        "id": instance.instance_id,
        "address": instance.address,
        "status": instance.status,
        "node_id": instance.node_id,
        "checks": [{"name": name, "status": status} for name, status in instance.checks],
        "in_pool": in_pool,
        "active_tunnels": active.get(instance.address, 0),
        "upgrades": upgrades.get(instance.address, 0),
        "stats": stats,
    }


def gateway_summary(totals: Mapping[tuple[str, Labels], float], discovery: Mapping[str, object]) -> dict[str, object]:
    """The gateway-wide figures: open connections, active tunnels, upgrades and requests so far, discovery."""

    def total(name: str) -> int:
        return int(sum(value for (series, _), value in totals.items() if series == name))

    return {
        "open_connections": total("wsgate_open_connections"),
        "active_tunnels": total("wsgate_active_tunnels"),
        "upgrades": total("wsgate_upgrades_total"),
        "requests": total("wsgate_requests_total"),
        "discovery": dict(discovery),
    }


def cluster_summary(services: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """Sums over the instances that answered: sessions and message rates of the whole cluster."""
    sessions = 0
    rates: dict[str, float] = {}
    answering = 0
    for service in services:
        for instance in service.get("instances", ()):  # type: ignore[attr-defined]
            stats = instance.get("stats")
            if not stats or not stats.get("reachable"):
                continue
            answering += 1
            sessions += stats.get("sessions") or 0
            for key, value in stats.get("rates", {}).items():
                rates[key] = round(rates.get(key, 0.0) + value, 2)
    return {"nodes_answering": answering, "sessions": sessions, "rates": rates}
