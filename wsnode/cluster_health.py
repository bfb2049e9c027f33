"""/health's view of a Redis Cluster: each master the node's cluster client knows of, and the cluster's state.

One master down costs only the users of its slots (their pushes and upgrades get 503), so the node stays UP while
any master answers; the details name each master and what CLUSTER INFO says on one that answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisError

from wsnode.redis_connect import ClusterClients

_FIELDS = {"cluster_state": "state", "cluster_slots_ok": "slots_ok", "cluster_slots_fail": "slots_fail",
           "cluster_size": "masters", "cluster_known_nodes": "known_nodes"}


async def master_pings(cluster: ClusterClients, timeout_s: float) -> list[tuple[ClusterNode, bool]]:
    """Each master the cluster client knows of, and whether it answered PING within `timeout_s`."""
    data = cluster.data
    try:
        await asyncio.wait_for(data.initialize(), timeout_s)  # at once when already done
    except (RedisError, OSError, TimeoutError):
        return []
    primaries = data.get_primaries()
    answers = await asyncio.gather(*(asyncio.wait_for(data.execute_command("PING", target_nodes=node), timeout_s)
                                     for node in primaries), return_exceptions=True)
    return [(node, not isinstance(answer, BaseException)) for node, answer in zip(primaries, answers, strict=True)]


async def cluster_state(cluster: ClusterClients, timeout_s: float, answering: list[ClusterNode]) -> dict[str, Any]:
    """What a master that answers says of the cluster (CLUSTER INFO): state, slots served, masters, known nodes."""
    if not answering:
        return {"state": "unknown", "error": "no master answers"}
    try:
        info = await asyncio.wait_for(cluster.data.execute_command("CLUSTER INFO", target_nodes=answering[0]),
                                      timeout_s)
    except (RedisError, OSError, TimeoutError) as exc:
        return {"state": "unknown", "error": str(exc)[:200]}
    out: dict[str, Any] = {name: _number(info.get(field)) for field, name in _FIELDS.items()}
    out["seeds"] = len(cluster.seeds)
    return out


def _number(value: Any) -> Any:
    """CLUSTER INFO's digits as a number (redis-py leaves them text)."""
    return int(value) if isinstance(value, str) and value.isdigit() else value
