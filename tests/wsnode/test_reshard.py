"""`python -m wsnode.reshard` on real redis-servers and nodes: 3 shards become 4 (docs/scaling.md, "Changing the shard
list"); the plan it follows is tested in test_reshard_plan.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness import ProcessGroup, unique_prefix
from tests.functional.test_outage_redis import EPHEMERAL, OwnRedis, start_node_on
from tests.wsnode.conftest import API_KEY, NodeProc, api_get, push
from wsnode.keys import Keys
from wsnode.sharding import shard_of

USERS = [f"rs{i}" for i in range(60)]


@dataclass
class Shards:
    """Four redis-servers; the old list is the first three."""

    redis: list[OwnRedis]
    clients: list[aioredis.Redis]
    prefix: str
    procs: ProcessGroup
    http: aiohttp.ClientSession
    runs: list[int] = field(default_factory=list)

    def urls(self, count: int) -> str:
        return ",".join(r.url for r in self.redis[:count])

    async def reshard(self, *extra: str) -> tuple[int, str]:
        self.runs.append(len(self.runs))
        proc = self.procs.python(f"reshard-{len(self.runs)}", "wsnode.reshard", "--from", self.urls(3),
                                 "--to", self.urls(4), "--prefix", self.prefix, *extra)
        code = await asyncio.to_thread(proc.wait_exit, timeout_s=60)
        return code, proc.log()

    async def user_keys(self, shard: int, user: str) -> list[str]:
        keys = Keys(self.prefix)
        found = [k async for k in self.clients[shard].scan_iter(match=f"{keys.user_base(user)}:*")]
        found += [k async for k in self.clients[shard].scan_iter(match=f"{self.prefix}wsgate:reshard:{user}:*")]
        return sorted(found)

    async def history(self, shard: int, user: str) -> tuple[list[tuple[str, float]], str | None, dict[str, str]]:
        base = Keys(self.prefix).user_base(user)
        client = self.clients[shard]
        return (await client.zrange(f"{base}:msgs", 0, -1, withscores=True), await client.get(f"{base}:seq"),
                await client.hgetall(f"{base}:unread"))


@pytest.fixture
async def shards(procs: ProcessGroup, tmp_path: Path) -> AsyncIterator[Shards]:
    redis = []
    for i in range(4):
        (tmp_path / f"r{i}").mkdir()
        server = OwnRedis(procs, tmp_path / f"r{i}", EPHEMERAL)
        await server.start()
        redis.append(server)
    clients = [aioredis.Redis(host="127.0.0.1", port=r.port, decode_responses=True) for r in redis]
    async with aiohttp.ClientSession() as http:
        try:
            yield Shards(redis, clients, unique_prefix("reshard"), procs, http)
        finally:
            for client in clients:
                await client.aclose()


async def _push(http: aiohttp.ClientSession, node: NodeProc, users: list[str], module: str,
                key: str | None = None) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"to": {"users": users}, "module": module, "data": {"n": module}}).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", **({"Idempotency-Key": key} if key else {})}
    async with http.post(f"{node.url}/api/v1/push", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


def _moved() -> list[str]:
    moved = [u for u in USERS if shard_of(u, 3) != shard_of(u, 4)]
    assert moved and all(shard_of(u, 4) == 3 for u in moved)  # jump hash: every mover goes to the new shard
    return moved


async def test_reshard_3_to_4_keeps_history_unread_and_idempotency(shards: Shards) -> None:
    old = start_node_on(shards.procs, "node-old", shards.urls(3), shards.prefix)
    for user in USERS:
        assert (await _push(shards.http, old, [user], "m", key=f"k-{user}"))[0] == 202
    status, multi = await _push(shards.http, old, USERS, "n", key="multi")
    assert status == 202 and set(multi["ids"]) == set(USERS)
    moved = _moved()
    before = {u: await shards.history(shard_of(u, 3), u) for u in moved}
    assert all(len(msgs) == 2 and unread == {"m": "1", "n": "1"} for msgs, _, unread in before.values())
    old.proc.stop()

    code, log = await shards.reshard("--dry-run")
    assert code == 0, log
    assert f"users scanned: {len(USERS)}; users would move: {len(moved)};" in log
    assert await shards.clients[3].dbsize() == 0  # a dry run writes nothing, not even the new shard's id

    dry = log.split("would move: ")[-1]
    code, log = await shards.reshard()
    assert code == 0, log
    assert f"users scanned: {len(USERS)}; users moved: {len(moved)}; keys moved: {4 * len(moved)};" in log
    # The dry run counted what the run did: a marker per mover, and the multi-user push's copied once to shard 3.
    assert f"idempotency markers copied: {len(moved) + 1}, deleted: {len(moved)};" in log
    assert log.split("moved: ")[-1] == dry, (log, dry)
    for user in moved:
        assert await shards.user_keys(shard_of(user, 3), user) == [], user  # nothing left behind
        msgs, seq, unread = await shards.history(3, user)
        assert (msgs, unread) == (before[user][0], before[user][2]), user
        assert int(seq or 0) >= int(before[user][1] or 0), user  # the counter never goes back
        assert await shards.clients[3].pttl(f"{Keys(shards.prefix).user_base(user)}:msgs") > 0
        assert await shards.clients[shard_of(user, 3)].exists(f"{shards.prefix}wsgate:dedupe:http:k-{user}") == 0
        assert await shards.clients[3].pttl(f"{shards.prefix}wsgate:dedupe:http:k-{user}") > 0

    new = start_node_on(shards.procs, "node-new", shards.urls(4), shards.prefix)  # the list was agreed by the tool
    for user in moved:
        status, body = await api_get(shards.http, new, f"/api/v1/users/{user}/unread")
        assert status == 200 and body["unread"] == {"m": 1, "n": 1}, (user, body)
        status, retried = await _push(shards.http, new, [user], "m", key=f"k-{user}")
        assert status == 202 and retried["ids"] == {user: str(int(before[user][0][0][1]))}, (user, retried)
    status, again = await _push(shards.http, new, USERS, "n", key="multi")
    assert status == 202 and again["ids"] == multi["ids"]
    for user in USERS:  # no retry stored anything twice, on any shard
        status, body = await api_get(shards.http, new, f"/api/v1/users/{user}/unread")
        assert body["unread"] == {"m": 1, "n": 1}, (user, body)

    code, log = await shards.reshard()
    assert code == 0, log
    # Only the old shards are scanned, and the movers have left them.
    assert (f"users scanned: {len(USERS) - len(moved)}; users moved: 0; keys moved: 0; idempotency markers copied: 0, "
            f"deleted: 0") in log


async def test_reshard_during_a_rolling_restart_loses_no_answered_push(shards: Shards) -> None:
    old = start_node_on(shards.procs, "node-old", shards.urls(3), shards.prefix)
    for user in USERS:
        assert (await _push(shards.http, old, [user], "m"))[0] == 202
    code, log = await shards.reshard()  # first pass: the list, and the history written so far
    assert code == 0, log
    new = start_node_on(shards.procs, "node-new", shards.urls(4), shards.prefix)
    answered: dict[str, list[str]] = {user: [] for user in USERS}  # the data of each push answered 202
    refused: list[tuple[int, dict[str, Any]]] = []
    pushing = True

    async def pushes(node: NodeProc, offset: int) -> int:
        count = 0
        while pushing or count < 20:
            user = USERS[(offset + count) % len(USERS)]
            data = f"{node.node_id}-{count}"
            status, body = await push(shards.http, node, {"to": {"users": [user]}, "module": "live", "data": data})
            if status == 202:
                answered[user].append(data)
            else:
                refused.append((status, body))
            count += 1
        return count

    # Both lists write at once, as in a rolling restart: the old node to the old shards, the new one to shard 3.
    writers = [asyncio.create_task(pushes(old, 0)), asyncio.create_task(pushes(new, 7))]
    code, log = await shards.reshard()
    assert code == 0, log
    pushing = False
    counts = await asyncio.gather(*writers)
    assert min(counts) >= 20
    old.proc.stop()  # the roll is over: nothing writes to the old places any more
    code, log = await shards.reshard()  # the final pass moves what the old node wrote meanwhile
    assert code == 0, log
    code, log = await shards.reshard()
    assert code == 0 and "users moved: 0; keys moved: 0" in log, log
    assert not refused and sum(len(ids) for ids in answered.values()) == sum(counts), refused
    for user in USERS:
        home = shard_of(user, 4)
        msgs, _, unread = await shards.history(home, user)
        stored = sorted(json.loads(frame)["data"] for frame, _ in msgs if json.loads(frame)["module"] == "live")
        assert stored == sorted(answered[user]), user  # each push answered 202 is there, once
        assert len(msgs) == 1 + len(answered[user]), user
        assert len({score for _, score in msgs}) == len(msgs), user  # no id holds two messages
        assert unread == ({"m": "1", "live": str(len(answered[user]))} if answered[user] else {"m": "1"}), user
        if home != shard_of(user, 3):
            assert await shards.user_keys(shard_of(user, 3), user) == [], user


def _frame(message_id: int, module: str) -> str:
    return f'{{"type":"message","id":"{message_id}","module":"{module}","data":1,"ts":1}}'


async def _write_user(client: aioredis.Redis, base: str, seq: int, modules: dict[int, str]) -> None:
    await client.set(f"{base}:seq", seq)
    for message_id, module in modules.items():
        await client.zadd(f"{base}:msgs", {_frame(message_id, module): message_id})
        await client.hset(f"{base}:unacked", str(message_id), module)
        await client.hincrby(f"{base}:unread", module, 1)
    for suffix in ("msgs", "unacked", "unread"):
        await client.pexpire(f"{base}:{suffix}", 600_000)


async def test_reshard_renumbers_an_id_both_shards_gave_and_finishes_an_interrupted_run(shards: Shards) -> None:
    movers = [u for u in USERS if shard_of(u, 3) == 0 and shard_of(u, 4) == 3]
    clash, interrupted, behind = movers[0], movers[1], movers[2]
    keys = Keys(shards.prefix)
    old, new = shards.clients[0], shards.clients[3]
    # A node on the old list and one on the new list each stored message 100 for `clash`.
    await _write_user(old, keys.user_base(clash), 100, {100: "m"})
    await _write_user(new, keys.user_base(clash), 100, {100: "n"})
    # Nodes on the new list gave `behind` id 500, one on the old list then stored 200: a session resuming after 500
    # would never be sent 200.
    await _write_user(old, keys.user_base(behind), 200, {200: "m"})
    await _write_user(new, keys.user_base(behind), 500, {500: "n"})
    # A run stopped after setting `interrupted`'s keys aside; a push on the old list then started fresh keys, whose
    # first id comes from the clock (push.lua).
    fresh = int(time.time() * 1000) + 60_000
    await _write_user(old, f"{shards.prefix}wsgate:reshard:{interrupted}", 7, {6: "m", 7: "m"})
    await _write_user(old, keys.user_base(interrupted), fresh, {fresh: "m"})

    code, log = await shards.reshard()
    assert code == 0, log
    assert "users moved: 3; keys moved: 16;" in log, log
    assert "messages renumbered (the target had given out their id): 2" in log, log

    msgs, seq, unread = await shards.history(3, clash)
    assert unread == {"m": "1", "n": "1"}
    assert msgs[0] == (_frame(100, "n"), 100.0)
    (renumbered, score), = msgs[1:]
    assert renumbered == _frame(int(score), "m") and score > 100 and int(seq or 0) >= score
    assert await new.hgetall(f"{keys.user_base(clash)}:unacked") == {"100": "n", str(int(score)): "m"}
    msgs, _, unread = await shards.history(3, interrupted)
    assert [int(s) for _, s in msgs] == [6, 7, fresh] and unread == {"m": "3"}
    msgs, _, unread = await shards.history(3, behind)
    assert msgs[0] == (_frame(500, "n"), 500.0) and int(msgs[1][1]) > 500 and msgs[1][0] == _frame(int(msgs[1][1]), "m")
    assert unread == {"m": "1", "n": "1"}
    for user in (clash, interrupted, behind):
        assert await shards.user_keys(0, user) == [], user
        assert 0 < await new.pttl(f"{keys.user_base(user)}:unread") <= 600_000


async def test_reshard_names_an_unreachable_shard_and_exits_non_zero(shards: Shards) -> None:
    await shards.redis[3].stop()
    code, log = await shards.reshard()
    assert code == 1 and "reshard: Redis failed" in log and str(shards.redis[3].port) in log, log
