"""Every long-lived task of a node runs under one supervisor (issue 13): a failure is logged, turns /health red
while the task is down, and the task is restarted with backoff until it runs again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from harness import RedisInfo, free_port
from tests.wsnode.conftest import API_KEY, SECRET, WITH_KEY, Client, eventually, make_token
from wsnode.app import build_app
from wsnode.delivery import Router
from wsnode.node import Node
from wsnode.registration import ConsulRegistration
from wsnode.settings import NodeSettings
from wsnode.stream_consumer import StreamConsumer
from wsnode.supervisor import Supervisor


async def test_a_failing_task_is_reported_down_then_restarted_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    release = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise RuntimeError(f"failure {len(runs)}")
        await release.wait()
        await asyncio.Event().wait()

    supervisor = Supervisor(backoff_initial_s=0.01, backoff_max_s=0.05)
    supervisor.start("flaky", flaky)
    try:
        async def down() -> bool:
            return "flaky" in supervisor.down

        assert await eventually(down)
        assert supervisor.status() == {"flaky": "DOWN"}

        async def running_again() -> bool:
            return len(runs) == 4 and supervisor.status() == {"flaky": "UP"}

        await eventually(running_again)
        assert [r.getMessage() for r in caplog.records if r.name == "wsnode.supervisor"][:1] == [
            "task flaky failed; restarting it in 0.0s"]
        assert all(r.exc_info is not None for r in caplog.records if r.name == "wsnode.supervisor")
    finally:
        await supervisor.stop()


# The node's long-lived tasks and the method each one runs.
TASKS: dict[str, tuple[Any, str]] = {
    "pubsub": (Router, "run"),
    "refresh": (Node, "refresh_loop"),
    "stream": (StreamConsumer, "run"),
    "consul": (ConsulRegistration, "keep_registered"),
}


class Injector:
    """Makes one task's method fail on demand: `trip()` ends the running call with an error, and every restart
    fails at once until `heal()`."""

    def __init__(self) -> None:
        self.broken = False
        self.tripped = asyncio.Event()

    def wrap(self, original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def failing(this: object, *args: Any, **kwargs: Any) -> None:
            if self.broken:
                raise RuntimeError("injected failure")
            run = asyncio.ensure_future(original(this, *args, **kwargs))
            trip = asyncio.ensure_future(self.tripped.wait())
            try:
                await asyncio.wait({run, trip}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (run, trip):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if self.tripped.is_set():
                raise RuntimeError("injected failure")
            run.result()

        return failing

    def trip(self) -> None:
        self.broken = True
        self.tripped.set()

    def heal(self) -> None:
        self.broken = False
        self.tripped.clear()


def _settings(redis_server: RedisInfo, redis_prefix: str) -> NodeSettings:
    return NodeSettings(port=free_port(), host="127.0.0.1", node_id="node-s", redis_url=redis_server.url,
                        redis_prefix=redis_prefix, jwt_secret=SECRET, api_keys=(API_KEY,),
                        consul_addr=f"127.0.0.1:{free_port()}",  # nobody answers: registration retries
                        session_ttl_s=2, session_refresh_s=0.5)


@pytest.mark.parametrize("name", sorted(TASKS))
async def test_each_node_task_that_fails_turns_health_red_and_recovers(
        name: str, monkeypatch: pytest.MonkeyPatch, redis_server: RedisInfo, redis_prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    owner, method = TASKS[name]
    injector = Injector()
    monkeypatch.setattr(owner, method, injector.wrap(getattr(owner, method)))
    settings = _settings(redis_server, redis_prefix)
    server = TestServer(build_app(settings), host="127.0.0.1", port=settings.port)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async def health() -> tuple[int, dict[str, Any]]:
                async with http.get(f"http://127.0.0.1:{settings.port}/health", headers=WITH_KEY) as resp:
                    return resp.status, await resp.json()

            async def up() -> bool:
                status, body = await health()
                return status == 200 and body["tasks"][name] == "UP"

            async def down() -> bool:
                status, body = await health()
                return status == 503 and body["status"] == "DOWN" and body["tasks"][name] == "DOWN"

            await eventually(up, timeout_s=15)
            injector.trip()
            await eventually(down, timeout_s=15)
            assert any(r.name == "wsnode.supervisor" and f"task {name} failed" in r.getMessage()
                       for r in caplog.records)
            injector.heal()
            await eventually(up, timeout_s=15)
    finally:
        await server.close()


async def test_a_restarted_pubsub_reader_resends_what_its_sessions_missed(
        monkeypatch: pytest.MonkeyPatch, redis_server: RedisInfo, redis_prefix: str) -> None:
    injector = Injector()
    monkeypatch.setattr(Router, "run", injector.wrap(Router.run))
    settings = _settings(redis_server, redis_prefix)
    server = TestServer(build_app(settings), host="127.0.0.1", port=settings.port)
    await server.start_server()
    base = f"http://127.0.0.1:{settings.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def subscribed() -> bool:
                async with http.get(f"{base}/health", headers=WITH_KEY) as resp:
                    return resp.status == 200

            await eventually(subscribed, timeout_s=15)
            ws = await http.ws_connect(f"{base}/websocket", params={"token": make_token("nora")})
            client = Client(ws)
            assert (await client.next())["type"] == "welcome"
            injector.trip()  # the subscription ends: a push now reaches no session here

            async def down() -> bool:
                async with http.get(f"{base}/health", headers=WITH_KEY) as resp:
                    return resp.status == 503 and (await resp.json())["tasks"]["pubsub"] == "DOWN"

            await eventually(down, timeout_s=15)
            async with http.post(f"{base}/api/v1/push", headers=WITH_KEY,
                                 json={"to": {"users": ["nora"]}, "module": "m", "data": "missed"}) as resp:
                assert resp.status == 202
            injector.heal()
            message = await client.next_of("message", timeout_s=15)
            assert message["data"] == "missed"
            await ws.close()
    finally:
        await server.close()
