"""The supervision of the gateway's background duties: the board's rules (pure, as a table), then the real
`GatewayApp` with each duty failing and recovering while `/actuator/health` is read on its port.

Failures are injected through real inputs where the duty can fail on one (the metrics directory removed, a
tunnel's completion callback that raises), and through the documented test-only fault file
(`$WSGATE_TEST_FAULT_FILE`, see gateway/ops/tasks.py) where it cannot (the discovery watch handles every error of
the agent itself; the file watch turns every bad file into a refused reload).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import FILE_WATCH, METRICS_SNAPSHOTS, GatewayApp
from gateway.ops.taskhealth import TaskBoard
from gateway.ops.tasks import TaskSupervisor
from gateway.proxy.conn import Conn
from gateway.tunnel import native as native_relay
from gateway.tunnel.native import REAPER, NativeRelay, NativeTunnel
from tests.gateway.conftest import StartUpstream
from tests.gateway.procs import eventually, register

# ---- the board (pure) -----------------------------------------------------------------------------------------


def board() -> TaskBoard:
    return TaskBoard(stable_s=10.0, rng=random.Random(1))


def states(b: TaskBoard, now: float) -> dict[str, str]:
    tasks = b.status(now)["tasks"]
    assert isinstance(tasks, dict)
    return {name: state["status"] for name, state in tasks.items()}


@pytest.mark.parametrize(("steps", "now", "expected"), [
    ([("started", 0)], 1, "UP"),
    ([("started", 0), ("failed", 1)], 1, "DOWN"),                                    # waiting for its restart
    ([("started", 0), ("failed", 1), ("started", 2)], 3, "DOWN"),                    # restarted, not yet working
    ([("started", 0), ("failed", 1), ("started", 2), ("progressed", 3)], 3, "UP"),   # did a unit of work
    ([("started", 0), ("failed", 1), ("started", 2)], 12, "UP"),                     # ran stable_s without failing
    ([("started", 0), ("failed", 1), ("started", 2), ("progressed", 3), ("failed", 4)], 4, "DOWN"),
])
def test_board_says_down_from_a_failure_until_the_duty_works_again(steps: list[tuple[str, float]], now: float,
                                                                    expected: str) -> None:
    b = board()
    for step, at in steps:
        if step == "failed":
            b.failed("d", "boom", at)
        else:
            getattr(b, step)("d", at)
    assert states(b, now) == {"d": expected}
    assert b.status(now)["status"] == expected


def test_board_backs_off_longer_while_failures_repeat_and_starts_over_after_recovery() -> None:
    b = TaskBoard(stable_s=10.0, rng=random.Random(7))
    b.started("d", 0)
    ceilings = []
    for k in range(6):
        delay = b.failed("d", "boom", k)
        ceilings.append(min(5.0, 0.1 * 2 ** k))
        assert 0 <= delay <= ceilings[-1]
        b.started("d", k + 0.5)
    b.progressed("d", 7)
    b.failed("d", "again", 8)
    record_failures = b.status(8)["tasks"]["d"]  # type: ignore[index]
    assert record_failures["status"] == "DOWN" and record_failures["error"] == "again"
    assert record_failures["restarts"] == 6
    assert b.failed("d", "third", 9) <= 0.2  # the streak started over at the recovery: second failure of it


def test_board_forgets_a_duty_stopped_on_purpose() -> None:
    b = board()
    b.started("discovery:old", 0)
    b.failed("discovery:old", "boom", 1)
    b.removed("discovery:old")
    assert b.status(2) == {"status": "UP", "tasks": {}}


# ---- the relay's completion reader, failing on a real input -----------------------------------------------------


async def test_relay_completion_reader_recovers_after_a_completion_callback_raises() -> None:
    if not native_relay.available():
        pytest.fail("gateway._relay is not built")
    loop = asyncio.get_running_loop()
    far: list[Conn] = []  # the ends the test holds

    def accepted() -> Conn:
        far.append(Conn(loop))
        return far[-1]

    server = await loop.create_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks = TaskSupervisor()
    relay = NativeRelay(loop, tasks=tasks)
    finished: list[NativeTunnel] = []

    def poisoned(tunnel: NativeTunnel) -> None:
        raise ValueError("a completion callback failed")

    try:
        tunnels = []
        for on_done in (poisoned, finished.append):
            _, client = await loop.create_connection(lambda: Conn(loop), "127.0.0.1", port)
            _, upstream = await loop.create_connection(lambda: Conn(loop), "127.0.0.1", port)
            expected = 2 * len(tunnels) + 2
            assert await eventually(lambda: len(far) == expected)  # noqa: B023 (awaited in this iteration)
            tunnel = relay.adopt(client, upstream, on_done=on_done)
            assert tunnel is not None
            tunnels.append(tunnel)
        first_far = far[:2]
        for conn in first_far:  # the first tunnel ends: its callback raises in the reader
            assert conn.transport is not None
            conn.transport.close()
        # DOWN lasts one backoff (up to 0.1 s after a first failure): the record, not a poll, shows it happened.
        def reader_failed() -> bool:
            record = tasks.board.record(REAPER)
            return record is not None and record.failed_at is not None

        assert await eventually(reader_failed, timeout_s=10)
        record = tasks.board.record(REAPER)
        assert record is not None and record.error == "ValueError: a completion callback failed"
        for conn in far[2:]:  # the second ends after the failure: reported by the restarted reader
            assert conn.transport is not None
            conn.transport.close()
        await asyncio.wait_for(tunnels[1].done, 15)
        assert finished == [tunnels[1]]
        assert await eventually(lambda: tasks.status()["status"] == "UP", timeout_s=10)
        assert tasks.status()["tasks"] == {REAPER: {"status": "UP", "restarts": 1}}
    finally:
        relay.close()
        server.close()
        for conn in far:
            conn.abort()


# ---- the real app: every duty goes red and recovers ----------------------------------------------------------


@pytest.fixture
async def running_app(tmp_path: Path, consul_addr: str, start_upstream: StartUpstream,
                      unused_tcp_port: int) -> AsyncIterator[tuple[GatewayApp, Path, Path]]:
    """A GatewayApp watching its file and the service `ws-service` in Consul; (app, metrics dir, fault file)."""
    upstream = await start_upstream()
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"""\
discovery:
  consul:
    address: {consul_addr}
