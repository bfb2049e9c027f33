"""discovery.locator over Consul (the dev agent): a route per registered service, following registrations."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from harness import ProcessGroup, http_status
from tests.gateway.procs import register, start_gateway_proc, start_upstream_proc

ROUTES = """
spring:
  cloud:
    consul: {{host: 127.0.0.1, port: {port}}}
    gateway:
      discovery:
        locator:
          enabled: true
          lower-case-service-id: true
"""


async def _route_ids(base: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/actuator/gateway/routes") as response:
        return [route["route_id"] for route in await response.json()]


async def test_locator_routes_follow_services_registered_and_deregistered_in_consul(
        procs: ProcessGroup, consul_addr: str, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "orders")
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(port=consul_addr.rpartition(":")[2]))
    _, port = start_gateway_proc(procs, config)
    base = f"http://127.0.0.1:{port}"
    assert http_status(f"{base}/Orders-Svc/describe") == 404

    await register(consul_addr, "orders-1", upstream, name="Orders-Svc")
    route_id = "ReactiveCompositeDiscoveryClient_Orders-Svc"
    deadline_ok = False
    for _ in range(500):  # up to ~25 s of 50 ms polls: a blocking query answers well within one
        if route_id in await _route_ids(base) and http_status(f"{base}/orders-svc/describe") == 200:
            deadline_ok = True
            break
        await procs_wait()
    assert deadline_ok, await _route_ids(base)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/orders-svc/describe?x=1") as response:
        seen = await response.json()
    # SCG's defaults: Path=/orders-svc/** (lower-case-service-id) and RewritePath strips the service id.
    assert (seen["path"], seen["query"]) == ("/describe", "x=1")

    async with aiohttp.ClientSession() as session, session.put(
            f"http://{consul_addr}/v1/agent/service/deregister/orders-1") as response:
        assert response.status == 200
    gone = False
    for _ in range(500):
        if route_id not in await _route_ids(base):
            gone = True
            break
        await procs_wait()
    assert gone
    assert http_status(f"{base}/orders-svc/describe") == 404


async def procs_wait() -> None:
    """One polling step (the condition is re-checked each time; this only paces the loop)."""
    import asyncio

    await asyncio.sleep(0.05)
