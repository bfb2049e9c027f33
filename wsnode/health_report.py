"""The body of a node's /health (pure): overall, per-shard and pub/sub states from what the node measured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def overall(states: Sequence[bool]) -> str:
    """UP when every shard is, DOWN when none is, DEGRADED in between."""
    return "UP" if all(states) else "DOWN" if not any(states) else "DEGRADED"


def health_details(*, up: bool, node_id: str, pinged: Sequence[bool], live: Sequence[bool], redis_ok: bool,
                   sessions: int, draining: bool) -> dict[str, Any]:
    """/health's details. `pinged` and `live` hold one state per shard (a Cluster counts as one shard): whether it
    answered PING, and whether the node's subscription on it is confirmed. A lone Redis also waits for `redis_ok`
    (the sessions registered again after a gap); with several shards each is reported on its own."""
    several = len(pinged) > 1
    details: dict[str, Any] = {
        "status": "UP" if up else "DOWN", "node": node_id,
        "redis": overall(pinged if several else [pinged[0] and redis_ok]),
        "pubsub": overall(live), "sessions": sessions, "draining": draining}
    if several:
        details["shards"] = [{"shard": index, "redis": "UP" if ping else "DOWN", "pubsub": "UP" if sub else "DOWN"}
                             for index, (ping, sub) in enumerate(zip(pinged, live, strict=True))]
    return details
