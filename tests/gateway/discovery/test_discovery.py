"""Discovery providers: static lists, and the Consul watch against the dev agent (real process)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.discovery.base import Endpoint
from gateway.discovery.consul import ConsulProvider
from gateway.discovery.static import StaticProvider
from gateway.ops.taskhealth import BACKOFF_MAX_S, backoff_s
from harness import ProcessGroup
from tests.gateway.procs import eventually, register, set_check


def provider_for(consul: str) -> ConsulProvider:
    host, _, port = consul.rpartition(":")
    return ConsulProvider(host=host, port=int(port))


async def test_static_provider_notifies_changes() -> None:
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", 1),)})
    assert provider.snapshot("svc") == (Endpoint("127.0.0.1", 1),)
    assert provider.snapshot("other") == ()
    version = provider.version
    waiter = asyncio.ensure_future(provider.wait_changed(version))
    provider.set("svc", ())
    assert await asyncio.wait_for(waiter, 1) > version
    assert provider.status()["status"] == "UP"


@pytest.mark.parametrize("failures", [1, 3, 10, 40])
def test_backoff_is_jittered_and_capped(failures: int) -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_s(failures, rng=rng) for _ in range(50)]
    assert all(0 <= d <= BACKOFF_MAX_S for d in delays)
    assert len(set(delays)) > 1


async def test_consul_provider_sees_passing_instances(consul_addr: str) -> None:
    await register(consul_addr, "a", 9001)
    await register(consul_addr, "b", 9002, status="critical")
    provider = provider_for(consul_addr)
    await provider.start(frozenset({"ws-service"}))
    try:
        assert [e.port for e in provider.snapshot("ws-service")] == [9001]
        assert provider.snapshot("ws-service")[0].tags == ("t1",)
        assert provider.status()["status"] == "UP"
    finally:
        await provider.stop()


async def test_consul_provider_applies_check_changes_within_a_second(consul_addr: str) -> None:
    await register(consul_addr, "a", 9001)
    await register(consul_addr, "b", 9002)
    provider = provider_for(consul_addr)
    await provider.start(frozenset({"ws-service"}))
    try:
        assert len(provider.snapshot("ws-service")) == 2
        version = provider.version
        started = time.monotonic()
        await set_check(consul_addr, "a", "fail")
        await asyncio.wait_for(provider.wait_changed(version), 1.0)
        assert [e.port for e in provider.snapshot("ws-service")] == [9002]
        assert time.monotonic() - started < 1.0
        version = provider.version
        await set_check(consul_addr, "a", "pass")
        await asyncio.wait_for(provider.wait_changed(version), 1.0)
        assert len(provider.snapshot("ws-service")) == 2
    finally:
        await provider.stop()


async def test_consul_provider_watches_services_added_on_reload(consul_addr: str) -> None:
    await register(consul_addr, "x", 9100, name="other")
    provider = provider_for(consul_addr)
    await provider.start(frozenset())
    try:
        version = provider.version
        await provider.set_services(frozenset({"other"}))
        await asyncio.wait_for(provider.wait_changed(version), 2.0)
        assert [e.port for e in provider.snapshot("other")] == [9100]
        await provider.set_services(frozenset())
        assert provider.snapshot("other") == ()
    finally:
        await provider.stop()


async def test_consul_provider_keeps_instances_while_consul_is_down(procs: ProcessGroup) -> None:
    from tests.conftest import start_devconsul

    agent = start_devconsul(procs)
    consul = str(agent.extra["address"])
    await register(consul, "a", 9001)
    provider = provider_for(consul)
    await provider.start(frozenset({"ws-service"}))
    try:
        assert len(provider.snapshot("ws-service")) == 1
        agent.kill()
        assert await eventually(lambda: provider.status()["status"] == "DOWN")
        assert len(provider.snapshot("ws-service")) == 1
    finally:
        await provider.stop()
