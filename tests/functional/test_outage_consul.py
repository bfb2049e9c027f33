"""A Consul outage under a running cluster: the dev agent stopped (SIGTERM) and a fresh one started on its port.

The gateway keeps routing to the last known passing instances while the agent is away and says so on
/actuator/health; the fresh agent knows nothing, the nodes register themselves again, and the gateway follows
changes again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from harness import ManagedProcess
from tests.functional.conftest import Cluster
from tests.wsnode.conftest import eventually, make_token


def _agent(cluster: Cluster) -> ManagedProcess:
    return next(p for p in cluster.procs.processes if p.name.startswith("devconsul") and p.alive())


async def _upgrade_nodes(http: aiohttp.ClientSession, cluster: Cluster, count: int) -> list[str]:
    """Open `count` WebSockets through the gateway one after the other; the node each one landed on."""
    nodes = []
    ws_url = cluster.gateway_url.replace("http://", "ws://") + "/ws-svc/websocket"
    for i in range(count):
        token = make_token(f"user{i}", secret=cluster.secret)
        async with http.ws_connect(ws_url, params={"token": token}) as ws:
            welcome = json.loads((await ws.receive(timeout=5)).data)
            assert welcome["type"] == "welcome", welcome
            nodes.append(welcome["node"])
    return nodes


async def _gateway_health(http: aiohttp.ClientSession, cluster: Cluster) -> tuple[int, dict[str, Any]]:
    # Health details (the discovery component) are management data: they want the admin token.
    async with http.get(f"{cluster.gateway_url}/actuator/health",
                        headers={"Authorization": f"Bearer {cluster.admin_token}"}) as resp:
        return resp.status, await resp.json()


async def _passing_in_agent(http: aiohttp.ClientSession, cluster: Cluster) -> set[str]:
    try:
        async with http.get(f"http://{cluster.consul_addr}/v1/health/service/ws-service?passing=true") as resp:
            entries = await resp.json() if resp.status == 200 else []
    except aiohttp.ClientError:
        return set()
    return {e["Service"]["ID"] for e in entries}


async def test_gateway_routes_through_a_consul_outage_and_follows_changes_after_a_fresh_agent(
        cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        both = {"node-a", "node-b"}

        async def spread() -> bool:
            return set(await _upgrade_nodes(http, cluster, 2)) == both

        await eventually(spread, timeout_s=10)  # discovery has both nodes
        agent = _agent(cluster)
        port = cluster.consul_addr.rpartition(":")[2]
        await asyncio.to_thread(agent.stop)  # SIGTERM: the dev agent keeps no state

        async def discovery_down() -> dict[str, Any] | None:
            status, body = await _gateway_health(http, cluster)
            return body if status == 503 else None

        health = await eventually(discovery_down, timeout_s=10)
        discovery = health["components"]["discovery"]
        assert discovery["status"] == "DOWN" and discovery["errors"], health
        assert discovery["services"] == {"ws-service": 2}  # the last known instances are kept
        # New upgrades still succeed, spread over the last known passing instances.
        assert set(await _upgrade_nodes(http, cluster, 4)) == both
        status, _ = await _gateway_health(http, cluster)
        assert status == 503

        fresh = cluster.procs.python("devconsul-fresh", "devconsul", "--port", port)
        await fresh.wait_http_ready_async(f"http://{cluster.consul_addr}/v1/status/leader")

        async def registered_again() -> bool:
            return await _passing_in_agent(http, cluster) == {"ws-service-node-a", "ws-service-node-b"}

        await eventually(registered_again, timeout_s=15)  # the nodes noticed the agent forgot them

        async def gateway_up() -> bool:
            status, body = await _gateway_health(http, cluster)
            return status == 200 and body["components"]["discovery"]["services"] == {"ws-service": 2}

        await eventually(gateway_up, timeout_s=15)
        # Changes are followed again: a node that leaves stops receiving upgrades.
        cluster.nodes["node-b"].signal(15)

        async def only_a() -> bool:
            _, body = await _gateway_health(http, cluster)
            return bool(body["components"]["discovery"]["services"] == {"ws-service": 1})

        await eventually(only_a, timeout_s=10)
        assert set(await _upgrade_nodes(http, cluster, 4)) == {"node-a"}
        assert cluster.nodes["node-b"].wait_exit(timeout_s=10) == 0
