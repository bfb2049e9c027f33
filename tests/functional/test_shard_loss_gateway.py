"""One shard of three lost, seen through the gateway (issue 17, CONTRACT section 7): only its users pay.

Everything is a real process: three redis-servers as a client-side shard list, the dev Consul agent, two nodes
registered in it and the gateway with the seed route. Clients and the backend talk to the gateway only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from harness import ProcessGroup, unique_prefix
from tests.functional.conftest import Cluster, start_cluster
from tests.functional.test_outage_redis import OwnRedis, start_shards
from tests.wsnode.conftest import eventually
from wsnode.sharding import shard_of

SHARDS = 3
LOST = 1
# Consul checks the nodes every second: a node answering 503 would leave the rotation within the test.
NODE_ARGS = ("--consul-check-interval", "1", "--route-grace", "60")


def users_on(shard: int, count: int, tag: str) -> list[str]:
    """`count` user ids that live on `shard` of SHARDS."""
    found = [f"{tag}{i}" for i in range(count * SHARDS * 8) if shard_of(f"{tag}{i}", SHARDS) == shard]
    assert len(found) >= count
    return found[:count]


class Through:
    """The gateway's public side: WebSocket upgrades and pushes."""

    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.http = http
        self.ws_url = f"{cluster.gateway_url.replace('http', 'ws', 1)}/ws-svc/websocket"

    async def connect(self, user: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, self.cluster.secret, algorithm="HS256")
        ws = await self.http.ws_connect(self.ws_url, params={"token": token}, heartbeat=None)
        welcome = json.loads((await ws.receive(timeout=10)).data)
        assert welcome["type"] == "welcome", welcome
        return ws, welcome

    async def push(self, user: str, data: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.cluster.gateway_url}/ws-svc/api/v1/push",
                                  json={"to": {"users": [user]}, "module": "m", "data": data},
                                  headers={"Authorization": f"Bearer {self.cluster.api_key}"}) as resp:
            answer: dict[str, Any] = await resp.json()
            return resp.status, answer


async def next_message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads((await ws.receive(timeout=10)).data)
        if frame["type"] == "message":
            return frame


@pytest.fixture
async def three_shards(procs: ProcessGroup, tmp_path: Path) -> AsyncIterator[tuple[Cluster, list[OwnRedis]]]:
    redis = await start_shards(procs, tmp_path, SHARDS)
    urls = ",".join(r.url for r in redis)
    cluster = await asyncio.to_thread(start_cluster, procs, urls, unique_prefix("shardloss"), tmp_path,
                                      node_args=NODE_ARGS)
    yield cluster, redis


async def test_one_shard_of_three_lost_costs_only_its_users_through_the_gateway(
        three_shards: tuple[Cluster, list[OwnRedis]]) -> None:
    cluster, redis = three_shards
    kept = {shard: users_on(shard, 4, f"kept{shard}-") for shard in range(SHARDS) if shard != LOST}
    lost = users_on(LOST, 2, "lost-")
    async with aiohttp.ClientSession() as http:
        gw = Through(cluster, http)
        before = {user: (await gw.connect(user))[0] for users in kept.values() for user in users[:2]}

        await redis[LOST].stop()

        # Both nodes see the shard lost, and the endpoint Consul checks still answers 200 on each.
        async def lost_on_both() -> bool:
            for url in cluster.node_urls.values():
                async with http.get(f"{url}/health", headers={"Authorization": f"Bearer {cluster.api_key}"}) as resp:
                    health = await resp.json()
                if resp.status != 200 or health["shards"][LOST]["redis"] != "DOWN":
                    return False
            return True

        await eventually(lost_on_both, timeout_s=15)

        # Users of the other shards: clients already connected keep receiving, new ones connect on both nodes.
        for user, ws in before.items():
            status, answer = await gw.push(user, f"to {user}")
            assert status == 202 and answer["online_sessions"] == 1, answer
            assert (await next_message(ws))["data"] == f"to {user}"
        # The upgrades one after another (pushes in between would take every other turn of the round robin).
        after = {user: await gw.connect(user) for users in kept.values() for user in users[2:]}
        nodes = {welcome["node"] for _, welcome in after.values()}
        assert len(nodes) == 2, f"the gateway reached {nodes}: a node was taken out of rotation"
        for user, (ws, _) in after.items():
            status, answer = await gw.push(user, "new")
            assert status == 202 and answer["online_sessions"] == 1, answer
            assert (await next_message(ws))["data"] == "new"
            await ws.close()
        async with http.get(f"http://{cluster.consul_addr}/v1/health/service/ws-service?passing=true") as resp:
            assert len(await resp.json()) == 2, "Consul no longer lists both nodes as passing"

        # Users of the lost shard: refused with a reason, never a 202 that is then dropped.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.connect(lost[0])
        assert refused.value.status == 503
        status, answer = await gw.push(lost[1], "lost")
        assert status == 503 and "redis" in answer["error"], answer

        # The shard back (empty): its users are served again.
        await redis[LOST].start()

        async def lost_user_connects() -> bool:
            try:
                ws, _ = await gw.connect(lost[0])
            except aiohttp.WSServerHandshakeError:
                return False
            await ws.close()
            return True

        await eventually(lost_user_connects, timeout_s=15, interval_s=0.2)
        for ws in before.values():
            await ws.close()
