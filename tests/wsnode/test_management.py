"""Management data (CONTRACT section 8): /metrics and the detailed /health need a key on the public port (which the
gateway's seed route reaches as /ws-svc/...), or come from --management-port; Consul's check keeps working."""

from __future__ import annotations

import aiohttp

from harness import ProcessGroup, free_port
from tests.conftest import start_devconsul
from tests.wsnode.conftest import API_KEY, StartNode, eventually


async def test_metrics_and_health_details_need_a_key_on_the_public_port(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--management-key", "ops-key")
    async with http.get(f"{a.url}/metrics") as resp:
        assert resp.status == 401 and "wsnode_" not in await resp.text()
    async with http.get(f"{a.url}/metrics", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    async with http.get(f"{a.url}/health") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "UP"}
    for key in (API_KEY, "ops-key"):
        headers = {"Authorization": f"Bearer {key}"}
        async with http.get(f"{a.url}/metrics", headers=headers) as resp:
            assert resp.status == 200 and "wsnode_sessions" in await resp.text()
        async with http.get(f"{a.url}/health", headers=headers) as resp:
            health = await resp.json()
        assert health["node"] == "node-a" and health["tasks"] == {"pubsub": "UP", "refresh": "UP", "route-watch": "UP",
                                                                  "stream": "UP"}
    # A management key reads; it does not push.
    async with http.post(f"{a.url}/api/v1/push", json={"to": {"all": True}, "module": "m"},
                         headers={"Authorization": "Bearer ops-key"}) as resp:
        assert resp.status == 401


async def test_the_management_port_serves_details_without_a_key_and_consul_still_checks_the_node(
        start_node: StartNode, procs: ProcessGroup, http: aiohttp.ClientSession) -> None:
    consul = str(start_devconsul(procs).extra["address"])
    management = free_port()
    a = start_node("node-a", "--management-port", str(management), "--management-host", "127.0.0.1",
                   "--consul", consul)
    async with http.get(f"http://127.0.0.1:{management}/metrics") as resp:
        assert resp.status == 200 and "wsnode_sessions" in await resp.text()
    async with http.get(f"http://127.0.0.1:{management}/health") as resp:
        assert resp.status == 200 and (await resp.json())["node"] == "node-a"
    async with http.get(f"{a.url}/metrics") as resp:
        assert resp.status == 401
    async with http.get(f"{a.url}/health") as resp:
        assert await resp.json() == {"status": "UP"}

    async def passing() -> list[dict[str, object]]:
        async with http.get(f"http://{consul}/v1/health/service/ws-service?passing=true") as resp:
            return list(await resp.json())

    [entry] = await eventually(passing, timeout_s=10)
    assert entry["Service"]["Meta"] == {"node_id": "node-a", "management_port": str(management)}  # type: ignore[index]
