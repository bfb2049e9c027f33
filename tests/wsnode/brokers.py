"""Helpers for the broker and outbox tests: the machine's RabbitMQ, PostgreSQL and MariaDB, each test with its own
queue or database (dropped afterwards). A service that does not answer is a broken setup (scripts/ensure-services
starts them in CI), so the fixtures fail, never skip."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
import pytest

from tests.harness import ProcessFailed
from tests.wsnode.conftest import NodeProc

AMQP_URL = os.environ.get("WSGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_DSN = os.environ.get("WSGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def require(url: str, what: str) -> None:
    """Fail (not skip) when nothing listens where `url` points."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return
    except OSError as exc:
        raise ProcessFailed(f"{what} does not answer at {parts.hostname}:{parts.port} ({exc}); "
                            "run scripts/ensure-services") from None


@pytest.fixture
async def amqp_queue() -> AsyncIterator[str]:
    """A queue name of this test's own; the queue, its dead-letter queue and exchange are deleted afterwards."""
    require(AMQP_URL, "RabbitMQ")
    name = f"wsgate.test.{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (name, f"{name}.dead"):
            await channel.queue_delete(queue)
        await channel.exchange_delete(f"{name}.dlx")


async def publish(queue: str, bodies: Iterable[tuple[Any, str | None]]) -> None:
    """Publish (body, message_id) pairs to `queue` through the default exchange, persistent, with confirms.
    A body that is not bytes is sent as JSON."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for body, message_id in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            await channel.default_exchange.publish(
                aio_pika.Message(raw, message_id=message_id, content_type="application/json", timestamp=time.time(),
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)


async def ready_count(queue: str) -> int:
    """Messages ready (not held unacked by a consumer) in `queue`."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def drain(queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now ready in `queue`, acked."""
    connection = await aio_pika.connect(AMQP_URL)
    taken = []
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(fail=False)) is not None:
            await message.ack()
            taken.append(message)
    return taken


def close_connections_of(queue: str) -> int:
    """Close, from the broker's side, every connection whose name mentions `queue` (the nodes'); how many."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    closed = 0
    for line in listed.splitlines():
        if queue in line:
            pid = line.split("\t", 1)[0]
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: broker closes the connection"],
                           capture_output=True, text=True, timeout=60, check=True)
            closed += 1
    return closed


async def _pg(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own (dropped afterwards)."""
    require(PG_ADMIN_DSN, "PostgreSQL")
    name = f"wsgate_t_{uuid.uuid4().hex[:10]}"
    await _pg(f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(PG_ADMIN_DSN)._replace(path=f"/{name}"))
    await _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _mysql(statement: str) -> None:
    import aiomysql

    conn = await aiomysql.connect(**MYSQL_ADMIN, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture
async def mysql_dsn() -> AsyncIterator[str]:
    """A MariaDB/MySQL database of this test's own (dropped afterwards)."""
    require(f"mysql://{MYSQL_ADMIN['host']}:{MYSQL_ADMIN['port']}", "MariaDB")
    name = f"wsgate_t_{uuid.uuid4().hex[:10]}"
    await _mysql(f"CREATE DATABASE {name}")
    yield f"mysql://root@{MYSQL_ADMIN['host']}:{MYSQL_ADMIN['port']}/{name}"
    await _mysql(f"DROP DATABASE IF EXISTS {name}")

async def node_ready(http: aiohttp.ClientSession, node: NodeProc) -> bool:
    """The node's /health is 200 (after a Redis outage: it has registered its sessions again)."""
    async with http.get(f"{node.url}/health") as resp:
        return resp.status == 200
