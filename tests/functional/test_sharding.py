"""Redis sharded by user (docs/scaling.md section 3, option A): two real redis-servers, two real nodes on both.

Each test runs its own two redis-servers on free ports (INFO commandstats must see only this test's traffic); both
nodes get `--redis <shard 0>,<shard 1>`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness import ProcessGroup, free_port, http_status, unique_prefix
from tests.functional.test_outage_redis import EPHEMERAL, OwnRedis, start_node_on, start_shards
from tests.wsnode.conftest import (
    API_KEY,
    FAST,
    SECRET,
    WITH_KEY,
    Client,
    NodeProc,
    api_get,
    eventually,
    make_token,
    push,
)
from wsnode.keys import Keys
from wsnode.sharding import shard_of

SHARDS = 2


@dataclass
class ShardedCluster:
    """Two Redis shards, a client of each, two nodes using both."""

    redis: list[OwnRedis]
    clients: list[aioredis.Redis]
    nodes: list[NodeProc]
    keys: Keys
    http: aiohttp.ClientSession

    async def open(self, node: NodeProc, user: str, **params: str) -> tuple[Client, dict[str, Any]]:
        client = Client(await self.http.ws_connect(node.ws_url, params={"token": make_token(user), **params}))
        welcome = await client.next()
        assert welcome["type"] == "welcome", welcome
        return client, welcome

    async def commands(self) -> list[int]:
        """Commands each shard ran since its last CONFIG RESETSTAT, without the test's own INFO/CONFIG and the
        nodes' health-check PINGs."""
        out = []
        for client in self.clients:
            stats = await client.info("commandstats")
            out.append(sum(int(v["calls"]) for k, v in stats.items()
                           if not k.startswith(("cmdstat_info", "cmdstat_config", "cmdstat_ping"))))
        return out


