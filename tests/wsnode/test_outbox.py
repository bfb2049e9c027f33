"""The transactional outbox (wsnode/outbox/) over the machine's PostgreSQL and MariaDB, real nodes and Redis.

Each test has a database of its own (tests/wsnode/brokers.py), so the table is always `wsgate_outbox`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import asyncpg
import pytest
import redis.asyncio as aioredis

from harness import ROOT, ProcessGroup, RedisInfo, unique_prefix
from tests.functional.test_outage_redis import EPHEMERAL, OwnRedis, start_node_on
from tests.wsnode.brokers import PrivatePostgres, mysql_dsn, node_ready, pg_dsn, private_postgres
from tests.wsnode.conftest import WITH_KEY, Connect, NodeProc, StartNode, eventually
from wsnode.outbox.ddl import dedupe_key, first_id
from wsnode.outbox.mysql import connect_args

__all__ = ["mysql_dsn", "pg_dsn", "private_postgres"]  # the fixtures, imported for pytest

INSERT = "INSERT INTO wsgate_outbox (payload) VALUES ($1)"


def body(user: str, data: Any) -> str:
    return json.dumps({"to": {"users": [user]}, "module": "billing", "event": "paid", "data": data})


def init(dsn: str) -> str:
    done = subprocess.run([sys.executable, "-m", "wsnode.outbox", "init", "--dsn", dsn], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def insert(dsn: str, payloads: list[str]) -> None:
    """One transaction, as a backend writing its business change and its notifications together."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.executemany(INSERT, [(p,) for p in payloads])
    finally:
        await conn.close()


