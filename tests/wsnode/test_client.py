"""The backend client (wsnode.client) against a real node and Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import API_KEY, Connect, StartNode
from wsnode.client import PushClient, PushClientError, StreamPushClient, push_body
from wsnode.errors import PushError


async def test_push_client_pushes_and_reads_presence_and_unread(start_node: StartNode, connect: Connect) -> None:
    a = start_node("node-a")
    tab, _ = await connect(a, "mia")
    async with PushClient(a.url, api_key=API_KEY) as client:
        accepted = await client.push(users=["mia"], module="notice", event="created", data={"x": 1})
        assert accepted["online_sessions"] == 1 and accepted["stored"] == 1
        assert (await tab.next_of("message"))["data"] == {"x": 1}
        assert (await client.presence("mia"))["online"] is True
        assert await client.unread("mia") == {"notice": 1}
        assert (await client.stats())["node_sessions"] == 1
        assert await client.disconnect("mia") == 1
    async with PushClient(a.url, api_key="wrong") as bad:
        with pytest.raises(PushClientError) as info:
            await bad.push(users=["mia"], module="notice")
        assert info.value.status == 401


async def test_stream_client_push_arrives(start_node: StartNode, connect: Connect, redis_server: RedisInfo,
                                          redis_prefix: str) -> None:
    a = start_node("node-a")
    tab, _ = await connect(a, "noah")
    redis = aioredis.from_url(redis_server.url)
    try:
        entry = await StreamPushClient(redis, prefix=redis_prefix).push(users=["noah"], module="jobs", data=2)
        assert "-" in entry
        assert (await tab.next_of("message"))["data"] == 2
    finally:
        await redis.aclose()


def test_push_body_is_validated_before_sending() -> None:
    assert push_body(to_all=True, module="m")["to"] == {"all": True}
    with pytest.raises(PushError):
        push_body(users=[], module="m")
