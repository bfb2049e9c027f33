"""What one stored one-user push costs Redis at a real node (issue 19): one `EVALSHA` of push.lua per push, and the
commands that script runs, pinned so that a change to the script's work shows here.

As in test_connect_cost.py: the node runs on a redis-server of this test's own, `MONITOR` shows every command with
the client that sent it (commands run by a script as `lua`). Only calls naming the pushed user and, in the script,
commands on the user's keys and on the session's node (its liveness key, its channel) count; the node's own
background traffic touches neither within the long periods set below. The store is full (`--store-max-count`), so
every push also trims the oldest frame, as in the fan-out benchmark. Every push is received with its unread frame,
so the commands counted are those of a delivered push.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import redis.asyncio as aioredis

from tests.wsnode.conftest import Client, StartNode, make_token, push

QUIET = ("--session-ttl", "60", "--session-refresh", "20", "--pubsub-heartbeat", "10", "--pubsub-timeout", "30")
END = "push-cost-end"
USER = "pushcost"
MAX_COUNT = 3


async def _receive_push(client: Client, data: int) -> None:
    message = await client.next()
    assert message["type"] == "message" and message["data"] == data, message
    unread = await client.next()
    assert unread["type"] == "unread", unread


async def test_a_stored_push_is_one_script_call_of_pinned_commands(
        own_redis: aioredis.Redis, start_node: StartNode, http: aiohttp.ClientSession, redis_prefix: str) -> None:
    port = own_redis.connection_pool.connection_kwargs["port"]
    node = start_node("node-a", "--redis", f"redis://127.0.0.1:{port}/0", "--store-max-count", str(MAX_COUNT),
                      *QUIET)
    client = Client(await http.ws_connect(node.ws_url, params={"token": make_token(USER)}))
    assert (await client.next())["type"] == "welcome"
    # Loads the script and fills the store: not measured.
    for n in range(MAX_COUNT):
        status, _ = await push(http, node, {"to": {"users": [USER]}, "module": "m", "data": n})
        assert status == 202
        await _receive_push(client, n)

    pushes = 4
    wanted = (f"{redis_prefix}wsgate:user:{USER}", f"{redis_prefix}wsgate:node:node-a")
    seen: list[tuple[str, str]] = []
    async with own_redis.monitor() as monitor:
        for n in range(pushes):
            status, body = await push(http, node, {"to": {"users": [USER]}, "module": "m", "data": 100 + n})
            assert status == 202 and body["stored"] == 1 and body["online_sessions"] == 1, body
            await _receive_push(client, 100 + n)
        await own_redis.echo(END)
        while True:
            info = await asyncio.wait_for(monitor.next_command(), 10)
            command = info["command"]
            if command == f"ECHO {END}":
                break
            # The node's call names the user as an argument, not as a key (push.lua builds the keys).
            if any(key in command for key in wanted) or (info["client_type"] != "lua" and USER in command):
                seen.append((info["client_type"], command.split(" ", 1)[0].upper()))
    sent = Counter(name for kind, name in seen if kind != "lua")
    per_push = {name: n / pushes for name, n in Counter(name for kind, name in seen if kind == "lua").items()}
    print(f"per push: sent {dict(sent)} / {pushes}, in the script {per_push}")
    assert sent == {"EVALSHA": pushes}, sent
    # bench/RESULTS.md, issue 19, "Redis work per push": what each of these costs, and why none of them can go
    # without changing what is stored or published (TIME has no key, so it is not counted here).
    assert per_push == {"INCR": 1, "ZADD": 1, "HSET": 1, "HINCRBY": 2, "ZRANGE": 2, "ZREM": 1, "HMGET": 1,
                        "HDEL": 1, "PEXPIRE": 3, "HGETALL": 1, "EXISTS": 1, "PUBLISH": 1}, per_push