routes:
  - id: svc
    uri: lb:ws://ws-service
    predicates:
      - Path=/svc/**
  - id: direct
    uri: ws://127.0.0.1:{upstream}
    predicates:
      - Path=/**
""")
    metrics_dir, fault_file = tmp_path / "metrics", tmp_path / "faults"
    metrics_dir.mkdir()
    fault_file.write_text("")
    app = GatewayApp(str(routes), host="127.0.0.1", port=unused_tcp_port, reuse_port=False,
                     env={**os.environ, "WSGATE_METRICS_DIR": str(metrics_dir),
                          "WSGATE_TEST_FAULT_FILE": str(fault_file)})
    ready = asyncio.Event()
    run = asyncio.ensure_future(app.run(ready=lambda _app: ready.set()))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield app, metrics_dir, fault_file
    finally:
        fault_file.write_text("")
        app.stop()
        await asyncio.wait_for(run, 30)


async def health(app: GatewayApp) -> tuple[int, dict[str, Any]]:
    host, port = app.addresses[0]
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/actuator/health") as response:
        return response.status, await response.json()


async def duty_state(app: GatewayApp, name: str) -> tuple[int, str | None]:
    status, body = await health(app)
    return status, body["components"]["tasks"]["tasks"].get(name, {}).get("status")


async def until(app: GatewayApp, name: str, wanted: tuple[int, str], *, timeout_s: float = 20.0) -> None:
    """Read health until the duty `name` is in the `wanted` (HTTP status, duty status)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    seen = None
    while asyncio.get_running_loop().time() < deadline:
        seen = await duty_state(app, name)
        if seen == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: health says {seen}, not {wanted}; {await health(app)}")


def inject(fault_file: Path, *names: str) -> None:
    fault_file.write_text("".join(f"{name}\n" for name in names))


async def test_every_background_duty_of_the_app_goes_red_and_recovers(
        running_app: tuple[GatewayApp, Path, Path], consul_addr: str) -> None:
    app, metrics_dir, fault_file = running_app
    for name in (METRICS_SNAPSHOTS, FILE_WATCH, "discovery:ws-service", REAPER):
        await until(app, name, (200, "UP"))

    # The metrics snapshot writer: its directory goes away (a real input), then comes back.
    shutil.rmtree(metrics_dir)
    await until(app, METRICS_SNAPSHOTS, (503, "DOWN"))
    metrics_dir.mkdir()
    await until(app, METRICS_SNAPSHOTS, (200, "UP"))
    assert await eventually(lambda: any(metrics_dir.glob("*.json")), timeout_s=10)

    # The routes file watch.
    inject(fault_file, FILE_WATCH)
    await until(app, FILE_WATCH, (503, "DOWN"))
    inject(fault_file)
    await until(app, FILE_WATCH, (200, "UP"))

    # The discovery watch: armed, then a change in the catalog makes it process an answer.
    inject(fault_file, "discovery:ws-service")
    await register(consul_addr, "ws-1", 1)
    await until(app, "discovery:ws-service", (503, "DOWN"))
    inject(fault_file)
    await until(app, "discovery:ws-service", (200, "UP"))
    assert app.provider is not None and len(app.provider.snapshot("ws-service")) == 1

    # The relay's completion reader: a tunnel ends while it fails; once back, the tunnel is accounted for.
    host, port = app.addresses[0]
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://{host}:{port}/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive()).data == "hello"
            assert app.server is not None and len(app.server.tunnels) == 1
            inject(fault_file, REAPER)
        await until(app, REAPER, (503, "DOWN"))
        assert app.server is not None and len(app.server.tunnels) == 1  # its end not reported yet
        inject(fault_file)
        await until(app, REAPER, (200, "UP"))
        assert await eventually(lambda: app.server is not None and not app.server.tunnels, timeout_s=10)
    assert app.metrics.value("wsgate_active_tunnels", route="direct") == 0


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

