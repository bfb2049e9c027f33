"""Redis Sentinel (CONTRACT section 7): a primary, a replica and three sentinels, all real redis-servers of the test's
own. Two nodes follow `redis+sentinel://.../mymaster`; the primary is SIGKILLed and pushes go on after the failover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.model import RateLimit, RequestView
from gateway.ratelimit.redis import RedisRateLimiter, redis_connection
from harness import ManagedProcess, ProcessGroup, free_port, redis_answers, redis_server_binary, unique_prefix
from tests.functional.test_outage_redis import EPHEMERAL, OwnRedis, start_node_on
from tests.wsnode.conftest import API_KEY, FAST, SECRET, Client, NodeProc, eventually, make_token, push

pytestmark = pytest.mark.slow
MASTER = "mymaster"


@dataclass
class SentinelSetup:
    primary: OwnRedis
    replica: OwnRedis
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    async def master_port(self, index: int = 0) -> int:
        """The master's port as sentinel `index` sees it."""
        sentinel = aioredis.Redis(port=self.sentinel_ports[index], decode_responses=True)
        try:
            _host, port = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            return int(port)
        finally:
            await sentinel.aclose()

    async def all_agree_on(self, port: int) -> bool:
        """Every sentinel names `port` as the master (the new configuration has reached them all)."""
        return all([await self.master_port(index) == port for index in range(len(self.sentinel_ports))])


def _start_sentinel(procs: ProcessGroup, directory: Path, primary_port: int, index: int) -> tuple[int, ManagedProcess]:
    port = free_port()
    conf = directory / f"sentinel-{index}.conf"
    # A sentinel rewrites its own file, so each gets one; one second to call a primary down keeps the test short.
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 5000\n"
                    f"sentinel parallel-syncs {MASTER} 1\n")
    proc = procs.start(f"sentinel-{index}", [redis_server_binary(), str(conf), "--sentinel"])
    return port, proc


