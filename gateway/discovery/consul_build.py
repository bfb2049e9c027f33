"""Consul's `/v1/health/service/<name>` JSON turned into endpoints (pure, table-tested like Traefik's builder).

An entry's address is `Service.Address`, falling back to `Node.Address`; its status is the worst of its checks
(critical, then warning, then passing; `maintenance` counts as critical). With `passing_only` only passing
instances are kept, otherwise warning ones too. The weight is `Weights.Passing` (or `Weights.Warning`), default 1;
an instance with weight 0 takes no traffic. Malformed entries are skipped, never raised on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.discovery.base import Endpoint

_RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 2}


def aggregate_status(checks: Iterable[Mapping[str, Any]]) -> str:
    """The worst status among `checks` (passing when there are none); unknown statuses count as critical."""
    worst = 0
    for check in checks:
        status = str(check.get("Status", "critical")) if isinstance(check, Mapping) else "critical"
        worst = max(worst, _RANK.get(status, 2))
    return ("passing", "warning", "critical")[worst]


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(item) for item in value)


def _meta(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def _weight(service: Mapping[str, Any], status: str) -> int:
    weights = service.get("Weights")
    if not isinstance(weights, Mapping):
        return 1
    raw = weights.get("Passing" if status == "passing" else "Warning", 1)
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else 1


def build_endpoint(entry: Mapping[str, Any], *, passing_only: bool = True) -> Endpoint | None:
    """One health entry as an endpoint, or None when it is unhealthy, weightless or malformed."""
    service = entry.get("Service")
    node = entry.get("Node")
    if not isinstance(service, Mapping):
        return None
    checks = entry.get("Checks") or []
    status = aggregate_status(checks if isinstance(checks, list) else [{"Status": "critical"}])
    if status == "critical" or (passing_only and status != "passing"):
        return None
    host = service.get("Address") or (node.get("Address") if isinstance(node, Mapping) else None)
    port = service.get("Port")
    if not isinstance(host, str) or not host or not isinstance(port, int) or isinstance(port, bool):
        return None
    if not 0 < port < 65536:
        return None
    weight = _weight(service, status)
    if weight == 0:
        return None
    return Endpoint(host=host, port=port, instance_id=str(service.get("ID") or f"{host}:{port}"), weight=weight,
                    tags=_strings(service.get("Tags")), meta=_meta(service.get("Meta")))


def build_endpoints(entries: object, *, passing_only: bool = True) -> tuple[Endpoint, ...]:
    """Every usable instance in a health response, ordered by (host, port, id) so that hashing is stable."""
    if not isinstance(entries, list):
        return ()
    endpoints = {e for e in (build_endpoint(x, passing_only=passing_only) for x in entries if isinstance(x, Mapping))
                 if e is not None}
    return tuple(sorted(endpoints, key=lambda e: (e.host, e.port, e.instance_id)))
