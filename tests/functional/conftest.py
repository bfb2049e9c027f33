"""Fixtures for functional tests: a real browser (Debian's chromium through Playwright) and a whole demo cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import ROOT, ManagedProcess, ProcessGroup, RedisInfo, free_port
from tests.conftest import start_devconsul

CHROMIUM = Path(os.environ.get("WSGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run")
ARTIFACTS = ROOT / "artifacts"
CLUSTER_SECRET = "functional-test-secret-of-32-bytes-or-more"
CLUSTER_API_KEY = "functional-test-key"
CLUSTER_ADMIN_TOKEN = "functional-test-admin-token"
CLUSTER_MANAGEMENT_KEY = "functional-test-management-key"  # the gateway's admin page reads nodes with it
_install_attempt: list[str] = []  # the outcome of the one apt-get attempt of this test session


def _ensure_chromium() -> str | None:
    """The chromium binary, installing it with apt-get once when missing; None and a reason when impossible."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    if not _install_attempt:
        apt = shutil.which("apt-get")
        if apt is None:
            _install_attempt.append("apt-get is not available")
        else:
            done = subprocess.run([apt, "install", "-y", "chromium"], capture_output=True, text=True, timeout=600,
                                  check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            _install_attempt.append(f"apt-get install -y chromium exited {done.returncode}: {done.stderr[-300:]}")
    return str(CHROMIUM) if CHROMIUM.exists() else None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless chromium driven by Playwright; skipped with the reason when chromium cannot be had."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
    executable = _ensure_chromium()
    if executable is None:
        pytest.skip(f"no chromium at {CHROMIUM}: {_install_attempt[-1] if _install_attempt else 'not found'}")
    async with playwright_api.async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
def artifacts() -> Path:
    """Where tests save screenshots (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass
class Cluster:
    """A running demo cluster: dev Consul, two nodes, the gateway and the demo page server."""

    procs: ProcessGroup
    redis_url: str
    redis_prefix: str
    consul_addr: str
    gateway_url: str
    demo_url: str
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    node_urls: dict[str, str] = field(default_factory=dict)
    api_key: str = CLUSTER_API_KEY
    secret: str = CLUSTER_SECRET
    admin_token: str = CLUSTER_ADMIN_TOKEN

    def push(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a push through the gateway; the JSON answer (raises on a non-2xx status)."""
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{self.gateway_url}/ws-svc/api/v1/push", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer


def write_routes(path: Path, consul_addr: str) -> Path:
    """The seed's route, with discovery pointing at the given Consul agent."""
    path.write_text(f"""\
discovery:
  consul:
    address: {consul_addr}
wsgate:
  admin-token: {CLUSTER_ADMIN_TOKEN}
  node-management-key: {CLUSTER_MANAGEMENT_KEY}
service:
  uri:
    ws-svc: lb:ws://ws-service
routes:
  - id: ws-svc
    uri: ${{service.uri.ws-svc}}
    predicates:
      - Path=/ws-svc/**
    filters:
      - RewritePath=/ws-svc/(?<path>.*), /$\\{{path}}
""")
    return path


def start_cluster(procs: ProcessGroup, redis_url: str, prefix: str, tmp_path: Path, *,
                  node_args: tuple[str, ...] = ()) -> Cluster:
    """Start devconsul, two nodes registered in it, the gateway and the demo server; wait on each one's health.

    `redis_url` is the nodes' `--redis` (one server, a shard list or a Cluster seed); `node_args` are extra `wsnode`
    flags for both nodes (tests shrink expiries with them).
    """
    consul = start_devconsul(procs)
    consul_addr = str(consul.extra["address"])
    demo_port = free_port()
    demo_origin = f"http://127.0.0.1:{demo_port}"
    node_env = {"WSNODE_LOG_LEVEL": "INFO"}
    cluster = Cluster(procs=procs, redis_url=redis_url, redis_prefix=prefix, consul_addr=consul_addr,
                      gateway_url="", demo_url=f"{demo_origin}/")
    for name in ("node-a", "node-b"):
        port = free_port()
        node = procs.python(name, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", name,
                            "--redis", redis_url, "--redis-prefix", prefix, "--consul", consul_addr,
                            "--jwt-secret", CLUSTER_SECRET, "--api-key", CLUSTER_API_KEY,
                            "--management-key", CLUSTER_MANAGEMENT_KEY,
                            "--allowed-origins", demo_origin, *node_args, env=node_env)
        cluster.nodes[name] = node
        cluster.node_urls[name] = f"http://127.0.0.1:{port}"
    for name, node in cluster.nodes.items():
        node.wait_http_ready(f"{cluster.node_urls[name]}/health")
    gw_port = free_port()
    routes = write_routes(tmp_path / "routes.yaml", consul_addr)
    gateway = procs.python("gateway", "gateway", "--config", str(routes), "--port", str(gw_port), "--workers", "1",
                           env={"CONSUL_HTTP_ADDR": consul_addr})
    cluster.gateway_url = f"http://127.0.0.1:{gw_port}"
    gateway.wait_http_ready(f"{cluster.gateway_url}/actuator/health")
    # Both nodes reachable through the gateway: their health through the route answers (discovery has caught up).
    gateway.wait_http_ready(f"{cluster.gateway_url}/ws-svc/health")
    demo = procs.python("demo", "demo.server", "--host", "127.0.0.1", "--port", str(demo_port),
                        "--secret", CLUSTER_SECRET, "--gateway", cluster.gateway_url, "--api-key", CLUSTER_API_KEY)
    demo.wait_http_ready(f"{demo_origin}/health")
    return cluster


@pytest.fixture
def cluster(procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    """A whole demo cluster for one test (Redis keys under the test's own prefix)."""
    yield start_cluster(procs, redis_server.url, redis_prefix, tmp_path)
