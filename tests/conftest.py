"""Fixtures shared by every test: Redis, the dev Consul agent, and groups of real processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harness import (
    ManagedProcess,
    ProcessGroup,
    RedisInfo,
    delete_prefix,
    free_port,
    provide_redis,
    unique_prefix,
)
from harness.redis_cluster import OwnCluster, provide_redis_cluster


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisInfo]:
    """A Redis server that answers: the machine's, or one started for this test session."""
    with provide_redis(tmp_path_factory.mktemp("redis")) as (info, _proc):
        yield info


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    """A Redis Cluster of this test session's own: 3 masters and 3 replicas, ready and in sync."""
    with provide_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_prefix(redis_server: RedisInfo) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(redis_server, prefix)


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    """Start real processes; they are stopped after the test and their logs printed when it failed."""
    group = ProcessGroup(tmp_path / "logs")
    yield group
    group.stop_all()
    if _failed(request):
        print(group.logs())


def start_devconsul(procs: ProcessGroup, *, name: str = "devconsul", args: tuple[str, ...] = ()) -> ManagedProcess:
    """Start the dev Consul agent on a free port and wait until it answers."""
    port = free_port()
    proc = procs.python(name, "devconsul", "--port", str(port), *args)
    proc.extra["address"] = f"127.0.0.1:{port}"
    proc.wait_http_ready(f"http://127.0.0.1:{port}/v1/status/leader")
    return proc


@pytest.fixture
def consul_addr(procs: ProcessGroup) -> str:
    """host:port of a Consul agent: $CONSUL_HTTP_ADDR when set (conformance against real Consul), else the dev agent."""
    external = os.environ.get("CONSUL_HTTP_ADDR")
    if external:
        return external.removeprefix("http://")
    return str(start_devconsul(procs).extra["address"])


@pytest.fixture
async def consul_client(consul_addr: str) -> AsyncIterator[object]:
    """A py-consul `consul.aio.Consul` client for the agent under test."""
    import consul.aio

    host, _, port = consul_addr.rpartition(":")
    client = consul.aio.Consul(host=host, port=int(port))
    yield client
    await client.close()
