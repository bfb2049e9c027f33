"""Conformance of the agent, health and catalog endpoints, driven only through py-consul's consul.aio client.

With $CONSUL_HTTP_ADDR set these run against that (real) Consul agent instead of the dev agent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import consul

from harness import free_port
from tests.devconsul.conftest import HealthBackend, check_status, dev_only, statuses, wait_health


async def test_agent_register_deregister_roundtrip(consul_client: Any, service_name: str) -> None:
    sid = f"{service_name}-1"
    assert await consul_client.agent.service.register(
        service_name, service_id=sid, address="127.0.0.2", port=9001, tags=["v1", "blue"], meta={"zone": "a"},
        check=consul.Check.ttl("30s"))
    await wait_health(consul_client, service_name, lambda e: bool(e))  # real Consul syncs the catalog async
    services = await consul_client.agent.services()
    assert services[sid]["Service"] == service_name
    assert (services[sid]["Port"], services[sid]["Address"], services[sid]["Tags"], services[sid]["Meta"]) == (
        9001, "127.0.0.2", ["v1", "blue"], {"zone": "a"})
    definition = await consul_client.agent.service_definition(sid)
    assert definition["ID"] == sid
    _, nodes = await consul_client.catalog.service(service_name)
    assert [(n["ServiceID"], n["ServiceAddress"], n["ServicePort"], n["ServiceTags"]) for n in nodes] == [
        (sid, "127.0.0.2", 9001, ["v1", "blue"])]
    assert nodes[0]["ServiceMeta"] == {"zone": "a"} and nodes[0]["Node"] and nodes[0]["Address"]
    _, catalog_services = await consul_client.catalog.services()
    assert sorted(catalog_services[service_name]) == ["blue", "v1"]
    _, entries = await consul_client.health.service(service_name)
    assert statuses(entries) == {sid: {f"service:{sid}": "critical", "serfHealth": "passing"}}
    assert entries[0]["Node"]["Node"] == nodes[0]["Node"]

    assert await consul_client.agent.service.deregister(sid)
    assert sid not in await consul_client.agent.services()
    assert f"service:{sid}" not in await consul_client.agent.checks()
    await wait_health(consul_client, service_name, lambda e: e == [])
    assert (await consul_client.catalog.service(service_name))[1] == []
    assert await consul_client.agent.service.deregister(sid) is False  # 404: unknown service ID


async def test_http_check_follows_backend_health(consul_client: Any, service_name: str,
                                                 health_backend: HealthBackend) -> None:
    sid = f"{service_name}-1"
    await consul_client.agent.service.register(service_name, service_id=sid, port=1,
                                               check=consul.Check.http(health_backend.url, "200ms", timeout="1s"))
    entries = await wait_health(consul_client, service_name, lambda e: bool(e), passing=True)
    check = next(c for c in entries[0]["Checks"] if c["CheckID"] == f"service:{sid}")
    assert check["Type"] == "http"
    assert check["Output"].startswith(f"HTTP GET {health_backend.url}: 200 OK Output: status 200")

    health_backend.status = 503
    entries = await wait_health(consul_client, service_name,
                                lambda e: check_status(e, sid, f"service:{sid}") == "critical")
    check = next(c for c in entries[0]["Checks"] if c["CheckID"] == f"service:{sid}")
    assert "503" in check["Output"]
    assert (await consul_client.health.service(service_name, passing=True))[1] == []

    health_backend.status = 429  # Consul maps Too Many Requests to warning
    await wait_health(consul_client, service_name, lambda e: check_status(e, sid, f"service:{sid}") == "warning")
    await consul_client.agent.service.deregister(sid)


async def test_http_check_sends_method_and_headers(consul_client: Any, service_name: str,
                                                   health_backend: HealthBackend) -> None:
    check = {**consul.Check.http(health_backend.url, "200ms", header={"X-Probe": ["yes"]}), "Method": "PUT"}
    await consul_client.agent.service.register(service_name, check=check)
    await wait_health(consul_client, service_name, lambda e: bool(e), passing=True)
    method, headers = health_backend.probes[-1]
    assert (method, headers.get("X-Probe"), headers.get("User-Agent")) == ("PUT", "yes", "Consul Health Check")
    await consul_client.agent.service.deregister(service_name)


async def test_http_check_to_closed_port_is_critical_with_dial_error(consul_client: Any, service_name: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    # Starting as passing makes the first probe a status change, which Consul syncs to the catalog at once
    # (output-only changes reach it only after check_update_interval).
    check = {**consul.Check.http(url, "200ms", timeout="1s"), "Status": "passing"}
    await consul_client.agent.service.register(service_name, check=check)
    entries = await wait_health(consul_client, service_name,
                                lambda e: check_status(e, service_name, f"service:{service_name}") == "critical")
    check = next(c for c in entries[0]["Checks"] if c["CheckID"] == f"service:{service_name}")
    assert check["Output"].startswith(f'Get "{url}": dial tcp 127.0.0.1:') and "connection refused" in check["Output"]
    await consul_client.agent.service.deregister(service_name)


async def test_ttl_check_goes_critical_unless_refreshed(consul_client: Any, service_name: str) -> None:
    sid = f"{service_name}-1"
    check_id = f"service:{sid}"
    await consul_client.agent.service.register(service_name, service_id=sid, check=consul.Check.ttl("1s"))
    assert (await consul_client.agent.checks())[check_id]["Status"] == "critical"

    assert await consul_client.agent.check.ttl_pass(check_id, notes="alive")
    refreshed_at = time.monotonic()
    entries = await wait_health(consul_client, service_name, lambda e: bool(e), passing=True)
    assert next(c for c in entries[0]["Checks"] if c["CheckID"] == check_id)["Output"] == "alive"

    entries = await wait_health(consul_client, service_name, lambda e: check_status(e, sid, check_id) == "critical")
    assert time.monotonic() - refreshed_at >= 0.9
    assert next(c for c in entries[0]["Checks"] if c["CheckID"] == check_id)["Output"].startswith("TTL expired")

    assert await consul_client.agent.check.ttl_pass(check_id)
    assert (await consul_client.agent.checks())[check_id]["Status"] == "passing"
    await consul_client.agent.service.deregister(sid)


async def test_ttl_warn_and_fail_set_status_and_note(consul_client: Any, service_name: str) -> None:
    sid = f"{service_name}-1"
    check_id = f"service:{sid}"
    await consul_client.agent.service.register(service_name, service_id=sid, check=consul.Check.ttl("30s"))
    await consul_client.agent.check.ttl_warn(check_id, notes="slow")
    check = (await consul_client.agent.checks())[check_id]
    assert (check["Status"], check["Output"]) == ("warning", "slow")
    assert (await consul_client.health.service(service_name, passing=True))[1] == []
    await consul_client.agent.check.ttl_fail(check_id, notes="down")
    assert (await consul_client.agent.checks())[check_id]["Status"] == "critical"
    assert await consul_client.agent.check.ttl_pass("no-such-check") is False  # 404
    await consul_client.agent.service.deregister(sid)


@dev_only
async def test_deregister_critical_service_after_removes_service(consul_client: Any, service_name: str) -> None:
    sid = f"{service_name}-1"
    check = {**consul.Check.ttl("30s"), "DeregisterCriticalServiceAfter": "300ms"}
    started = time.monotonic()
    await consul_client.agent.service.register(service_name, service_id=sid, check=check)
    await wait_health(consul_client, service_name, lambda e: e == [])
    assert time.monotonic() - started >= 0.3
    assert sid not in await consul_client.agent.services()
    assert f"service:{sid}" not in await consul_client.agent.checks()


async def test_maintenance_mode_adds_critical_check(consul_client: Any, service_name: str) -> None:
    sid = f"{service_name}-1"
    maintenance_id = f"_service_maintenance:{sid}"
    await consul_client.agent.service.register(service_name, service_id=sid,
                                               check={**consul.Check.ttl("30s"), "Status": "passing"})
    await wait_health(consul_client, service_name, lambda e: len(e) == 1, passing=True)

    assert await consul_client.agent.service.maintenance(sid, "true", reason="upgrading")
    entries = await wait_health(consul_client, service_name, lambda e: check_status(e, sid, maintenance_id) is not None)
    check = next(c for c in entries[0]["Checks"] if c["CheckID"] == maintenance_id)
    assert (check["Status"], check["Notes"], check["ServiceID"]) == ("critical", "upgrading", sid)
    assert (await consul_client.health.service(service_name, passing=True))[1] == []
    assert maintenance_id in await consul_client.agent.checks()

    assert await consul_client.agent.service.maintenance(sid, "false")
    assert maintenance_id not in await consul_client.agent.checks()
    await wait_health(consul_client, service_name, lambda e: len(e) == 1, passing=True)
    assert await consul_client.agent.service.maintenance(f"{sid}-missing", "true") is False  # 404
    await consul_client.agent.service.deregister(sid)


async def test_health_tag_and_passing_filters(consul_client: Any, service_name: str) -> None:
    layout = {"a": (["primary"], "passing"), "b": (["secondary"], "passing"), "c": (["primary", "secondary"],
                                                                                       "critical")}
    for suffix, (tags, status) in layout.items():
        await consul_client.agent.service.register(service_name, service_id=f"{service_name}-{suffix}", tags=tags,
                                                   check={**consul.Check.ttl("30s"), "Status": status})
    await wait_health(consul_client, service_name, lambda e: len(e) == len(layout))

    async def ids(**query: Any) -> list[str]:
        _, entries = await consul_client.health.service(service_name, **query)
        return sorted(e["Service"]["ID"].removeprefix(f"{service_name}-") for e in entries)

    assert await ids() == ["a", "b", "c"]
    assert await ids(tag="primary") == ["a", "c"]
    assert await ids(tag=["primary", "secondary"]) == ["c"]
    assert await ids(passing=True) == ["a", "b"]
    assert await ids(passing=True, tag="primary") == ["a"]
    _, nodes = await consul_client.catalog.service(service_name, tag="secondary")
    assert sorted(n["ServiceID"].removeprefix(f"{service_name}-") for n in nodes) == ["b", "c"]
    _, checks = await consul_client.health.checks(service_name)
    assert sorted(c["Status"] for c in checks) == ["critical", "passing", "passing"]
    _, critical = await consul_client.health.state("critical")
    assert f"service:{service_name}-c" in {c["CheckID"] for c in critical}
    for suffix in layout:
        await consul_client.agent.service.deregister(f"{service_name}-{suffix}")


async def test_blocking_health_query_returns_when_check_changes(consul_client: Any, service_name: str) -> None:
    sid = f"{service_name}-1"
    check_id = f"service:{sid}"
    await consul_client.agent.service.register(service_name, service_id=sid, check=consul.Check.ttl("60s"))
    await wait_health(consul_client, service_name, lambda e: check_status(e, sid, check_id) == "critical")
    index, _ = await consul_client.health.service(service_name)

    query = asyncio.create_task(consul_client.health.service(service_name, index=index, wait="30s"))
    done, _ = await asyncio.wait({query}, timeout=0.5)
    assert not done, "the blocking query returned before anything changed"

    changed_at = time.monotonic()
    await consul_client.agent.check.ttl_pass(check_id)
    new_index, entries = await asyncio.wait_for(query, timeout=3.0)
    assert time.monotonic() - changed_at < 3.0
    assert int(new_index) > int(index)
    assert statuses(entries)[sid][check_id] == "passing"
    await consul_client.agent.service.deregister(sid)


async def test_blocking_query_without_change_returns_at_wait(consul_client: Any, service_name: str) -> None:
    await consul_client.agent.service.register(service_name, check=consul.Check.ttl("60s"))
    await wait_health(consul_client, service_name, lambda e: bool(e))
    index, _ = await consul_client.health.service(service_name)
    started = time.monotonic()
    same_index, _ = await consul_client.health.service(service_name, index=index, wait="400ms")
    elapsed = time.monotonic() - started
    assert same_index == index
    assert 0.35 <= elapsed < 5.0
    await consul_client.agent.service.deregister(service_name)


async def test_blocking_catalog_services_returns_on_registration(consul_client: Any, service_name: str) -> None:
    index, services = await consul_client.catalog.services()
    assert service_name not in services
    query = asyncio.create_task(consul_client.catalog.services(index=index, wait="30s"))
    done, _ = await asyncio.wait({query}, timeout=0.3)
    assert not done
    await consul_client.agent.service.register(service_name, tags=["x"])
    new_index, services = await asyncio.wait_for(query, timeout=3.0)
    assert int(new_index) > int(index) and services[service_name] == ["x"]
    await consul_client.agent.service.deregister(service_name)


async def test_reregister_with_replace_existing_checks_drops_old_checks(consul_client: Any,
                                                                        service_name: str) -> None:
    sid = f"{service_name}-1"
    await consul_client.agent.service.register(service_name, service_id=sid, check=consul.Check.ttl("30s"),
                                               extra_checks=[consul.Check.ttl("30s")])
    assert {f"service:{sid}:1", f"service:{sid}:2"} <= set(await consul_client.agent.checks())
    await consul_client.agent.service.register(service_name, service_id=sid, check=consul.Check.ttl("30s"),
                                               replace_existing_checks=True)
    checks = {k for k in await consul_client.agent.checks() if k.startswith(f"service:{sid}")}
    assert checks == {f"service:{sid}"}
    await consul_client.agent.service.deregister(sid)


async def test_status_leader_and_agent_self(consul_client: Any) -> None:
    leader = await consul_client.status.leader()
    assert isinstance(leader, str) and leader.endswith(":8300")
    me = await consul_client.agent.self()
    assert me["Config"]["Datacenter"] and me["Config"]["NodeName"] == me["Member"]["Name"]
    _, nodes = await consul_client.catalog.nodes()
    assert me["Config"]["NodeName"] in {n["Node"] for n in nodes}