def users_on(shard: int, count: int, tag: str) -> list[str]:
    """`count` user ids that live on `shard` of SHARDS."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        user = f"{tag}{i}"
        if shard_of(user, SHARDS) == shard:
            found.append(user)
        i += 1
    return found


@pytest.fixture
async def sharded(procs: ProcessGroup, tmp_path: Path) -> AsyncIterator[ShardedCluster]:
    redis = await start_shards(procs, tmp_path, SHARDS)
    prefix = unique_prefix("shards")
    urls = ",".join(r.url for r in redis)
    nodes = [start_node_on(procs, name, urls, prefix) for name in ("node-a", "node-b")]
    clients = [aioredis.Redis(host="127.0.0.1", port=r.port, decode_responses=True) for r in redis]
    async with aiohttp.ClientSession() as http:
        try:
            yield ShardedCluster(redis, clients, nodes, Keys(prefix), http)
        finally:
            for client in clients:
                await client.aclose()


async def test_sharding_node_subscribes_on_every_shard_and_broadcast_on_shard_0(sharded: ShardedCluster) -> None:
    keys = sharded.keys
    for index, client in enumerate(sharded.clients):
        numsub = dict(await client.pubsub_numsub(*(keys.node_channel(n.node_id) for n in sharded.nodes),
                                                 keys.broadcast_channel))
        assert all(numsub[keys.node_channel(n.node_id)] == 1 for n in sharded.nodes), (index, numsub)
        assert numsub[keys.broadcast_channel] == (2 if index == 0 else 0), (index, numsub)
        # Each node is alive on each shard (its heartbeat runs on all of them).
        assert await client.exists(*(keys.node_alive(n.node_id) for n in sharded.nodes)) == 2


async def test_sharding_push_reaches_users_of_both_shards_on_either_node(sharded: ShardedCluster) -> None:
    a, b = sharded.nodes
    zero, one = users_on(0, 1, "p")[0], users_on(1, 1, "p")[0]
    zero_on_b, _ = await sharded.open(b, zero)
    one_on_a, _ = await sharded.open(a, one)
    one_on_b, _ = await sharded.open(b, one)
    status, answer = await push(sharded.http, a, {"to": {"users": [zero, one]}, "module": "m", "data": "both"})
    assert status == 202, answer
    assert answer["online_sessions"] == 3 and answer["stored"] == 2 and set(answer["ids"]) == {zero, one}
    for client, user in ((zero_on_b, zero), (one_on_a, one), (one_on_b, one)):
        message = await client.next_of("message")
        assert message["data"] == "both" and message["id"] == answer["ids"][user]
    # Each user's keys are on its own shard only.
    for index, shard in enumerate(sharded.clients):
        assert await shard.exists(sharded.keys.user_base(zero) + ":msgs") == (index == 0)
        assert await shard.exists(sharded.keys.user_base(one) + ":msgs") == (index == 1)
        assert await shard.exists(sharded.keys.user_sessions(one)) == (index == 1)
    # Ordering per user holds across many pushes through both nodes.
    statuses = await asyncio.gather(*(push(sharded.http, (a, b)[i % 2], {"to": {"users": [one]}, "module": "m",
                                                                        "data": i}) for i in range(20)))
    assert all(s == 202 for s, _ in statuses)
    for client in (one_on_a, one_on_b):
        ids = [int((await client.next_of("message"))["id"]) for _ in range(20)]
        assert ids == sorted(ids) and len(set(ids)) == 20
    # Broadcast: published once on shard 0, every session on both nodes gets it.
    status, answer = await push(sharded.http, b, {"to": {"all": True}, "module": "m", "data": "all"})
    assert status == 202 and answer["online_sessions"] == 3
    for client in (zero_on_b, one_on_a, one_on_b):
        assert (await client.next_of("message"))["data"] == "all"
    # Presence and stats sum over the shards.
    _, presence = await api_get(sharded.http, a, f"/api/v1/users/{one}/presence")
    assert {s["node"] for s in presence["sessions"]} == {"node-a", "node-b"}
    _, stats = await api_get(sharded.http, b, "/api/v1/stats")
    assert stats["cluster_sessions"] == 3 and stats["nodes"] == 2
    # Disconnect reaches the user's sessions on both nodes.
    async with sharded.http.post(f"{b.url}/api/v1/users/{one}/disconnect",
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 200 and (await resp.json())["sessions"] == 2
    assert [await c.closed_with() for c in (one_on_a, one_on_b)] == [1008, 1008]


async def test_sharding_offline_user_on_shard_1_gets_unread_and_replay(sharded: ShardedCluster) -> None:
    a, b = sharded.nodes
    user = users_on(1, 1, "off")[0]
    answers = [await push(sharded.http, a, {"to": {"users": [user]}, "module": "news", "data": i}) for i in range(3)]
    assert [status for status, _ in answers] == [202] * 3 and all(ans["online_sessions"] == 0 for _, ans in answers)
    _, unread = await api_get(sharded.http, b, f"/api/v1/users/{user}/unread")
    assert unread["unread"] == {"news": 3}
    client, welcome = await sharded.open(b, user)
    assert welcome["unread"] == {"news": 3}
    replayed = [await client.next_of("message") for _ in range(3)]
    assert [m["data"] for m in replayed] == [0, 1, 2]
    await client.send({"type": "ack", "id": replayed[0]["id"]})
    assert (await client.next_of("unread"))["unread"] == {"news": 2}
    # Resuming from an id replays what came after it.
    again, resumed = await sharded.open(a, user, since=replayed[0]["id"])
    assert resumed["recovered"] is True
    assert [(await again.next_of("message"))["data"] for _ in range(2)] == [1, 2]


async def test_sharding_per_shard_load_divides(sharded: ShardedCluster) -> None:
    a, b = sharded.nodes
    users = [f"load{i}" for i in range(40)]
    on_shard = [sum(shard_of(u, SHARDS) == s for u in users) for s in range(SHARDS)]
    assert min(on_shard) >= 12, on_shard  # the hash spreads 40 users roughly evenly
    for client in sharded.clients:
        await client.config_resetstat()
    sessions = [(await sharded.open((a, b)[i % 2], user))[0] for i, user in enumerate(users)]
    pushes = 5
    for round_ in range(pushes):
        statuses = await asyncio.gather(*(push(sharded.http, (a, b)[i % 2], {"to": {"users": [u]}, "module": "m",
                                                                            "data": round_})
                                          for i, u in enumerate(users)))
        assert all(status == 202 for status, _ in statuses)
    for session in sessions:
        assert [(await session.next_of("message"))["data"] for _ in range(pushes)] == list(range(pushes))
    per_shard = await sharded.commands()
    total = sum(per_shard)
    shares = [n / total for n in per_shard]
    print(f"commands per shard {per_shard} for {len(users)} users ({on_shard} per shard), {pushes} pushes each: "
          f"shares {[round(s, 3) for s in shares]}")
    assert all(0.3 <= share <= 0.7 for share in shares), (per_shard, on_shard)
    # The push scripts ran where their users live: one EVALSHA per push on the user's shard.
    for index, client in enumerate(sharded.clients):
        calls = (await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        assert int(calls) >= on_shard[index] * pushes


async def test_sharding_one_shard_down_costs_only_its_users(sharded: ShardedCluster) -> None:
    """CONTRACT section 7: with one shard lost the nodes stay UP (Consul keeps them), users of the other shard
    connect and receive, users of the lost shard get 503 with a reason; once it is back everyone is served."""
    a, b = sharded.nodes
    lost_user, kept_user = users_on(1, 1, "down")[0], users_on(0, 2, "up")
    client, _ = await sharded.open(a, lost_user)

    async def shard_1_down_everywhere() -> bool:
        for node in (a, b):
            async with sharded.http.get(f"{node.url}/health", headers=WITH_KEY) as resp:
                health = await resp.json()
            if resp.status != 200 or health["shards"][1]["redis"] != "DOWN" or health["redis"] != "DEGRADED":
                return False
        return True

    await sharded.redis[1].stop()
    await eventually(shard_1_down_everywhere, timeout_s=10)
    # Users of shard 0: a new connection on either node, and pushes to them.
    kept_client, _ = await sharded.open(b, kept_user[0])
    status, answer = await push(sharded.http, a, {"to": {"users": [kept_user[0]]}, "module": "m", "data": "kept"})
    assert status == 202 and answer["online_sessions"] == 1, answer
    assert (await kept_client.next_of("message", timeout_s=10))["data"] == "kept"
    # Users of shard 1: refused with a reason, never a 202 that is then dropped.
    status, answer = await push(sharded.http, b, {"to": {"users": [lost_user]}, "module": "m", "data": "lost"})
    assert status == 503 and "redis" in answer["error"], answer
    handshake = b.ws_url.replace("ws://", "http://")  # the node answers before it would upgrade
    async with sharded.http.get(handshake, params={"token": make_token(users_on(1, 2, "down")[1])}) as resp:
        assert resp.status == 503 and "shard" in (await resp.json())["error"]

    await sharded.redis[1].start()  # empty: the nodes register their sessions on it again
    async def all_up() -> bool:
        return await _all(lambda node: _health_status(sharded, node), (a, b), 200) and not await shard_1_down_anywhere()

    async def shard_1_down_anywhere() -> bool:
        for node in (a, b):
            async with sharded.http.get(f"{node.url}/health", headers=WITH_KEY) as resp:
                if (await resp.json())["shards"][1]["pubsub"] != "UP":
                    return True
        return False

    await eventually(all_up, timeout_s=15)
    status, answer = await push(sharded.http, b, {"to": {"users": [lost_user]}, "module": "m", "data": "after"})
    assert status == 202 and answer["online_sessions"] == 1, answer
    assert (await client.next_of("message", timeout_s=10))["data"] == "after"


async def _health_status(sharded: ShardedCluster, node: NodeProc) -> int:
    async with sharded.http.get(f"{node.url}/health") as resp:
        return resp.status


async def test_sharding_hand_over_after_the_grace_closes_only_users_of_the_lost_shard(
        sharded: ShardedCluster, procs: ProcessGroup) -> None:
    urls = ",".join(r.url for r in sharded.redis)
    node = start_node_on(procs, "node-c", urls, sharded.keys.prefix, "--route-grace", "1")
    kept_user, lost_user = users_on(0, 1, "keep")[0], users_on(1, 1, "lose")[0]
    kept, _ = await sharded.open(node, kept_user)
    lost, _ = await sharded.open(node, lost_user)
    await sharded.redis[1].stop()
    assert await lost.closed_with(timeout_s=15) == 1013
    # Users whose data is on the shard that answers keep their session and their pushes.
    status, _ = await push(sharded.http, sharded.nodes[1], {"to": {"users": [kept_user]}, "module": "m", "data": 1})
    assert status == 202
    assert (await kept.next_of("message", timeout_s=10))["data"] == 1
    await sharded.redis[1].start()


async def _all(health: Any, nodes: tuple[NodeProc, ...], status: int) -> bool:
    return all([await health(node) == status for node in nodes])


async def test_sharding_retried_multi_shard_push_returns_the_first_result(sharded: ShardedCluster) -> None:
    a, b = sharded.nodes
    zero, one = users_on(0, 1, "idem")[0], users_on(1, 1, "idem")[0]
    body = json.dumps({"to": {"users": [zero, one]}, "module": "m", "data": "once"}).encode()
    answers = []
    for node in (a, b):
        async with sharded.http.post(f"{node.url}/api/v1/push", data=body,
                                     headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "k1"}) as resp:
            assert resp.status == 202
            answers.append(await resp.json())
    assert answers[0] == answers[1] and set(answers[0]["ids"]) == {zero, one}
    for user in (zero, one):
        _, unread = await api_get(sharded.http, a, f"/api/v1/users/{user}/unread")
        assert unread["unread"] == {"m": 1}, (user, unread)


@pytest.mark.parametrize("case", ["reversed", "one more", "another server"])
async def test_sharding_a_node_with_a_different_list_refuses_to_start(sharded: ShardedCluster, procs: ProcessGroup,
                                                                      tmp_path: Path, case: str) -> None:
    urls = [f"redis://127.0.0.1:{r.port}/0" for r in sharded.redis]
    if case == "reversed":
        listed, named = [urls[1], urls[0]], f"shard 0 {urls[1]} (the other nodes use it as shard 1)"
    else:
        (tmp_path / "extra").mkdir()
        extra = OwnRedis(procs, tmp_path / "extra", EPHEMERAL)
        await extra.start()
        if case == "one more":
            listed, named = [*urls, extra.url], "this node lists 3 Redis shard(s)"
        else:
            listed, named = [urls[0], extra.url], f"shard 1 {extra.url} (it is not in the other nodes' list)"
    port = free_port()
    proc = procs.python("node-odd", "wsnode", "--port", str(port), "--host", "127.0.0.1", "--node-id", "node-odd",
                        "--redis", ",".join(listed), "--redis-prefix", sharded.keys.prefix, "--jwt-secret", SECRET,
                        "--api-key", API_KEY, *FAST)
    assert await asyncio.to_thread(proc.wait_exit, timeout_s=20) == 2
    assert named in proc.log()
    assert http_status(f"http://127.0.0.1:{port}/health") is None  # it never listened
