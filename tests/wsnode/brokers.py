"""Helpers for the broker and outbox tests: the machine's RabbitMQ, PostgreSQL and MariaDB, each test with its own
queue or database (dropped afterwards). A service that does not answer is a broken setup (scripts/ensure-services
starts them in CI), so the fixtures fail, never skip."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
import pytest

from harness import ManagedProcess, ProcessFailed, ProcessGroup, free_port
from tests.wsnode.conftest import WITH_KEY, NodeProc

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
    await delete_topology(AMQP_URL, name)


async def delete_topology(url: str, queue: str) -> None:
    """Delete the queue a node declared, with its dead-letter queue and exchange (wsnode/amqp_consumer.py)."""
    from wsnode.amqp_consumer import queue_names

    dlx, dead = queue_names(queue)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in (queue, dead):
            await channel.queue_delete(name)
        await channel.exchange_delete(dlx)


async def publish(queue: str, bodies: Iterable[tuple[Any, str | None]]) -> None:
    """Publish (body, message_id) pairs to `queue` of the machine's broker (see publish_to)."""
    await publish_to(AMQP_URL, queue, bodies)


async def publish_to(url: str, queue: str, bodies: Iterable[tuple[Any, str | None]]) -> None:
    """Publish (body, message_id) pairs to `queue` through the default exchange, persistent, with confirms.
    A body that is not bytes is sent as JSON."""
    connection = await aio_pika.connect(url)
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
    async with http.get(f"{node.url}/health", headers=WITH_KEY) as resp:
        return resp.status == 200


def _as_service_user(user: str, argv: list[str]) -> list[str]:
    """`argv` run as `user` when we are root (initdb and the broker refuse root), else as ourselves."""
    return ["runuser", "-u", user, "--", *argv] if os.geteuid() == 0 else argv


def _wait_port(port: int, what: str, timeout_s: float, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ProcessFailed(f"{what} exited; log:\n{proc.log()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ProcessFailed(f"{what} did not open port {port} within {timeout_s}s")


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary directory, a free port, trust), so the test can
    stop and start it without touching the machine's."""

    def __init__(self, directory: Path) -> None:
        found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1:]), None)
        if found is None:
            raise ProcessFailed("initdb not found (Debian's postgresql; run scripts/ensure-services)")
        self.bindir = Path(found).resolve().parent
        self.dir = directory
        self.port = free_port()
        self.dir.chmod(0o777)  # the server runs as postgres
        self._run(["initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync"])

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        argv = [str(self.bindir / argv[0]), *argv[1:]]
        done = subprocess.run(_as_service_user("postgres", argv), capture_output=True, text=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise ProcessFailed(f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(["pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                   f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        _wait_port(self.port, "PostgreSQL", 30)

    def stop(self) -> None:
        """A fast shutdown, as a restart does: clients are disconnected, committed data stays."""
        self._run(["pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"])


@contextlib.contextmanager
def service_dir(tag: str) -> Iterator[Path]:
    """A temporary directory that a service running as its own user can reach (pytest's are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=f"wsgate-{tag}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PrivatePostgres, stopped after the test."""
    with service_dir("pg") as path:
        server = PrivatePostgres(path)
        server.start()
        yield server
        with contextlib.suppress(ProcessFailed):
            server.stop()


@pytest.fixture
def private_rabbit(procs: ProcessGroup) -> Iterator[PrivateRabbit]:
    """A PrivateRabbit (not started: `await private_rabbit.start()`), stopped with the test's processes."""
    with service_dir("rabbit") as path:
        broker = PrivateRabbit(procs, path)
        yield broker
        broker._terminate()  # before its directory goes
        procs.stop_all()


class PrivateRabbit:
    """A RabbitMQ node of the test's own (its own node name, port and data directory), so the test can restart it
    without touching the machine's broker. A start takes 10-20 s."""

    def __init__(self, procs: ProcessGroup, directory: Path) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise ProcessFailed("rabbitmq-server not found (run scripts/ensure-services)")
        directory.chmod(0o777)  # the broker runs as its own user
        self.procs = procs
        self.port = free_port()
        self.env = {
            "RABBITMQ_NODENAME": f"wsgate-test-{self.port}@localhost", "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"), "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "pid"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(directory / "no-config"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "no-advanced-config")}
        self.proc: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.starts += 1
        self.proc = self.procs.start(f"rabbitmq-{self.starts}", ["rabbitmq-server"], env=self.env)
        await asyncio.to_thread(_wait_port, self.port, "RabbitMQ", 120, self.proc)

    async def stop(self) -> None:
        """SIGTERM to the broker itself (Debian's script runs it through `su`, in a session of its own that a
        signal to the script does not reach): it shuts down in order, and the script exits after it."""
        assert self.proc is not None
        await asyncio.to_thread(self._terminate)
        await asyncio.to_thread(self.proc.stop, timeout_s=30)

    def _terminate(self) -> None:
        pid_file = Path(self.env["RABBITMQ_PID_FILE"])
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return  # never got as far as writing it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
