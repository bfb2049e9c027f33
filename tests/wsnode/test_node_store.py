"""Functional tests of the per-user store: offline delivery, unread counts, since= replay, the replay/live seam."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import WITH_KEY, Connect, NodeProc, StartNode, api_get, eventually, make_token, push


async def _push_n(http: aiohttp.ClientSession, node: NodeProc, user: str, count: int, *, module: str = "notice",
                  start: int = 0) -> list[str]:
    ids = []
    for n in range(start, start + count):
        status, body = await push(http, node, {"to": {"users": [user]}, "module": module, "data": n})
        assert status == 202, body
        ids.append(body["ids"][user])
    return ids


async def test_offline_messages_arrive_in_order_on_connect_with_unread_counts(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    ids = await _push_n(http, a, "olga", 3, module="notice")
    ids += await _push_n(http, b, "olga", 2, module="orders", start=3)
    status, body = await push(http, a, {"to": {"users": ["olga"]}, "module": "live", "store": False})
    assert status == 202 and body["stored"] == 0 and body["online_sessions"] == 0
    client, welcome = await connect(b, "olga")
    assert welcome["unread"] == {"notice": 3, "orders": 2}
    assert "recovered" not in welcome
    messages = await client.messages(5)
    assert [m["id"] for m in messages] == ids and [m["data"] for m in messages] == [0, 1, 2, 3, 4]
    assert len(set(ids)) == 5
    _, unread = await api_get(http, a, "/api/v1/users/olga/unread")
    assert unread == {"user": "olga", "unread": {"notice": 3, "orders": 2}}
    await client.send({"type": "ping"})
    assert await client.next() == {"type": "pong"}  # the store:false push was not kept


async def test_since_replays_exactly_the_missing_tail(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a")
    ids = await _push_n(http, a, "pete", 5)
    client, welcome = await connect(a, "pete", since=ids[1])
    assert welcome["recovered"] is True
    assert [m["id"] for m in await client.messages(3)] == ids[2:]
    await client.send({"type": "ping"})
    assert await client.next() == {"type": "pong"}
    up_to_date, welcome = await connect(a, "pete", since=ids[-1])
    assert welcome["recovered"] is True
    await up_to_date.send({"type": "ping"})
    assert await up_to_date.next() == {"type": "pong"}


async def test_since_older_than_the_store_says_not_recovered(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--store-max-count", "3")
    ids = await _push_n(http, a, "quinn", 6)
    client, welcome = await connect(a, "quinn", since=ids[0])
    assert welcome["recovered"] is False
    assert welcome["unread"] == {"notice": 3}  # unread counts follow what the store still holds
    assert [m["id"] for m in await client.messages(3)] == ids[3:]
    _, future = await connect(a, "quinn", since=str(10**17))
    assert future["recovered"] is False


async def test_ack_in_one_tab_updates_the_count_in_the_other(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    ids = await _push_n(http, a, "rita", 2)
    tab1, w1 = await connect(a, "rita")
    tab2, w2 = await connect(b, "rita")
    assert w1["unread"] == w2["unread"] == {"notice": 2}
    await tab1.messages(2)
    await tab2.messages(2)
    await tab1.send({"type": "ack", "id": ids[0]})
    await tab1.send({"type": "ack", "id": ids[0]})  # a second ack of the same id does not count twice
    await tab2.send({"type": "ack", "id": ids[0]})
    assert (await tab2.next_of("unread"))["unread"] == {"notice": 1}
    assert (await tab1.next_of("unread"))["unread"] == {"notice": 1}
    await tab2.send({"type": "ack", "id": ids[1]})
    assert (await tab1.next_of("unread"))["unread"] == {}
    _, unread = await api_get(http, b, "/api/v1/users/rita/unread")
    assert unread["unread"] == {}
    # A reconnect without since gets only what is unread: nothing.
    again, welcome = await connect(b, "rita")
    assert welcome["unread"] == {}
    await again.send({"type": "ping"})
    assert await again.next() == {"type": "pong"}


async def test_concurrent_acks_never_double_decrement(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    ids = await _push_n(http, a, "sam", 4)
    tabs = [(await connect(node, "sam"))[0] for node in (a, b, a, b)]
    await asyncio.gather(*(tab.send({"type": "ack", "id": i}) for tab in tabs for i in ids[:2]))

    async def settled() -> bool:
        _, body = await api_get(http, a, "/api/v1/users/sam/unread")
        return body["unread"] == {"notice": 2}

    await eventually(settled)


async def test_replay_racing_live_pushes_has_no_gap_reorder_or_duplicate(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    total = 120
    await _push_n(http, a, "tess", 20)

    async def producer() -> None:
        await _push_n(http, b, "tess", total - 20, start=20)

    task = asyncio.create_task(producer())
    await asyncio.sleep(0)  # let pushes run while the sessions connect and replay
    clients = []
    for node in (a, b, a):
        clients.append((await connect(node, "tess", since="0"))[0])
    await task
    for client in clients:
        messages = await client.messages(total, timeout_s=10)
        assert [m["data"] for m in messages] == list(range(total))
        first = int(messages[0]["id"])  # a user's first id comes from the clock, then ids grow by one
        assert [int(m["id"]) for m in messages] == list(range(first, first + total))
        await client.send({"type": "ping"})
        assert await client.next_of("pong")  # nothing duplicated after the last one


async def test_store_false_reaches_only_sessions_online(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    await _push_n(http, a, "uma", 1)
    online, welcome = await connect(b, "uma")
    stored_id = (await online.next_of("message"))["id"]
    status, body = await push(http, a, {"to": {"users": ["uma"]}, "module": "typing", "data": 1, "store": False})
    assert status == 202 and body == {"id": body["id"], "online_sessions": 1, "stored": 0, "ids": {}}
    ephemeral = await online.next_of("message")
    assert ephemeral["module"] == "typing" and ephemeral["id"] not in (stored_id, "")
    # The ephemeral id still works as since: it means "after the last stored message".
    later, welcome = await connect(a, "uma", since=ephemeral["id"])
    assert welcome["recovered"] is True and welcome["unread"] == {"notice": 1}
    await later.send({"type": "ping"})
    assert await later.next() == {"type": "pong"}


async def test_sigkilled_node_leaves_no_session_in_redis_after_expiry(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    _, doomed = await connect(a, "vera")
    _, kept = await connect(b, "vera")
    a.proc.kill()
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        async def gone() -> bool:
            _, body = await api_get(http, b, "/api/v1/users/vera/presence")
            members = await redis.zrange(f"{redis_prefix}wsgate:user:vera:sessions", 0, -1)
            everyone = await redis.zrange(f"{redis_prefix}wsgate:sessions", 0, -1)
            session_key = await redis.exists(f"{redis_prefix}wsgate:session:{doomed['session']}")
            return ([s["session"] for s in body["sessions"]] == [kept["session"]]
                    and members == [f"node-b|{kept['session']}"] and everyone == [kept["session"]]
                    and session_key == 0)

        await eventually(gone, timeout_s=8)
    finally:
        await redis.aclose()


async def test_disconnect_api_closes_every_session_of_the_user(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    tabs = [(await connect(node, "walt"))[0] for node in (a, b)]
    async with http.post(f"{a.url}/api/v1/users/walt/disconnect",
                         headers={"Authorization": "Bearer key-one"}) as resp:
        assert resp.status == 200 and (await resp.json())["sessions"] == 2
    for tab in tabs:
        assert await tab.closed_with() == 1008


async def test_lost_subscription_is_made_again_and_missed_messages_are_resent(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "xavi")
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        name = f"wsnode-{redis_prefix}node-a"
        subscribers = [c for c in await redis.client_list() if c["name"] == name and int(c.get("sub", 0)) > 0]
        assert len(subscribers) == 1
        await redis.client_kill_filter(_id=subscribers[0]["id"])
        ids = await _push_n(http, a, "xavi", 3)  # some of these may be published while nobody listens
    finally:
        await redis.aclose()
    messages = await client.messages(3)
    assert [m["id"] for m in messages] == ids

    async def resubscribed() -> bool:
        async with http.get(f"{a.url}/metrics", headers=WITH_KEY) as resp:
            text = await resp.text()
        async with http.get(f"{a.url}/health") as resp:
            return resp.status == 200 and "wsnode_pubsub_reconnects_total 1.0" in text

    await eventually(resubscribed)
    await client.send({"type": "ping"})
    assert await client.next_of("pong")
    assert [f["id"] for f in client.frames if f["type"] == "message"] == ids  # nothing twice


async def test_retried_push_with_the_same_idempotency_key_is_delivered_once(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    client, _ = await connect(b, "yara")
    body = {"to": {"users": ["yara"]}, "module": "billing", "data": "invoice"}
    answers = []
    for node in (a, b):
        async with http.post(f"{node.url}/api/v1/push", json=body,
                             headers={"Authorization": "Bearer key-one", "Idempotency-Key": "order-17"}) as resp:
            assert resp.status == 202
            answers.append(await resp.json())
    assert answers[0] == answers[1]
    message = await client.next_of("message")
    assert message["id"] == answers[0]["ids"]["yara"]
    await client.send({"type": "ping"})
    await client.next_of("pong")
    assert [f["id"] for f in client.frames if f["type"] == "message"] == [message["id"]]
    _, unread = await api_get(http, a, "/api/v1/users/yara/unread")
    assert unread["unread"] == {"billing": 1}


async def test_sigkill_mid_stream_loses_nothing_for_clients_that_resume_with_since(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    users = [f"k{i}" for i in range(12)]
    total = 40
    seen: dict[str, list[int]] = {u: [] for u in users}
    ids: dict[str, set[str]] = {u: set() for u in users}
    halfway = asyncio.Event()

    async def client(user: str, first: NodeProc) -> None:
        node, since = first, None
        while len(set(seen[user])) < total:
            params = {"token": make_token(user)} | ({"since": since} if since else {})
            try:
                async with http.ws_connect(node.ws_url, params=params) as ws:
                    async for msg in ws:
                        frame = json.loads(msg.data)
                        if frame["type"] == "message":
                            since = frame["id"]
                            if frame["id"] not in ids[user]:  # at least once: drop duplicate ids
                                ids[user].add(frame["id"])
                                seen[user].append(frame["data"])
                            if len(set(seen[user])) == total:
                                return
            except aiohttp.ClientError:
                pass
            node = b  # reconnect to the survivor

    async def producer() -> None:
        for n in range(total):
            for user in users:
                status, _ = await push(http, b, {"to": {"users": [user]}, "module": "seq", "data": n})
                assert status == 202
            if n == total // 2:
                halfway.set()

    tasks = [asyncio.create_task(client(u, a if i % 2 else b)) for i, u in enumerate(users)]
    producing = asyncio.create_task(producer())
    await halfway.wait()
    a.proc.kill()
    await asyncio.wait_for(asyncio.gather(producing, *tasks), 30)
    for user in users:
        assert seen[user] == list(range(total)), user  # every number once, in order
    print(f"checked {len(users)} users x {total} messages after a SIGKILL mid-stream")
