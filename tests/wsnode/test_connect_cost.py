"""What one connect costs Redis at a real node (issue 19): one round trip, one `EVALSHA` running 7 commands.

The node runs on a redis-server of this test's own (conftest.own_redis); `MONITOR` shows every command with the
client that sent it, commands run by a script as `lua`. Only commands on the connecting users' keys and on the
session records count: the node's heartbeat, pub/sub heartbeat and stream reads touch neither. A connect whose
commands a client sends itself (more than the one `EVALSHA`) takes more than one round trip; this test fails then,
as it does when the script runs more commands than it did when this was measured.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import redis.asyncio as aioredis

from tests.wsnode.conftest import Client, StartNode, make_token, push

# Long periods: the node's own background traffic stays out of the few seconds measured.
QUIET = ("--session-ttl", "60", "--session-refresh", "20", "--pubsub-heartbeat", "10", "--pubsub-timeout", "30")
END = "connect-cost-end"


async def _commands_of_connects(own_redis: aioredis.Redis, http: aiohttp.ClientSession, url: str, prefix: str,
                                users: list[str], clients: list[Client]) -> list[tuple[str, str]]:
    """(client type, command name) of every command on session records or on `users`' keys while they connect.

    The connected clients go to `clients`, which the caller holds to the end: a client left unreferenced may be
    collected and closed during a later measurement, whose commands would then show the session's removal."""
    async with own_redis.monitor() as monitor:
        for user in users:
            clients.append(Client(await http.ws_connect(url, params={"token": make_token(user)})))
            assert (await clients[-1].next())["type"] == "welcome"
        await own_redis.echo(END)
        seen: list[tuple[str, str]] = []
        while True:
            info = await asyncio.wait_for(monitor.next_command(), 10)
            command = info["command"]
            if command == f"ECHO {END}":
                return seen
            if any(f"{prefix}wsgate:user:{user}" in command for user in users) \
                    or f"{prefix}wsgate:sessions" in command or f"{prefix}wsgate:node:node-a:sessions" in command:
                seen.append((info["client_type"], command.split(" ", 1)[0].upper()))


async def test_one_connect_is_one_round_trip_of_one_script_call(
        own_redis: aioredis.Redis, start_node: StartNode, http: aiohttp.ClientSession, redis_prefix: str) -> None:
    port = own_redis.connection_pool.connection_kwargs["port"]
    node = start_node("node-a", "--redis", f"redis://127.0.0.1:{port}/0", *QUIET)
    # The first connect loads the script into Redis and opens the node's pooled connection: not measured.
    warm = Client(await http.ws_connect(node.ws_url, params={"token": make_token("warm")}))
    assert (await warm.next())["type"] == "welcome"
    fresh = [f"cost{i}" for i in range(5)]
    held: list[Client] = []
    seen = await _commands_of_connects(own_redis, http, node.ws_url, redis_prefix, fresh, held)
    sent = Counter(name for kind, name in seen if kind != "lua")
    scripted = Counter(name for kind, name in seen if kind == "lua")
    per_connect = {name: n / len(fresh) for name, n in scripted.items()}
    print(f"per connect: sent {dict(sent)} / {len(fresh)}, in the script {per_connect}")
    assert sent == {"EVALSHA": len(fresh)}, sent
    assert per_connect == {"MGET": 1, "ZCARD": 1, "ZADD": 2, "HSET": 1, "ZRANGEBYSCORE": 1, "HGETALL": 1}, per_connect

    # A user with an unread stored message: the script also reads which ids are unacked (HKEYS), still one call.
    status, _ = await push(http, node, {"to": {"users": ["reader"]}, "module": "m", "data": 1})
    assert status == 202
    seen = await _commands_of_connects(own_redis, http, node.ws_url, redis_prefix, ["reader"], held)
    assert Counter(name for kind, name in seen if kind != "lua") == {"EVALSHA": 1}, seen
    assert Counter(name for kind, name in seen if kind == "lua") == {
        "MGET": 1, "ZCARD": 1, "ZADD": 2, "HSET": 1, "ZRANGEBYSCORE": 1, "HKEYS": 1, "HGETALL": 1}, seen