async def query(dsn: str, sql: str, *, method: str = "fetchval") -> Any:
    """One statement on a connection of its own (`method`: an asyncpg Connection method)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await getattr(conn, method)(sql)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str) -> Any:
    return await query(dsn, sql)


async def outbox_node(start: StartNode, http: aiohttp.ClientSession, dsn: str, *extra: str,
                      name: str = "node-a") -> NodeProc:
    """A node draining the outbox at `dsn` (created first), once its outbox consumer is up."""
    init(dsn)
    node = start(name, "--outbox-dsn", dsn, *extra)
    await eventually(lambda: _up(http, node), timeout_s=20)
    return node


async def outbox_state(http: aiohttp.ClientSession, node: NodeProc) -> dict[str, Any]:
    async with http.get(f"{node.url}/health", headers=WITH_KEY) as resp:
        state: dict[str, Any] = (await resp.json()).get("outbox", {})
        return state


async def _counts(http: aiohttp.ClientSession, node: NodeProc, *, handled: int, dead: int = 0) -> Any:
    state = await outbox_state(http, node)
    return state if (state.get("handled"), state.get("dead_letters")) == (handled, dead) else None


async def _up(http: aiohttp.ClientSession, node: NodeProc) -> bool:
    return (await outbox_state(http, node)).get("status") == "UP"


async def test_outbox_init_is_idempotent_and_a_new_table_s_ids_start_at_the_clock(pg_dsn: str) -> None:
    before = first_id(time.time())
    assert "created: wsgate_outbox" in init(pg_dsn)
    assert "already there" in init(pg_dsn)
    await insert(pg_dsn, [body("x", 1)])
    assert await fetchval(pg_dsn, "SELECT min(id) FROM wsgate_outbox") >= before
    assert await fetchval(pg_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'wsgate_outbox_notify'") == 1
    assert await fetchval(pg_dsn, "SELECT created_at IS NOT NULL FROM wsgate_outbox") is True


async def test_committed_rows_are_pushed_at_once_rolled_back_never_and_poison_rows_dead_lettered(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, pg_dsn: str) -> None:
    # Polling every 60 s: only the NOTIFY of the commit can bring the rows within the test's deadline.
    node = await outbox_node(start_node, http, pg_dsn, "--outbox-poll", "60")
    tab, _ = await connect(node, "eli")
    conn = await asyncpg.connect(pg_dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(INSERT, body("eli", "rolled back"))
        await tx.rollback()
        async with conn.transaction():
            await conn.execute(INSERT, body("eli", 1))
            await conn.execute(INSERT, json.dumps({"to": {"users": ["eli"]}, "data": "no module"}))
            await conn.execute(INSERT, body("eli", 2))
    finally:
        await conn.close()
    got = await tab.messages(2, timeout_s=20)
    assert [m["data"] for m in got] == [1, 2] and got[0]["module"] == "billing"
    await eventually(lambda: _counts(http, node, handled=2, dead=1), timeout_s=20)
    dead = await _dead_rows(pg_dsn)
    assert len(dead) == 1 and "module" in dead[0]["error"] and json.loads(dead[0]["payload"])["data"] == "no module"
    assert await fetchval(pg_dsn, "SELECT count(*) FROM wsgate_outbox") == 0
    # The consumer goes on after a dead letter.
    await insert(pg_dsn, [body("eli", 3)])
    assert (await tab.next_of("message", timeout_s=20))["data"] == 3
    assert all(m["data"] != "rolled back" for m in tab.frames if m.get("type") == "message")
    async with http.get(f"{node.url}/metrics", headers=WITH_KEY) as resp:
        text = await resp.text()
    assert 'wsnode_ingest_dead_letters_total{source="outbox"} 1.0' in text
    assert 'wsnode_ingest_lag_seconds{source="outbox"} 0.0' in text


async def _dead_rows(dsn: str) -> list[Any]:
    return list(await query(dsn, "SELECT id, payload::text AS payload, error FROM wsgate_outbox_dead", method="fetch"))


async def test_outbox_redis_down_nothing_is_deleted_and_everything_arrives_after_redis_returns(
        procs: ProcessGroup, tmp_path: Path, connect: Connect, pg_dsn: str) -> None:
    init(pg_dsn)
    redis = OwnRedis(procs, tmp_path, EPHEMERAL)
    await redis.start()
    node = start_node_on(procs, "node-a", redis.url, unique_prefix("outbox"), "--outbox-dsn", pg_dsn,
                         "--outbox-poll", "0.2")
    async with aiohttp.ClientSession() as http:
        await eventually(lambda: _up(http, node), timeout_s=20)
        await redis.stop()
        await insert(pg_dsn, [body("fay", n) for n in range(30)])
        await eventually(lambda: _retries_at_least(http, node, 3), timeout_s=20)
        assert await fetchval(pg_dsn, "SELECT count(*) FROM wsgate_outbox") == 30
        assert (await outbox_state(http, node))["lag_s"] > 0
        await redis.start()
        await eventually(lambda: _counts(http, node, handled=30), timeout_s=30)
        assert await fetchval(pg_dsn, "SELECT count(*) FROM wsgate_outbox") == 0
        await eventually(lambda: node_ready(http, node), timeout_s=20)  # registered in Redis again
        tab, _ = await connect(node, "fay")
        got = await tab.messages(30, timeout_s=20)
        assert [m["data"] for m in got] == list(range(30))


async def _retries_at_least(http: aiohttp.ClientSession, node: NodeProc, count: int) -> bool:
    state = await outbox_state(http, node)
    return bool(state.get("retries", 0) >= count and state.get("handled") == 0)


async def test_two_nodes_share_one_outbox_without_double_delivery(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, pg_dsn: str) -> None:
    nodes = [await outbox_node(start_node, http, pg_dsn, "--outbox-batch", "5", name=name)
             for name in ("node-a", "node-b")]
    tab, _ = await connect(nodes[0], "gus")
    for start in range(0, 300, 20):  # many small transactions, as backends write them
        await insert(pg_dsn, [body("gus", n) for n in range(start, start + 20)])
    got = await tab.messages(300, timeout_s=30)
    assert sorted(m["data"] for m in got) == list(range(300))
    # A batch's rows are counted once its transaction commits, a moment after their pushes went out.
    states = await eventually(lambda: _handled_in_all(http, nodes, 300), timeout_s=20)
    assert all(s["handled"] > 0 for s in states), states  # both took part


async def _handled_in_all(http: aiohttp.ClientSession, nodes: list[NodeProc], total: int) -> Any:
    states = [await outbox_state(http, node) for node in nodes]
    return states if sum(s["handled"] for s in states) == total else None


async def test_sigkill_mid_batch_every_outbox_row_is_pushed_exactly_once(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str, pg_dsn: str) -> None:
    total, batch = 600, 100
    init(pg_dsn)
    await insert(pg_dsn, [body("hal", n) for n in range(total)])
    ids = [r["id"] for r in await _rows(pg_dsn)]
    # A SHARE lock lets the node claim rows (FOR UPDATE takes ROW SHARE) but holds its DELETE (ROW EXCLUSIVE): the
    # node pushes its first batch and then waits, exactly between its pushes and its commit.
    blocker = await asyncpg.connect(pg_dsn)
    redis = aioredis.from_url(redis_server.url)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("LOCK TABLE wsgate_outbox IN SHARE MODE")
        a = start_node("node-a", "--outbox-dsn", pg_dsn, "--outbox-batch", str(batch))
        markers = [f"{redis_prefix}wsgate:dedupe:{dedupe_key(i)}" for i in ids]
        await eventually(lambda: _exists_is(redis, markers, batch), timeout_s=30)  # the first batch is pushed
        a.proc.kill()
        await hold.rollback()
        assert len(await _rows(pg_dsn)) == total  # nothing was deleted: the crash rolled the claim back
        b = start_node("node-b", "--outbox-dsn", pg_dsn, "--outbox-batch", str(batch))
        await eventually(lambda: _empty(pg_dsn), timeout_s=30)
        tab, _ = await connect(b, "hal", since="0")
        got = await tab.messages(total, timeout_s=30)
        assert sorted(m["data"] for m in got) == list(range(total))  # each row once, the re-pushed batch too
        assert len({m["id"] for m in got}) == total
        await eventually(lambda: _counts(http, b, handled=total), timeout_s=20)
    finally:
        await redis.aclose()
        await blocker.close()


async def _exists_is(redis: aioredis.Redis, keys: list[str], count: int) -> bool:
    return int(await redis.exists(*keys)) == count


async def _handled_some(http: aiohttp.ClientSession, node: NodeProc) -> bool:
    return bool((await outbox_state(http, node))["handled"] >= 1)


async def _rows(dsn: str) -> list[Any]:
    return list(await query(dsn, "SELECT id FROM wsgate_outbox ORDER BY id", method="fetch"))


async def _empty(dsn: str) -> bool:
    return await fetchval(dsn, "SELECT count(*) FROM wsgate_outbox") == 0


async def test_outbox_consumer_resumes_after_the_database_drops_its_connections(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, pg_dsn: str) -> None:
    node = await outbox_node(start_node, http, pg_dsn, "--outbox-poll", "60")
    # What a database restart does to the node (the machine's PostgreSQL stays up for everyone else, so this is the
    # connection-kill route): the server ends every backend of the node's database.
    terminated = await fetchval(pg_dsn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert terminated == 2  # the claiming connection and the listening one
    await eventually(lambda: _reconnected(http, node), timeout_s=30)
    tab, _ = await connect(node, "ida")
    await insert(pg_dsn, [body("ida", "after")])
    assert (await tab.next_of("message", timeout_s=20))["data"] == "after"


async def _reconnected(http: aiohttp.ClientSession, node: NodeProc) -> bool:
    state = await outbox_state(http, node)
    return bool(state.get("status") == "UP" and state.get("connects", 0) >= 2)


async def test_mariadb_outbox_pushes_rows_and_dead_letters_poison_ones(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, mysql_dsn: str) -> None:
    assert "created" in init(mysql_dsn)
    node = await outbox_node(start_node, http, mysql_dsn, "--outbox-poll", "0.1")  # init again: idempotent
    tab, _ = await connect(node, "jo")
    conn = await aiomysql.connect(**connect_args(mysql_dsn))
    try:
        async with conn.cursor() as cur:
            await cur.execute("INSERT INTO wsgate_outbox (payload) VALUES (%s)", (body("jo", "rolled back"),))
            await conn.rollback()
            await cur.execute("INSERT INTO wsgate_outbox (payload) VALUES (%s)", (body("jo", 1),))
            await cur.execute("INSERT INTO wsgate_outbox (payload) VALUES (%s)", ('{"to":{"all":false}}',))
            await cur.execute("INSERT INTO wsgate_outbox (payload) VALUES (%s)", (body("jo", 2),))
            await conn.commit()
        got = await tab.messages(2, timeout_s=20)
        assert [m["data"] for m in got] == [1, 2]
        await eventually(lambda: _counts(http, node, handled=2, dead=1), timeout_s=20)
        async with conn.cursor() as cur:
            await cur.execute("SELECT error FROM wsgate_outbox_dead")
            dead = await cur.fetchall()
            await cur.execute("SELECT COUNT(*) FROM wsgate_outbox")
            left = await cur.fetchone()
        await conn.commit()
        assert len(dead) == 1 and left == (0,)
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_outbox_consumer_resumes_by_itself_after_its_postgresql_restarts(
        private_postgres: PrivatePostgres, start_node: StartNode, connect: Connect,
        http: aiohttp.ClientSession) -> None:
    dsn = private_postgres.dsn
    node = await outbox_node(start_node, http, dsn, "--outbox-poll", "0.5")
    tab, _ = await connect(node, "kim")
    await insert(dsn, [body("kim", "before")])
    first = await tab.next_of("message", timeout_s=20)
    assert first["data"] == "before"
    await asyncio.to_thread(private_postgres.stop)
    state = await eventually(lambda: _outbox_down(http, node), timeout_s=30)
    assert state["error"]
    await asyncio.to_thread(private_postgres.start)
    # A new tab: the first read nothing meanwhile, so the node may have dropped it for its unanswered pings.
    tab, _ = await connect(node, "kim", since=first["id"])
    # Rows committed while the node is still reconnecting (no one listened for their notification) come too.
    await insert(dsn, [body("kim", n) for n in range(5)])
    got = await tab.messages(5, timeout_s=30)
    assert [m["data"] for m in got] == list(range(5))
    state = await outbox_state(http, node)
    assert state["status"] == "UP" and state["connects"] >= 2


async def _outbox_down(http: aiohttp.ClientSession, node: NodeProc) -> Any:
    state = await outbox_state(http, node)
    return state if state.get("status") == "DOWN" else None
