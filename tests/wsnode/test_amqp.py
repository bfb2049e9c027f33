"""Pushes from RabbitMQ (wsnode/amqp_consumer.py) over the machine's real broker and real nodes and Redis."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import ProcessGroup, unique_prefix
from tests.functional.test_outage_redis import EPHEMERAL, OwnRedis, start_node_on
from tests.wsnode.brokers import (
    AMQP_URL,
    PrivateRabbit,
    amqp_queue,
    close_connections_of,
    drain,
    node_ready,
    private_rabbit,
    publish,
    publish_to,
    ready_count,
)
from tests.wsnode.conftest import WITH_KEY, Connect, NodeProc, StartNode, eventually

__all__ = ["amqp_queue", "private_rabbit"]  # the fixtures, imported for pytest


def body(user: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"to": {"users": [user]}, "module": "orders", "event": "shipped", "data": data, **extra}


async def health(http: aiohttp.ClientSession, node: NodeProc) -> dict[str, Any]:
    async with http.get(f"{node.url}/health", headers=WITH_KEY) as resp:
        answer: dict[str, Any] = await resp.json()
        return answer


def amqp_args(queue: str, *extra: str) -> tuple[str, ...]:
    return ("--amqp-url", AMQP_URL, "--amqp-queue", queue, *extra)


async def test_amqp_pushes_arrive_once_per_message_id_and_malformed_ones_are_dead_lettered_with_the_reason(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, amqp_queue: str) -> None:
    node = start_node("node-a", *amqp_args(amqp_queue))
    await eventually(lambda: _amqp_up(http, node), timeout_s=20)
    tab, _ = await connect(node, "ava")
    await publish(amqp_queue, [
        (b"not json", "m-bad-json"),
        ({"to": {"users": ["ava"]}, "data": 1}, "m-no-module"),
        (body("ava", 1), "m-1"),
        (body("ava", 1), "m-1"),  # the same message_id again: a producer's retry
        (body("ava", 2), "m-2"),
    ])
    got = await tab.messages(2, timeout_s=20)
    assert [m["data"] for m in got] == [1, 2]
    assert got[0]["module"] == "orders" and got[0]["event"] == "shipped"
    state = await eventually(lambda: _amqp_counts(http, node, handled=3, dead=2), timeout_s=20)
    assert state["status"] == "UP" and state["target"] == amqp_queue
    dead = await drain(f"{amqp_queue}.dead")
    reasons = {m.message_id: (m.headers or {}).get("x-wsgate-error") for m in dead}
    assert set(reasons) == {"m-bad-json", "m-no-module"}
    assert "JSON" in str(reasons["m-bad-json"]) and "module" in str(reasons["m-no-module"])
    assert dead[0].body in (b"not json", b'{"to": {"users": ["ava"]}, "data": 1}')
    assert await ready_count(amqp_queue) == 0
    # The consumer went on after the dead letters; nothing more arrives (the duplicate was dropped).
    await publish(amqp_queue, [(body("ava", 3), "m-3")])
    assert (await tab.next_of("message", timeout_s=20))["data"] == 3
    await eventually(lambda: _amqp_counts(http, node, handled=4, dead=2), timeout_s=20)  # acked after the push
    async with http.get(f"{node.url}/metrics", headers=WITH_KEY) as resp:
        text = await resp.text()
    assert 'wsnode_ingest_dead_letters_total{source="amqp"} 2.0' in text
    assert 'wsnode_ingest_handled_total{source="amqp"} 4.0' in text
    assert 'wsnode_ingest_lag_seconds{source="amqp"}' in text


async def _amqp_up(http: aiohttp.ClientSession, node: NodeProc) -> bool:
    return bool((await health(http, node)).get("amqp", {}).get("status") == "UP")


async def _amqp_counts(http: aiohttp.ClientSession, node: NodeProc, *, handled: int, dead: int) -> Any:
    state = (await health(http, node))["amqp"]
    return state if (state["handled"], state["dead_letters"]) == (handled, dead) else None


async def test_amqp_redis_down_nothing_is_acked_and_everything_arrives_after_redis_returns(
        procs: ProcessGroup, tmp_path: Path, connect: Connect, amqp_queue: str) -> None:
    redis = OwnRedis(procs, tmp_path, EPHEMERAL)
    await redis.start()
    prefix = unique_prefix("amqp")
    node = start_node_on(procs, "node-a", redis.url, prefix, *amqp_args(amqp_queue, "--amqp-prefetch", "5"))
    async with aiohttp.ClientSession() as http:
        await eventually(lambda: _amqp_up(http, node), timeout_s=20)
        await redis.stop()
        await publish(amqp_queue, [(body("bea", n), f"r-{n}") for n in range(20)])
        # The node takes messages, cannot store them, and gives them back: none is acked (handled stays 0).
        await eventually(lambda: _retried(http, node), timeout_s=20)
        assert (await health(http, node))["amqp"]["handled"] == 0
        await redis.start()
        await eventually(lambda: _amqp_counts(http, node, handled=20, dead=0), timeout_s=30)
        assert await ready_count(amqp_queue) == 0
        await eventually(lambda: node_ready(http, node), timeout_s=20)  # registered in Redis again
        client, _ = await connect(node, "bea")
        got = await client.messages(20, timeout_s=20)
        assert sorted(m["data"] for m in got) == list(range(20))


async def _retried(http: aiohttp.ClientSession, node: NodeProc) -> bool:
    async with http.get(f"{node.url}/metrics", headers=WITH_KEY) as resp:
        text = await resp.text()
    return any(line.startswith('wsnode_ingest_retries_total{source="amqp"}') and float(line.split()[-1]) >= 3
               for line in text.splitlines())


async def test_amqp_sigkilled_node_s_unacked_messages_are_redelivered_to_the_other_node(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, amqp_queue: str) -> None:
    a = start_node("node-a", *amqp_args(amqp_queue, "--amqp-prefetch", "10"))
    await eventually(lambda: _amqp_up(http, a), timeout_s=20)
    await publish(amqp_queue, [(body("cai", n), f"k-{n}") for n in range(20)])
    await eventually(lambda: _amqp_counts(http, a, handled=20, dead=0), timeout_s=20)
    # Frozen mid-stream: the broker still hands it up to its prefetch (10), which it holds unacked.
    a.proc.signal(signal.SIGSTOP)
    try:
        await publish(amqp_queue, [(body("cai", n), f"k-{n}") for n in range(20, 120)])
        await eventually(lambda: _ready_is(amqp_queue, 90), timeout_s=20)
        b = start_node("node-b", *amqp_args(amqp_queue))
        await eventually(lambda: _amqp_counts(http, b, handled=90, dead=0), timeout_s=30)
        a.proc.kill()  # a crash: the 10 unacked go back to the queue, and to the other consumer
    finally:
        a.proc.signal(signal.SIGCONT)
    await eventually(lambda: _amqp_counts(http, b, handled=100, dead=0), timeout_s=30)
    tab, _ = await connect(b, "cai", since="0")
    got = await tab.messages(120, timeout_s=20)
    assert sorted(m["data"] for m in got) == list(range(120))  # each once: no loss, no duplicate


async def _ready_is(queue: str, count: int) -> bool:
    return await ready_count(queue) == count


async def test_amqp_consumer_reconnects_after_the_broker_closes_its_connection(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, amqp_queue: str) -> None:
    node = start_node("node-a", *amqp_args(amqp_queue))
    await eventually(lambda: _amqp_up(http, node), timeout_s=20)
    # The broker side of a restart: rabbitmqctl closes the node's connection (the machine's broker stays up for
    # everyone else, so this is the connection-kill route, not a whole broker restart).
    assert await asyncio.to_thread(close_connections_of, amqp_queue) >= 1
    state = await eventually(lambda: _reconnected(http, node), timeout_s=30)
    assert state["connects"] >= 2
    tab, _ = await connect(node, "dan")
    await publish(amqp_queue, [(body("dan", "after"), "d-1")])
    assert (await tab.next_of("message", timeout_s=20))["data"] == "after"


async def _reconnected(http: aiohttp.ClientSession, node: NodeProc) -> Any:
    state = (await health(http, node))["amqp"]
    return state if state["status"] == "UP" and state["connects"] >= 2 else None


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_amqp_consumer_resumes_by_itself_after_its_broker_restarts(
        private_rabbit: PrivateRabbit, start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    broker = private_rabbit
    await broker.start()
    node = start_node("node-a", "--amqp-url", broker.url, "--amqp-queue", "wsgate.push")
    await eventually(lambda: _amqp_up(http, node), timeout_s=30)
    tab, _ = await connect(node, "eve")
    await publish_to(broker.url, "wsgate.push", [(body("eve", "before"), "e-1")])
    first = await tab.next_of("message", timeout_s=20)
    assert first["data"] == "before"
    await broker.stop()
    state = await eventually(lambda: _amqp_state(http, node, "DOWN"), timeout_s=30)
    assert state["error"]
    # The node's WebSockets and HTTP pushes do not depend on the broker.
    assert (await health_status(http, node)) == 200
    await broker.start()  # same port, same data directory
    state = await eventually(lambda: _amqp_state(http, node, "UP"), timeout_s=60)
    assert state["connects"] == 2
    # A new tab: the first one read nothing while the broker restarted, so the node may have dropped it for its
    # unanswered pings (the test client answers them only while it reads).
    tab, _ = await connect(node, "eve", since=first["id"])
    await publish_to(broker.url, "wsgate.push", [(body("eve", "after"), "e-2")])
    assert (await tab.next_of("message", timeout_s=20))["data"] == "after"


async def _amqp_state(http: aiohttp.ClientSession, node: NodeProc, status: str) -> Any:
    state = (await health(http, node))["amqp"]
    return state if state["status"] == status else None


async def health_status(http: aiohttp.ClientSession, node: NodeProc) -> int:
    async with http.get(f"{node.url}/health", headers=WITH_KEY) as resp:
        return resp.status
