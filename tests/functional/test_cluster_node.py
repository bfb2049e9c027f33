"""The node on a real Redis Cluster (CONTRACT section 7): 3 masters and 3 replicas (the session's `redis_cluster`),
two real node processes given one seed node each, users chosen so that every master holds some of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from harness import ProcessGroup, RedisInfo, free_port, unique_prefix
from harness.redis_cluster import OwnCluster, provide_redis_cluster
from tests.functional import test_fault_delivery as fault_delivery
from tests.functional.test_outage_redis import start_node_on
from tests.wsnode.conftest import API_KEY, Client, NodeProc, api_get, eventually, make_token, push
from wsnode.keys import Keys
from wsnode.stream_consumer import GROUP


@dataclass
class OnCluster:
    cluster: OwnCluster
    redis: RedisCluster
    nodes: list[NodeProc]
    keys: Keys
    http: aiohttp.ClientSession

    async def open(self, node: NodeProc, user: str, **params: str) -> tuple[Client, dict[str, Any]]:
        client = Client(await self.http.ws_connect(node.ws_url, params={"token": make_token(user), **params}))
        welcome = await client.next()
        assert welcome["type"] == "welcome", welcome
        return client, welcome

    def users_per_master(self, per_master: int, tag: str) -> dict[int, list[str]]:
        """`per_master` users whose slot each master serves (by master port)."""
        owners = {}
        for node in self.cluster.topology():
            for first, last in node.slots:
                for slot in range(first, last + 1):
                    owners[slot] = node.port
        found: dict[int, list[str]] = {port: [] for port in set(owners.values())}
        i = 0
        while any(len(users) < per_master for users in found.values()):
            user = f"{tag}{i}"
            users = found[owners[self.keys.user_slot(user)]]
            if len(users) < per_master:
                users.append(user)
            i += 1
        return found


@pytest.fixture
async def on_cluster(redis_cluster: OwnCluster, procs: ProcessGroup) -> AsyncIterator[OnCluster]:
    prefix = unique_prefix("cl")
    ports = redis_cluster.info.ports
    # Each node is given a different seed: either finds the whole cluster from it.
    nodes = [start_node_on(procs, name, f"redis://127.0.0.1:{port}/0", prefix)
             for name, port in (("node-a", ports[0]), ("node-b", ports[1]))]
    data = RedisCluster(host="127.0.0.1", port=ports[2], decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            yield OnCluster(redis_cluster, data, nodes, Keys(prefix, cluster=True), http)
        finally:
            await data.aclose()


async def test_cluster_node_push_receive_unread_ack_broadcast_across_masters(on_cluster: OnCluster) -> None:
    c = on_cluster
    a, b = c.nodes
    spread = c.users_per_master(2, "u")
    assert len(spread) == 3, spread
    users = [user for group in spread.values() for user in group]
    # Every user has a session on the node other than the one the push goes through.
    sessions = {user: (await c.open((a, b)[i % 2], user))[0] for i, user in enumerate(users)}
    answers = []
    for i, user in enumerate(users):
        status, answer = await push(c.http, (b, a)[i % 2], {"to": {"users": [user]}, "module": "m", "data": user})
        assert status == 202, answer
        assert answer["online_sessions"] == 1 and answer["stored"] == 1, answer
        answers.append(answer)
    for user, answer in zip(users, answers, strict=True):
        message = await sessions[user].next_of("message")
        assert message["data"] == user and message["id"] == answer["ids"][user]
        assert (await sessions[user].next_of("unread"))["unread"] == {"m": 1}
    # One push to users on all three masters: one script per slot, answers summed.
    status, answer = await push(c.http, a, {"to": {"users": users}, "module": "m", "data": "all-users"})
    assert status == 202 and answer["stored"] == len(users) and set(answer["ids"]) == set(users), answer
    for user in users:
        assert (await sessions[user].next_of("message"))["data"] == "all-users"
        assert (await sessions[user].next_of("unread"))["unread"] == {"m": 2}
    # Each user's keys live on the master serving the user's slot, all in that one slot.
    for user in users:
        assert await c.redis.zcard(c.keys.user_base(user) + ":msgs") == 2
        assert await c.redis.hgetall(c.keys.user_base(user) + ":unread") == {"m": "2"}
    # Unread counts, ack (the count drops on every session of the user), presence.
    user = users[0]
    _, unread = await api_get(c.http, b, f"/api/v1/users/{user}/unread")
    assert unread["unread"] == {"m": 2}
    await sessions[user].send({"type": "ack", "id": answers[0]["ids"][user]})
    assert (await sessions[user].next_of("unread"))["unread"] == {"m": 1}
    _, presence = await api_get(c.http, a, f"/api/v1/users/{users[1]}/presence")
    assert [s["node"] for s in presence["sessions"]] == ["node-b"]
    _, stats = await api_get(c.http, b, "/api/v1/stats")
    assert stats["cluster_sessions"] == len(users) and stats["nodes"] == 2, stats
    # Broadcast reaches every session on both nodes.
    status, answer = await push(c.http, b, {"to": {"all": True}, "module": "m", "data": "everyone"})
    assert status == 202 and answer["online_sessions"] == len(users), answer
    for user in users:
        assert (await sessions[user].next_of("message"))["data"] == "everyone"
    # A reconnect replays what is unacked.
    again, welcome = await c.open(b, users[2])
    assert welcome["unread"] == {"m": 2}
    assert [(await again.next_of("message"))["data"] for _ in range(2)] == [users[2], "all-users"]
    # Health names the cluster, with every slot subscribed.
    async with c.http.get(f"{a.url}/health", headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        health = await resp.json()
    assert resp.status == 200 and health["cluster"]["state"] == "ok" and health["cluster"]["masters"] == 3, health
    assert health["cluster"]["unsubscribed_slots"] == 0, health
    # A disconnect through the other node reaches the user's session (SPUBLISH from the node, not a script).
    async with c.http.post(f"{a.url}/api/v1/users/{users[1]}/disconnect",
                           headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 200, await resp.text()
    assert await sessions[users[1]].closed_with() == 1008


async def test_cluster_node_push_and_publish_streams(on_cluster: OnCluster) -> None:
    c = on_cluster
    a, _ = c.nodes
    user = c.users_per_master(1, "s")[c.cluster.master_ports()[-1]][0]
    client, _ = await c.open(a, user)
    await eventually(lambda: c.redis.xinfo_groups(c.keys.push_stream), timeout_s=5)
    groups = await c.redis.xinfo_groups(c.keys.push_stream)
    assert [g["name"] for g in groups] == [GROUP]
    await c.redis.xadd(c.keys.push_stream, {"payload": f'{{"to":{{"users":["{user}"]}},"module":"s","data":1}}'})
    assert (await client.next_of("message"))["data"] == 1
    # A client's publish goes to the publish stream (its byte count in the stream's slot) within the user's budget.
    await client.send({"type": "publish", "module": "chat", "data": {"text": "hi"}, "ref": 3})
    assert await client.next_of("accepted") == {"type": "accepted", "ref": 3}
    entries = await c.redis.xrange(c.keys.publish_stream)
    assert [(f["user"], f["module"]) for _id, f in entries] == [(user, "chat")]
    assert int(await c.redis.get(c.keys.publish_stream_bytes)) > 0
    assert await c.redis.exists(c.keys.user_publish_budget(user)) == 1


async def test_cluster_node_drain_removes_its_sessions(on_cluster: OnCluster) -> None:
    c = on_cluster
    a, b = c.nodes
    spread = c.users_per_master(1, "d")
    users = [group[0] for group in spread.values()]
    held = [(await c.open(b, user))[0] for user in users]
    assert [await c.redis.zcard(c.keys.user_sessions(user)) for user in users] == [1] * len(held)
    b.proc.signal(signal.SIGTERM)
    assert b.proc.wait_exit(timeout_s=15) == 0

    async def gone() -> bool:
        counts = await asyncio.gather(*(c.redis.zcard(c.keys.user_sessions(user)) for user in users))
        return all(n == 0 for n in counts) and not await c.redis.exists(c.keys.node_sessions(b.node_id))

    await eventually(gone, timeout_s=5)
    _, stats = await api_get(c.http, a, "/api/v1/stats")
    assert stats["cluster_sessions"] == 0 and stats["nodes"] == 1, stats


async def test_cluster_node_refuses_a_tagged_prefix(redis_cluster: OwnCluster, procs: ProcessGroup) -> None:
    proc = procs.python("tagged", "wsnode", "--port", str(free_port()), "--host", "127.0.0.1", "--node-id", "tagged",
                        "--redis", redis_cluster.info.url, "--jwt-secret", "s" * 32, "--allow-anonymous",
                        "--redis-prefix", "{b}")
    assert await asyncio.to_thread(proc.wait_exit, timeout_s=15) == 2
    assert "no '{' or '}'" in proc.log(), proc.log()


async def test_cluster_node_min_replicas_answers_503_for_the_users_of_a_master_without_replica(
        own_cluster: OwnCluster, procs: ProcessGroup) -> None:
    """`--redis-min-replicas 1`: a push is answered 202 once the master of its users' slot has it on a replica
    (WAIT on the script's own connection); with that master's replica SIGKILLed its users' pushes get 503, and the
    users of the other masters are still served; a retry under the same Idempotency-Key stores nothing twice."""
    prefix = unique_prefix("clwait")
    masters = own_cluster.master_ports()
    node = start_node_on(procs, "node-a", f"redis://127.0.0.1:{masters[1]}/0", prefix, "--redis-min-replicas", "1",
                         "--redis-wait-timeout", "0.5")
    data = RedisCluster(host="127.0.0.1", port=masters[1], decode_responses=True)
    async with aiohttp.ClientSession() as http:
        c = OnCluster(own_cluster, data, [node], Keys(prefix, cluster=True), http)
        spread = c.users_per_master(1, "w")
        for port in masters:
            status, answer = await push(http, node, {"to": {"users": spread[port]}, "module": "w", "data": 1})
            assert status == 202 and answer["stored"] == 1, answer
        ids = {n.port: n.node_id for n in own_cluster.topology()}
        replica = next(n.port for n in own_cluster.topology() if n.master_id == ids[masters[0]])
        own_cluster.kill(replica)
        lonely, served = spread[masters[0]][0], spread[masters[1]][0]
        headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "wait-1"}
        body = json.dumps({"to": {"users": [lonely]}, "module": "w", "data": 2})
        for _ in range(2):
            async with http.post(f"{node.url}/api/v1/push", data=body, headers=headers) as resp:
                assert resp.status == 503, await resp.text()
        # Stored once on the master despite the retry (the marker made the retry a no-op), never acknowledged.
        assert await data.zcard(c.keys.user_base(lonely) + ":msgs") == 2
        status, answer = await push(http, node, {"to": {"users": [served]}, "module": "w", "data": 2})
        assert status == 202 and answer["stored"] == 1, answer
        await data.aclose()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[OwnCluster]:
    """A cluster of this test's own (it kills a master)."""
    with provide_redis_cluster(tmp_path / "cluster") as cluster:
        yield cluster


async def _collect(client: Client) -> None:
    with contextlib.suppress(asyncio.CancelledError, AssertionError, TimeoutError):
        while True:
            await client.next(timeout_s=3600)


def _missing(sessions: dict[str, Client], answered: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per user, the ids answered 202 that their session has not received."""
    out = {}
    for user, client in sessions.items():
        got = {str(f["id"]) for f in client.frames if f.get("type") == "message"}
        lost = [pushed for pushed in answered[user] if pushed not in got]
        if lost:
            out[user] = lost
    return out


async def _none_missing(sessions: dict[str, Client], answered: dict[str, list[str]]) -> bool:
    return not _missing(sessions, answered)


def _assert_in_id_order(sessions: dict[str, Client]) -> None:
    """Each session got its messages in id order once deduplicated by id."""
    for user, client in sessions.items():
        ids = [int(f["id"]) for f in client.frames if f.get("type") == "message"]
        assert list(dict.fromkeys(ids)) == sorted(set(ids)), (user, ids)


@pytest.mark.parametrize("durability", [(), ("--redis-min-replicas", "1")], ids=["async", "min-replicas-1"])
async def test_cluster_node_master_killed_during_pushes_loses_nothing_answered(
        own_cluster: OwnCluster, procs: ProcessGroup, durability: tuple[str, ...]) -> None:
    """A master is SIGKILLed while both nodes push to users on every master (one push loop per user, all at once):
    its replica takes over, node-b stays UP, and every push answered 202 reaches its user's session once deduplicated
    by id, in id order."""
    prefix = unique_prefix("clkill")
    masters = own_cluster.master_ports()
    victim = masters[0]
    # node-a's seed (and so its pub/sub connection) is the master that dies: it must subscribe through another.
    # A session TTL longer than the failover (about 4 s here), as in production (the default is far longer): a node
    # whose heartbeat keys sat on the dead master is still known alive when its replica takes over.
    ttl = ("--session-ttl", "10", *durability)
    nodes = [start_node_on(procs, "node-a", f"redis://127.0.0.1:{victim}/0", prefix, *ttl),
             start_node_on(procs, "node-b", f"redis://127.0.0.1:{masters[1]}/0", prefix, *ttl)]
    data = RedisCluster(host="127.0.0.1", port=masters[1], decode_responses=True)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        c = OnCluster(own_cluster, data, nodes, Keys(prefix, cluster=True), http)
        spread = c.users_per_master(2, "k")
        victims = set(spread[victim])
        users = [user for group in spread.values() for user in group]
        sessions = {user: (await c.open(nodes[i % 2], user))[0] for i, user in enumerate(users)}
        readers = [asyncio.create_task(_collect(client)) for client in sessions.values()]
        answered: dict[str, list[str]] = {user: [] for user in users}
        statuses: list[int] = []
        in_window = 0  # pushes to the dead master's users in flight before its replica took over
        promoted_at: float | None = None
        slowest = 0.0
        two_each = asyncio.Event()  # every user has two pushes answered: time to kill
        killed = asyncio.Event()
        promoted = asyncio.Event()

        async def pushes(index: int, user: str) -> None:
            nonlocal in_window, slowest
            after = 0
            n = 0
            while after < 3:
                started = loop.time()
                status, answer = await push(http, nodes[(index + n) % 2], {"to": {"users": [user]}, "module": "k",
                                                                           "data": n})
                slowest = max(slowest, loop.time() - started)
                if user in victims and killed.is_set() and started < (promoted_at or loop.time()):
                    in_window += 1  # in flight while the dead master's slots had no master
                statuses.append(status)
                if status == 202:
                    answered[user].append(answer["ids"][user])
                    if min(map(len, answered.values())) >= 2:
                        two_each.set()
                else:
                    assert status == 503, (status, answer)
                n += 1
                if promoted.is_set():
                    after += 1
                elif not killed.is_set():
                    await asyncio.sleep(0)  # let every loop push before the kill
                else:
                    await asyncio.sleep(0.05)

        async def fail_over() -> None:
            await two_each.wait()
            own_cluster.kill(victim)
            killed.set()
            down_seen = False
            while victim in await asyncio.to_thread(own_cluster.master_ports):
                # Meanwhile node-b (whose seed lives) stays UP: it serves the users of the other masters.
                async with http.get(f"{nodes[1].url}/health", headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
                    health = await resp.json()
                    assert resp.status == 200, health
                    down_seen |= any(n["redis"] == "DOWN" for n in health["cluster"]["nodes"])
                await asyncio.sleep(0.1)
            nonlocal promoted_at
            promoted_at = loop.time()
            promoted.set()
            assert down_seen, "node-b's /health never named the dead master"

        await asyncio.wait_for(asyncio.gather(fail_over(), *(pushes(i, u) for i, u in enumerate(users))), 60)

        try:
            await eventually(lambda: _none_missing(sessions, answered), timeout_s=15)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await data.aclose()
        assert not _missing(sessions, answered), _missing(sessions, answered)
        print(f"{len(statuses)} pushes, {statuses.count(202)} answered 202, {statuses.count(503)} refused (503), "
              f"{in_window} to the dead master's users in flight before the promotion, slowest answer {slowest:.2f} s, "
              f"all 202s delivered")
        assert in_window > 0, "no push met the failover: the test did not test it"
        _assert_in_id_order(sessions)


async def test_cluster_node_reshard_during_pushes_loses_nothing_answered(own_cluster: OwnCluster,
                                                                        procs: ProcessGroup) -> None:
    """`redis-cli --cluster reshard` moves 2,000 slots (users' keys with them) while both nodes push to users in
    those slots and elsewhere: every push answered 202 arrives in id order, and the moved users' stores are whole on
    the new master."""
    prefix = unique_prefix("clmove")
    source, target = own_cluster.master_ports()[:2]
    moving_slots = 2000
    before = own_cluster.slot_count(source)
    first_slots = sorted(slot for node in own_cluster.topology() if node.port == source
                         for first, last in node.slots for slot in range(first, last + 1))[:moving_slots]
    moved_range = set(first_slots[:moving_slots - 200])  # redis-cli takes the source's lowest slots
    nodes = [start_node_on(procs, name, f"redis://127.0.0.1:{target}/0", prefix) for name in ("node-a", "node-b")]
    data = RedisCluster(host="127.0.0.1", port=target, decode_responses=True)
    keys = Keys(prefix, cluster=True)
    moving = [u for u in (f"m{i}" for i in range(5000)) if keys.user_slot(u) in moved_range][:8]
    staying = [u for u in (f"s{i}" for i in range(5000)) if keys.user_slot(u) not in set(first_slots)][:4]
    users = moving + staying
    assert len(moving) == 8 and len(staying) == 4
    async with aiohttp.ClientSession() as http:
        c = OnCluster(own_cluster, data, nodes, keys, http)
        sessions = {user: (await c.open(nodes[i % 2], user))[0] for i, user in enumerate(users)}
        readers = [asyncio.create_task(_collect(client)) for client in sessions.values()]
        answered: dict[str, list[str]] = {user: [] for user in users}
        statuses: list[int] = []
        moved = asyncio.Event()

        async def pushes(index: int, user: str) -> None:
            after, n = 0, 0
            while after < 3:
                status, answer = await push(http, nodes[(index + n) % 2], {"to": {"users": [user]}, "module": "r",
                                                                           "data": n})
                statuses.append(status)
                if status == 202:
                    answered[user].append(answer["ids"][user])
                else:
                    assert status == 503, (status, answer)
                n += 1
                if moved.is_set():
                    after += 1
                else:
                    await asyncio.sleep(0.02)  # pacing: pushes keep coming through the whole reshard

        async def reshard() -> None:
            await asyncio.to_thread(own_cluster.reshard, source, target, moving_slots)
            moved.set()

        await asyncio.wait_for(asyncio.gather(reshard(), *(pushes(i, u) for i, u in enumerate(users))), 120)
        assert own_cluster.slot_count(source) == before - moving_slots
        target_slots = {slot for node in own_cluster.topology() if node.port == target
                        for first, last in node.slots for slot in range(first, last + 1)}
        assert all(keys.user_slot(user) in target_slots for user in moving), "the moving users did not move"

        try:
            await eventually(lambda: _none_missing(sessions, answered), timeout_s=15)
            for user in moving:
                # The store moved whole: every answered message is there, counted unread.
                assert await data.zcard(keys.user_base(user) + ":msgs") == len(answered[user])
                assert await data.hgetall(keys.user_base(user) + ":unread") == {"r": str(len(answered[user]))}
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await data.aclose()
        assert not _missing(sessions, answered), _missing(sessions, answered)
        print(f"reshard of {moving_slots} slots: {len(statuses)} pushes, {statuses.count(202)} answered 202, "
              f"{statuses.count(503)} refused (503), all 202s delivered")
        _assert_in_id_order(sessions)


async def test_cluster_node_slot_moved_by_hand_resends_what_was_published_in_the_gap(own_cluster: OwnCluster,
                                                                                    procs: ProcessGroup) -> None:
    """A user's slot is moved by hand (IMPORTING, MIGRATING, MIGRATE, then SETSLOT NODE on the target before the
    source): a push in between runs on the target, which the node's subscription is not on yet, so its SPUBLISH
    reaches nobody; once the source gives the slot up it ends the subscription (`sunsubscribe`), the node subscribes
    on the target and resends from the store, so the session gets that push without any later one; the next push
    comes live through the new subscription."""
    prefix = unique_prefix("clslot")
    node = start_node_on(procs, "node-a", own_cluster.info.url, prefix)
    keys = Keys(prefix, cluster=True)
    data = RedisCluster(host="127.0.0.1", port=own_cluster.info.ports[0], decode_responses=True)
    async with aiohttp.ClientSession() as http:
        c = OnCluster(own_cluster, data, [node], keys, http)
        source = own_cluster.master_ports()[0]
        user = c.users_per_master(1, "mv")[source][0]
        slot = keys.user_slot(user)
        ids = {n.port: n.node_id for n in own_cluster.topology()}
        target = own_cluster.master_ports()[1]
        client, _ = await c.open(node, user)
        status, first = await push(http, node, {"to": {"users": [user]}, "module": "mv", "data": 1})
        assert status == 202 and (await client.next_of("message"))["data"] == 1
        servers = {port: redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
                   for port in own_cluster.master_ports()}
        src, dst = servers[source], servers[target]
        channel = keys.node_slot_channel("node-a", slot)
        try:
            assert (await src.execute_command("PUBSUB", "SHARDNUMSUB", channel))[1] == 1
            await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            moving = await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            await src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *moving)
            await dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
            # The target serves the slot; the source still holds the node's subscription.
            status, gap = await push(http, node, {"to": {"users": [user]}, "module": "mv", "data": 2})
            assert status == 202, gap
            for port, server in servers.items():
                if port != target:
                    await server.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
            got = await client.next_of("message")
            assert (got["id"], got["data"]) == (gap["ids"][user], 2)

            async def moved() -> bool:
                return bool((await dst.execute_command("PUBSUB", "SHARDNUMSUB", channel))[1] == 1
                            and (await src.execute_command("PUBSUB", "SHARDNUMSUB", channel))[1] == 0)

            await eventually(moved, timeout_s=5)
            status, live = await push(http, node, {"to": {"users": [user]}, "module": "mv", "data": 3})
            assert status == 202
            got = await client.next_of("message")
            assert (got["id"], got["data"]) == (live["ids"][user], 3)
            assert int(first["ids"][user]) + 2 == int(live["ids"][user])
        finally:
            for server in servers.values():
                await server.aclose()
            await data.aclose()


async def test_cluster_node_sigkill_of_a_node_mid_stream_through_the_gateway(redis_cluster: OwnCluster,
                                                                            procs: ProcessGroup,
                                                                            tmp_path: Path) -> None:
    """The 200-client SIGKILL fault-delivery test of test_fault_delivery.py, unchanged, with both nodes on the Cluster
    (users spread over every master): every number arrives once deduplicated, in order, through the gateway."""
    seed = RedisInfo("127.0.0.1", redis_cluster.info.ports[0])
    await fault_delivery.test_sigkill_of_a_node_mid_stream_loses_nothing_through_the_gateway(
        procs, seed, unique_prefix("clfault"), tmp_path)


async def test_cluster_node_push_scripts_run_on_the_users_masters_only(on_cluster: OnCluster) -> None:
    """Each push is one EVALSHA on the master of its user's slot, none elsewhere: the store's load divides with the
    masters (and so does pub/sub, test_cluster_node_push_notifications_stay_on_the_users_shard)."""
    c = on_cluster
    a, b = c.nodes
    spread = c.users_per_master(10, "load")
    sessions = [(await c.open((a, b)[i % 2], user))[0] for i, user in
                enumerate(user for group in spread.values() for user in group)]
    pushes = 5
    masters = {port: redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in spread}
    try:
        for client in masters.values():
            await client.config_resetstat()
        for round_ in range(pushes):
            answers = await asyncio.gather(*(push(c.http, (a, b)[i % 2], {"to": {"users": [user]}, "module": "m",
                                                                           "data": round_})
                                             for group in spread.values() for i, user in enumerate(group)))
            assert all(status == 202 for status, _ in answers), answers
        for session in sessions:
            assert [(await session.next_of("message"))["data"] for _ in range(pushes)] == list(range(pushes))
        stats = {port: await client.info("commandstats") for port, client in masters.items()}
    finally:
        for client in masters.values():
            await client.aclose()
    # Calls that ran a script: without the first NOSCRIPT answer of each node on each master (redis-py then loads
    # the script and calls again).
    evalsha = {port: int(s.get("cmdstat_evalsha", {}).get("calls", 0)) - int(s.get("cmdstat_evalsha", {})
                                                                               .get("failed_calls", 0))
               for port, s in stats.items()}
    total = {port: sum(int(v["calls"]) for k, v in s.items()
                       if not k.startswith(("cmdstat_info", "cmdstat_config", "cmdstat_ping", "cmdstat_cluster")))
             for port, s in stats.items()}
    print(f"\n{pushes} pushes to each of 10 users per master: scripts run per master {evalsha}, all commands per "
          f"master {total} (nodes' heartbeats and presence included)")
    assert evalsha == {port: len(users) * pushes for port, users in spread.items()}


async def test_cluster_node_connect_registers_replays_resumes_and_refuses_revoked_tokens(
        on_cluster: OnCluster) -> None:
    """A connect on a Cluster (wsnode/admission.py): the script on the user's slot, then the global records."""
    c = on_cluster
    a, b = c.nodes
    user = "joiner"
    status, answer = await push(c.http, b, {"to": {"users": [user]}, "module": "m", "data": 1})
    assert status == 202, answer
    stored = answer["ids"][user]
    old_token = make_token(user, iat=1)  # issued long ago
    client = Client(await c.http.ws_connect(a.ws_url, params={"token": old_token}))
    welcome = await client.next()
    assert (welcome["type"], welcome["last"], welcome["unread"]) == ("welcome", stored, {"m": 1}), welcome
    assert (await client.next_of("message"))["id"] == stored  # the unacked message, replayed
    session = welcome["session"]
    assert await c.redis.zrange(c.keys.user_sessions(user), 0, -1) == [f"node-a|{session}"]
    assert await c.redis.zscore(c.keys.all_sessions, session) is not None
    assert await c.redis.hget(c.keys.node_sessions("node-a"), session) == user
    # Resuming from the stored id on the other node: nothing missed, nothing replayed.
    _, resumed = await c.open(b, user, since=stored)
    assert resumed["recovered"] is True and resumed["last"] == stored
    async with c.http.post(f"{a.url}/api/v1/users/{user}/disconnect?revoke=true",
                           headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 200, await resp.text()
    # A real upgrade request, so that the refusal comes from the connect script (not from the check made for
    # requests refused before it).
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with c.http.get(b.ws_url, params={"token": old_token}, headers=upgrade) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "token revoked"
    # Refused before anything was written: only the two sessions closed by the disconnect were ever there.
    await eventually(lambda: _no_sessions(c, user))


async def _no_sessions(c: OnCluster, user: str) -> bool:
    return await c.redis.zcard(c.keys.user_sessions(user)) == 0


_SHARD_RECEIVED = "cluster_stats_messages_publishshard_received"


def _bus_counters(text: str) -> dict[str, int]:
    return {name: int(value) for name, _, value in (line.partition(":") for line in text.split())
            if name.startswith("cluster_stats_messages_publish")}


async def test_cluster_node_push_notifications_stay_on_the_users_shard(on_cluster: OnCluster) -> None:
    """Pushes to users of one master: that master runs one SPUBLISH per push (to the receiving node's channel of the
    user's slot) and its replica alone gets them over the cluster bus; the other masters run no SPUBLISH and receive
    no sharded publication, and plain PUBLISH (now only the nodes' own heartbeats) does not grow with the pushes."""
    c = on_cluster
    a, b = c.nodes
    spread = c.users_per_master(5, "shard")
    masters = sorted(spread)
    loaded = masters[0]
    users = spread[loaded]
    # Sessions of every master's users on both nodes, so every node is subscribed and routable everywhere.
    sessions = {user: (await c.open((a, b)[i % 2], user))[0]
                for i, user in enumerate(u for group in spread.values() for u in group)}
    ids = {n.port: n.node_id for n in c.cluster.topology()}
    replica_of = {n.master_id: n.port for n in c.cluster.topology() if n.role == "slave"}
    ports = [*masters, *(replica_of[ids[port]] for port in masters)]
    servers = {port: redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in ports}
    rounds = 10
    loop = asyncio.get_running_loop()
    try:
        async def counters() -> dict[int, dict[str, int]]:
            out = {}
            for port, server in servers.items():
                stats = await server.info("commandstats")
                out[port] = {**_bus_counters(await server.execute_command("CLUSTER", "INFO")),
                             **{name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                                for name in ("publish", "spublish")}}
            return out

        before = await counters()
        started = loop.time()
        for round_ in range(rounds):
            answers = await asyncio.gather(*(push(c.http, (a, b)[i % 2], {"to": {"users": [user]}, "module": "m",
                                                                           "data": round_})
                                             for i, user in enumerate(users)))
            assert all(status == 202 for status, _ in answers), answers
        for user in users:
            assert [(await sessions[user].next_of("message"))["data"] for _ in range(rounds)] == list(range(rounds))
        elapsed = loop.time() - started
        replica = replica_of[ids[loaded]]

        async def replica_has_all() -> bool:  # the bus delivers to the replica after the master's reply
            info = _bus_counters(await servers[replica].execute_command("CLUSTER", "INFO"))
            return info.get(_SHARD_RECEIVED, 0) - before[replica].get(_SHARD_RECEIVED, 0) >= rounds * len(users)

        await eventually(replica_has_all, timeout_s=5)
        after = await counters()
    finally:
        for server in servers.values():
            await server.aclose()
    # CLUSTER INFO lists a bus counter only once it is not 0.
    delta = {port: {name: after[port][name] - before[port].get(name, 0) for name in after[port]} for port in ports}
    pushes = rounds * len(users)
    print(f"\n{pushes} pushes to the users of master {loaded} in {elapsed:.2f} s: per server {delta}")
    assert delta[loaded]["spublish"] == pushes
    assert all(delta[port]["spublish"] == 0 for port in masters[1:])
    # Redis sends a sharded publication over the bus to the master's replicas only.
    assert delta[replica][_SHARD_RECEIVED] == pushes
    assert all(delta[port].get(_SHARD_RECEIVED, 0) == 0 for port in ports if port != replica)
    # Plain PUBLISH: each node's heartbeat, once a second (--pubsub-heartbeat), whatever the pushes.
    beats = 2 * (int(elapsed) + 2)
    assert sum(delta[port]["publish"] for port in masters) <= beats < pushes, (delta, beats)
