"""Operating the gateway process: bad files, reloads, drain, workers, TLS."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from harness import ROOT, ProcessGroup, free_port, http_status
from tests.gateway.procs import eventually, self_signed_cert, start_gateway_proc, start_upstream_proc


def routes_yaml(port: int, prefix: str = "/a", *, extra: str = "") -> str:
    return f"""\
{extra}routes:
  - id: r{prefix.strip('/')}
    uri: ws://127.0.0.1:{port}
    predicates:
      - Path={prefix}/**
    filters:
      - StripPrefix=1
"""


async def route_ids(port: int) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/actuator/gateway/routes") as response:
        return [r["route_id"] for r in await response.json()]


async def wait_route_ids(port: int, expected: list[str], *, timeout_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    ids = await route_ids(port)
    while ids != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        ids = await route_ids(port)
    return ids


def test_gateway_bad_config_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text("routes:\n  - id: x\n    uri: ftp://nowhere\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{config}:3" in result.stderr


def test_gateway_missing_config_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(tmp_path / "none.yaml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "none.yaml" in result.stderr


async def test_gateway_reloads_on_sighup_and_keeps_routes_on_bad_file(procs: ProcessGroup, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "up")
    config = tmp_path / "routes.yaml"
    config.write_text(routes_yaml(upstream, "/a"))
    gateway, port = start_gateway_proc(procs, config)
    assert await route_ids(port) == ["ra"]
    config.write_text(routes_yaml(upstream, "/b"))
    gateway.signal(signal.SIGHUP)
    assert await wait_route_ids(port, ["rb"]) == ["rb"]
    config.write_text("routes:\n  - id: broken\n    uri: nope://x\n")
    gateway.signal(signal.SIGHUP)
    assert await eventually(lambda: "reload refused" in gateway.log())
    assert f"{config}:3" in gateway.log()
    assert await route_ids(port) == ["rb"]
    assert http_status(f"http://127.0.0.1:{port}/b/x") == 200


async def test_gateway_reloads_when_the_file_changes(procs: ProcessGroup, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "up")
    config = tmp_path / "routes.yaml"
    config.write_text(routes_yaml(upstream, "/a"))
    _, port = start_gateway_proc(procs, config)
    config.write_text(routes_yaml(upstream, "/c"))
    assert await wait_route_ids(port, ["rc"]) == ["rc"]


async def test_gateway_sigterm_drains_tunnels_then_exits_0(procs: ProcessGroup, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "up")
    config = tmp_path / "routes.yaml"
    config.write_text(routes_yaml(upstream, "/a", extra="wsgate:\n  drain-timeout: 1s\n"))
    gateway, port = start_gateway_proc(procs, config)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://127.0.0.1:{port}/a/ws") as ws:
        gateway.signal(signal.SIGTERM)
        # While draining, the open tunnel still works and new connections are refused.
        await ws.send_str("still here")
        assert (await ws.receive()).data == "still here"
        assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{port}/actuator/health") is None
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert await asyncio.to_thread(gateway.wait_exit, timeout_s=10) == 0


async def test_gateway_workers_share_port_aggregate_metrics_and_reload(procs: ProcessGroup, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "up")
    config = tmp_path / "routes.yaml"
    config.write_text(routes_yaml(upstream, "/a"))
    gateway, port = start_gateway_proc(procs, config, workers=2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(10):
            async with session.ws_connect(f"ws://127.0.0.1:{port}/a/ws") as ws:
                await ws.send_str("x")
                await ws.receive()
        deadline = time.monotonic() + 5
        total = 0.0
        while total < 10 and time.monotonic() < deadline:
            async with session.get(f"http://127.0.0.1:{port}/actuator/prometheus") as response:
                text = await response.text()
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("wsgate_upgrades_total{"))
            await asyncio.sleep(0.1)
        assert total == 10
        config.write_text(routes_yaml(upstream, "/b"))
        gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        seen: set[tuple[str, ...]] = set()
        while time.monotonic() < deadline:
            ids = [tuple(await route_ids(port)) for _ in range(10)]  # new connections spread over both workers
            seen = set(ids)
            if seen == {("rb",)}:
                break
            await asyncio.sleep(0.1)
        assert seen == {("rb",)}
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait_exit, timeout_s=15) == 0


async def test_gateway_workers_survive_a_reload_while_starting_and_a_stop_reaches_them(procs: ProcessGroup,
                                                                                   tmp_path: Path) -> None:
    """A SIGHUP forwarded to workers that are still importing used to kill them (SIGHUP's default action), and a
    stop during the restart that followed left the new worker running: the master then waited 40 s for it. Now a
    worker ignores SIGHUP until its handler is in place, and takes a file changed meanwhile when it gets there."""
    upstream = start_upstream_proc(procs, "up")
    config = tmp_path / "routes.yaml"
    config.write_text(routes_yaml(upstream, "/a"))
    port = free_port()
    gateway = procs.python("gateway", "gateway", "--config", str(config), "--port", str(port), "--host", "127.0.0.1",
                           "--workers", "2")
    # The master's handlers are in place once it says so; its workers are only being spawned then.
    assert await eventually(lambda: "started 2 worker(s)" in gateway.log(), timeout_s=15)
    config.write_text(routes_yaml(upstream, "/b"))
    gateway.signal(signal.SIGHUP)
    await asyncio.to_thread(gateway.wait_http_ready, f"http://127.0.0.1:{port}/actuator/health")
    assert await wait_route_ids(port, ["rb"]) == ["rb"]
    for _ in range(10):  # new connections spread over both workers: each serves the new file
        assert await route_ids(port) == ["rb"]
    assert "exited with" not in gateway.log(), gateway.log()
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait_exit, timeout_s=15) == 0


async def test_gateway_workers_follow_the_masters_unknown_filters_flag(procs: ProcessGroup, tmp_path: Path) -> None:
    # The workers read the file again: they must take --unknown-filters from the master (WSGATE_UNKNOWN_FILTERS).
    upstream = start_upstream_proc(procs, "up")
    config = tmp_path / "routes.yaml"
    config.write_text(routes_yaml(upstream, "/a").replace("      - StripPrefix=1\n", "      - StripPrefix=1\n"
                                                                                 "      - NotAFilter=1\n"))
    port = free_port()
    gateway = procs.python("gateway", "gateway", "--config", str(config), "--port", str(port), "--host", "127.0.0.1",
                           "--workers", "2", "--unknown-filters", "warn")
    gateway.wait_http_ready(f"http://127.0.0.1:{port}/actuator/health")
    assert await wait_route_ids(port, ["ra"]) == ["ra"]
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait_exit, timeout_s=15) == 0


async def test_gateway_listens_with_tls_and_dials_wss(procs: ProcessGroup, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    upstream = start_upstream_proc(procs, "secure", tls=(cert, key))
    config = tmp_path / "routes.yaml"
    config.write_text(f"""\
server:
  ssl:
    certificate: {cert}
    certificate-private-key: {key}
wsgate:
  upstream-ca: {cert}
routes:
  - id: secure
    uri: wss://127.0.0.1:{upstream}
    predicates:
      - Path=/s/**
    filters:
      - StripPrefix=1
""")
    _, port = start_gateway_proc(procs, config, tls=True)
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"wss://127.0.0.1:{port}/s/ws", ssl=context) as ws:
            await ws.send_str("whoami")
            assert (await ws.receive()).data == "secure"
        async with session.get(f"https://127.0.0.1:{port}/s/thing", ssl=context) as response:
            assert response.status == 200
            body = await response.json()
            assert body["name"] == "secure"
            assert ("X-Forwarded-Proto", "https") in [tuple(h) for h in body["headers"]]