async def _answers(port: int, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(redis_answers, "127.0.0.1", port):
        assert proc.alive(), proc.log()
        assert time.monotonic() < deadline, f"port {port} did not answer"
        await asyncio.sleep(0.02)


async def _primary_and_replica(procs: ProcessGroup, tmp_path: Path) -> tuple[OwnRedis, OwnRedis]:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    # No diskless-sync delay: the replica is in sync a moment after it starts, not five seconds later.
    primary = OwnRedis(procs, tmp_path / "primary", (*EPHEMERAL, "--repl-diskless-sync-delay", "0"))
    await primary.start()
    replica = OwnRedis(procs, tmp_path / "replica", (*EPHEMERAL, "--replicaof", "127.0.0.1", str(primary.port)))
    await replica.start()
    return primary, replica


@pytest.fixture
async def sentinel_setup(procs: ProcessGroup, tmp_path: Path) -> AsyncIterator[SentinelSetup]:
    primary, replica = await _primary_and_replica(procs, tmp_path)
    ports = []
    for index in range(3):
        port, proc = _start_sentinel(procs, tmp_path, primary.port, index)
        await _answers(port, proc)
        ports.append(port)
    setup = SentinelSetup(primary, replica, ports)
    client = aioredis.Redis(port=replica.port, decode_responses=True)
    try:
        async def replica_synced() -> bool:
            info = await client.info("replication")
            return info.get("master_link_status") == "up"

        await eventually(replica_synced, timeout_s=15)
    finally:
        await client.aclose()
    yield setup


async def _open(http: aiohttp.ClientSession, node: NodeProc, user: str) -> Client:
    client = Client(await http.ws_connect(node.ws_url, params={"token": make_token(user)}))
    welcome = await client.next()
    assert welcome["type"] == "welcome", welcome
    return client


async def _status(http: aiohttp.ClientSession, node: NodeProc) -> int:
    async with http.get(f"{node.url}/health") as response:
        return response.status


async def test_sentinel_failover_pushes_go_on(procs: ProcessGroup, sentinel_setup: SentinelSetup) -> None:
    prefix = unique_prefix("sentinel")
    # --route-grace: the session must stay open through the failover (the test follows it), however slow the
    # machine is; a failover longer than the default 5 s would hand sessions over with 1013, which is right too.
    nodes = [start_node_on(procs, name, sentinel_setup.url, prefix, "--route-grace", "30")
             for name in ("node-a", "node-b")]
    async with aiohttp.ClientSession() as http:
        alice = await _open(http, nodes[0], "alice")
        status, body = await push(http, nodes[1], {"to": {"users": ["alice"]}, "module": "m", "data": {"n": 0}})
        assert status == 202, body
        first = await alice.next_of("message")
        assert first["data"] == {"n": 0}

        # The replica holds what was answered so far (asynchronous replication: wait for it before the kill).
        primary_client = aioredis.Redis(port=sentinel_setup.primary.port)
        try:
            assert await primary_client.execute_command("WAIT", 1, 5000) == 1
        finally:
            await primary_client.aclose()
        assert sentinel_setup.primary.proc is not None
        sentinel_setup.primary.proc.kill()

        async def promoted() -> bool:
            return await sentinel_setup.master_port() == sentinel_setup.replica.port

        await eventually(promoted, timeout_s=30, interval_s=0.2)

        accepted: dict[str, int] = {}
        n = 1
        deadline = time.monotonic() + 30
        while len(accepted) < 5:
            assert time.monotonic() < deadline, f"pushes did not go on after the failover: {accepted}"
            status, body = await push(http, nodes[n % 2], {"to": {"users": ["alice"]}, "module": "m",
                                                           "data": {"n": n}})
            if status == 202:
                # online_sessions may be 0 while a node registers its sessions again after the failover; the
                # node resends from the store once it has, which the delivery check below holds it to.
                accepted[body["ids"]["alice"]] = n
            else:
                assert status == 503, body
                await asyncio.sleep(0.2)
            n += 1

        # Every push answered 202 after the failover arrives, once each, in id order.
        got: dict[str, int] = {}
        while not set(accepted) <= set(got):
            frame = await alice.next_of("message", timeout_s=15)
            got[frame["id"]] = frame["data"]["n"]
        assert [got[i] for i in accepted] == list(accepted.values())
        # The store survived on the promoted replica: ids go on from the one before the failover.
        assert min(int(i) for i in accepted) == int(first["id"]) + 1, (first["id"], accepted)

        # Once both nodes say UP again, a fresh connect works on either (before that, upgrades get 503 and
        # clients retry, as after any Redis outage).
        async def both_up() -> bool:
            return all([await _status(http, node) == 200 for node in nodes])

        await eventually(both_up, timeout_s=15)
        bob = await _open(http, nodes[1], "bob")
        status, body = await push(http, nodes[0], {"to": {"users": ["bob"]}, "module": "m", "data": {"x": 1}})
        assert status == 202, body
        assert (await bob.next_of("message"))["data"] == {"x": 1}
        await alice.ws.close()
        await bob.ws.close()


async def test_gateway_rate_limiter_follows_the_sentinel_failover(sentinel_setup: SentinelSetup) -> None:
    view = RequestView("GET", "/", headers=(("X-User", "alice"),), remote_addr="10.0.0.1")
    limit = RateLimit(1, 2, key="header:X-User")
    connection = redis_connection(sentinel_setup.url)
    # fail_open=False: a limiter that cannot reach Redis answers 503 instead of letting requests through, so the
    # 429s below can only come from the bucket on the current master.
    limiter = RedisRateLimiter(connection.client, key_prefix=unique_prefix("rl"), fail_open=False,
                               clock=lambda: 1_700_000_000, retry_interval_s=0)
    try:
        assert [(await limiter.check("api", limit, view)).status for _ in range(3)] == [200, 200, 429]
        assert sentinel_setup.primary.proc is not None
        primary = aioredis.Redis(port=sentinel_setup.primary.port)
        try:
            assert await primary.execute_command("WAIT", 1, 5000) == 1
        finally:
            await primary.aclose()
        sentinel_setup.primary.proc.kill()

        async def limited_on_the_new_master() -> bool:
            return (await limiter.check("api", limit, view)).status == 429

        await eventually(limited_on_the_new_master, timeout_s=30, interval_s=0.2)
        assert await sentinel_setup.master_port() == sentinel_setup.replica.port
    finally:
        await connection.aclose()


async def _push_keyed(http: aiohttp.ClientSession, node: NodeProc, user: str, n: int,
                      key: str) -> tuple[int, dict[str, Any]]:
    body = {"to": {"users": [user]}, "module": "m", "data": {"n": n}}
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": key}
    async with http.post(f"{node.url}/api/v1/push", json=body, headers=headers) as response:
        return response.status, await response.json()


def _start_node(procs: ProcessGroup, name: str, url: str, prefix: str, *extra: str) -> NodeProc:
    port = free_port()
    proc = procs.python(name, "wsnode", "--port", str(port), "--host", "127.0.0.1", "--node-id", name,
                        "--redis", url, "--redis-prefix", prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
                        *FAST, *extra)
    proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
    return NodeProc(proc=proc, node_id=name, port=port)


async def test_min_replicas_answers_503_until_a_replica_has_the_push_and_a_retry_stores_once(
        procs: ProcessGroup, tmp_path: Path) -> None:
    primary, replica = await _primary_and_replica(procs, tmp_path)
    prefix = unique_prefix("wait")
    node = _start_node(procs, "node-a", primary.url, prefix, "--redis-min-replicas", "1",
                       "--redis-wait-timeout", "0.5")
    replicas = aioredis.Redis(port=primary.port, decode_responses=True)
    try:
        async def connected_replicas() -> int:
            return int((await replicas.info("replication"))["connected_slaves"])

        async def replica_acknowledges() -> bool:
            """A replica past its initial sync that acknowledges writes (what WAIT counts)."""
            await replicas.set(f"{prefix}probe", "1")
            return int(await replicas.execute_command("WAIT", 1, 200)) >= 1

        await eventually(replica_acknowledges, timeout_s=15)
        async with aiohttp.ClientSession() as http:
            status, body = await _push_keyed(http, node, "carol", 1, "k1")
            assert status == 202, body

            await replica.stop()
            await eventually(lambda: _equals(connected_replicas(), 0), timeout_s=10)
            status, body = await _push_keyed(http, node, "carol", 2, "k2")
            assert status == 503, body
            assert "replica" in body["error"], body

            await replica.start()
            await eventually(replica_acknowledges, timeout_s=15)
            status, retried = await _push_keyed(http, node, "carol", 2, "k2")
            assert status == 202, retried
            again_status, again = await _push_keyed(http, node, "carol", 2, "k2")
            assert (again_status, again["ids"]) == (202, retried["ids"])

            # The store holds each push once: the 503'd write and its retry are one message.
            client = Client(await http.ws_connect(node.ws_url, params={"token": make_token("carol"),
                                                                       "since": "0"}))
            welcome = await client.next()
            assert welcome["type"] == "welcome", welcome
            replayed = [await client.next_of("message") for _ in range(2)]
            assert [m["data"]["n"] for m in replayed] == [1, 2]
            assert replayed[1]["id"] == retried["ids"]["carol"]
            assert welcome["unread"] == {"m": 2}
            await client.ws.close()
    finally:
        await replicas.aclose()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_min_replicas_every_202_survives_a_primary_sigkill(procs: ProcessGroup,
                                                                  sentinel_setup: SentinelSetup) -> None:
    prefix = unique_prefix("wait-failover")
    nodes = [_start_node(procs, name, sentinel_setup.url, prefix, "--redis-min-replicas", "1", "--route-grace", "30")
             for name in ("node-a", "node-b")]
    async with aiohttp.ClientSession() as http:
        alice = await _open(http, nodes[0], "alice")
        accepted: dict[str, int] = {}
        got: dict[str, int] = {}
        everything_arrived = asyncio.Event()

        async def read_alice() -> None:
            # Reading all along also answers the node's pings (aiohttp answers them only while receiving).
            while True:
                frame = await alice.next_of("message", timeout_s=120)
                got.setdefault(frame["id"], frame["data"]["n"])
                if len(accepted) >= 40 and set(accepted) <= set(got):
                    everything_arrived.set()

        reader = asyncio.create_task(read_alice())
        n = 0

        async def push_until(count: int, *, during: Callable[[], Awaitable[None]] | None = None) -> None:
            nonlocal n
            deadline = time.monotonic() + 45
            while len(accepted) < count:
                assert time.monotonic() < deadline, f"pushes did not go on: {len(accepted)} accepted"
                n += 1
                status, body = await _push_keyed(http, nodes[n % 2], "alice", n, f"p{n}")
                if status == 202:
                    accepted[body["ids"]["alice"]] = n
                else:
                    assert status == 503, body
                    if during is not None:
                        await during()
                    await asyncio.sleep(0.1)

        await push_until(20)
        assert sentinel_setup.primary.proc is not None
        sentinel_setup.primary.proc.kill()
        old_primary_back = False

        async def bring_back_the_old_primary() -> None:
            # With one replica, the promoted one has none left and every WAIT 1 fails (503, as it should); the
            # old primary restarted empty is turned into its replica by the sentinels, and 202s come back. It comes
            # back only once every sentinel knows the new master, as an operator would do it: a sentinel still on
            # the old configuration would make the promoted replica resync from the empty old primary.
            nonlocal old_primary_back
            if not old_primary_back and await sentinel_setup.all_agree_on(sentinel_setup.replica.port):
                await sentinel_setup.primary.start()
                old_primary_back = True

        await push_until(40, during=bring_back_the_old_primary)
        assert old_primary_back
        # Every push answered 202 reaches alice: once each after dropping duplicate ids, in id order.
        if not set(accepted) <= set(got):
            await asyncio.wait_for(everything_arrived.wait(), 20)
        reader.cancel()
        ids = sorted(got, key=int)
        assert [got[i] for i in ids if i in accepted] == [accepted[i] for i in sorted(accepted, key=int)]
        assert [int(i) for i in ids] == list(range(int(ids[0]), int(ids[0]) + len(ids)))
        await alice.ws.close()
