"""Redis Sentinel (CONTRACT section 7): a primary, a replica and three sentinels, all real redis-servers of the test's
own. Two nodes follow `redis+sentinel://.../mymaster`; the primary is SIGKILLed and pushes go on after the failover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.model import RateLimit, RequestView
from gateway.ratelimit_redis import RedisRateLimiter, redis_connection
from tests.functional.test_outage_redis import EPHEMERAL, OwnRedis, start_node_on
from tests.harness import ManagedProcess, ProcessGroup, free_port, redis_answers, redis_server_binary, unique_prefix
from tests.wsnode.conftest import Client, NodeProc, eventually, make_token, push

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

    async def master_port(self) -> int:
        sentinel = aioredis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        try:
            _host, port = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            return int(port)
        finally:
            await sentinel.aclose()


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


@pytest.fixture
async def sentinel_setup(procs: ProcessGroup, tmp_path: Path) -> AsyncIterator[SentinelSetup]:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    # No diskless-sync delay: the replica is in sync a moment after it starts, not five seconds later.
    primary = OwnRedis(procs, tmp_path / "primary", (*EPHEMERAL, "--repl-diskless-sync-delay", "0"))
    await primary.start()
    replica = OwnRedis(procs, tmp_path / "replica", (*EPHEMERAL, "--replicaof", "127.0.0.1", str(primary.port)))
    await replica.start()
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
    nodes = [start_node_on(procs, name, sentinel_setup.url, prefix) for name in ("node-a", "node-b")]
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
