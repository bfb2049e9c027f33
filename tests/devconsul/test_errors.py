"""Error answers over raw HTTP: Consul's statuses and plain-text reasons, and the agent keeps serving after them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

EXTERNAL = bool(os.environ.get("CONSUL_HTTP_ADDR"))


@pytest.fixture
async def http(consul_addr: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A raw aiohttp session and the agent's base URL."""
    async with aiohttp.ClientSession() as session:
        yield session, f"http://{consul_addr}"


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), [
    ("GET", "/v1/no/such/endpoint", None, 404, None),
    ("GET", "/v1/agent/service/register", None, 405, "method GET not allowed"),
    ("DELETE", "/v1/health/service/x", None, 405, "method DELETE not allowed"),
    ("PUT", "/v1/agent/service/register", b"{not json", 400, "Request decode failed: "),
    ("PUT", "/v1/agent/service/register", b"", 400, "Request decode failed: EOF"),
    ("PUT", "/v1/agent/service/register", b'{"ID": "x"}', 400, "Missing service name"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Port": "80"}', 400,
     "Request decode failed: json: cannot unmarshal string into Go struct field ServiceDefinition.Port of type int"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/"}}', 400,
     "Interval must be > 0"),
    ("PUT", "/v1/agent/service/deregister/devconsul-no-such-id", None, 404,
     'Unknown service ID "devconsul-no-such-id"'),
    ("PUT", "/v1/agent/check/pass/devconsul-no-such-check", None, 404, 'Unknown check ID "devconsul-no-such-check"'),
    ("PUT", "/v1/agent/service/maintenance/devconsul-no-such-id", None, 400, "Missing value for enable"),
    ("GET", "/v1/health/service/x?index=1&wait=soon", None, 400, "Invalid wait time"),
    ("GET", "/v1/health/service/x?index=abc", None, 400, "Invalid index"),
    ("GET", "/v1/health/state/sideways", None, 400, "Bad check state"),
    ("PUT", "/v1/kv/devconsul-test/too-big", b"x" * (512 * 1024 + 1), 413, "too large"),
])
async def test_errors_answer_status_and_plain_text_reason(http: tuple[aiohttp.ClientSession, str], method: str,
                                                         path: str, body: bytes | None, status: int,
                                                         reason: str | None) -> None:
    session, base = http
    async with session.request(method, base + path, data=body) as response:
        text = await response.text()
        assert response.status == status, text
        if status == 405:
            assert "Allow" in response.headers
    if reason is not None and not EXTERNAL:  # real Consul's wording may differ slightly between versions
        assert reason in text
        assert response.content_type == "text/plain"
    async with session.get(base + "/v1/status/leader") as response:
        assert response.status == 200  # still serving


async def test_errors_blocking_headers_present(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, base = http
    async with session.get(base + "/v1/health/service/devconsul-nothing") as response:
        assert response.status == 200
        assert int(response.headers["X-Consul-Index"]) >= 1
        assert response.headers["X-Consul-KnownLeader"] == "true"
        assert "X-Consul-LastContact" in response.headers
        assert await response.json() == []


@pytest.mark.skipif(EXTERNAL, reason="dev-agent behaviour: real Consul implements these")
@pytest.mark.parametrize("path", ["/v1/agent/services?filter=Service%3D%3Dx", "/v1/health/service/x?peer=p"])
async def test_errors_unimplemented_parameters_are_refused(http: tuple[aiohttp.ClientSession, str],
                                                           path: str) -> None:
    session, base = http
    async with session.get(base + path) as response:
        assert response.status == 400
        assert "does not implement" in await response.text()


@pytest.mark.skipif(EXTERNAL, reason="dev-agent behaviour after its own restart")
async def test_errors_index_ahead_of_agent_answers_at_once(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, base = http
    async with session.get(base + "/v1/health/service/x?index=999999999&wait=30s",
                           timeout=aiohttp.ClientTimeout(total=5)) as response:
        assert response.status == 200
        assert int(response.headers["X-Consul-Index"]) < 999999999


async def test_check_update_sets_status_and_output(http: tuple[aiohttp.ClientSession, str],
                                                   service_name: str) -> None:
    session, base = http
    register = {"Name": service_name, "Check": {"TTL": "30s"}}
    async with session.put(f"{base}/v1/agent/service/register", json=register) as response:
        assert response.status == 200
    check_url = f"{base}/v1/agent/check/update/service:{service_name}"
    async with session.put(check_url, json={"Status": "warning", "Output": "half"}) as response:
        assert response.status == 200
    async with session.get(f"{base}/v1/agent/checks") as response:
        check = (await response.json())[f"service:{service_name}"]
    assert (check["Status"], check["Output"]) == ("warning", "half")
    async with session.put(check_url, json={"Status": "sideways"}) as response:
        assert response.status == 400
    async with session.put(f"{base}/v1/agent/service/deregister/{service_name}") as response:
        assert response.status == 200


async def test_kv_raw_returns_the_bare_value(http: tuple[aiohttp.ClientSession, str], service_name: str) -> None:
    session, base = http
    url = f"{base}/v1/kv/devconsul-test/{service_name}"
    async with session.put(url, data=b"\x00binary\xff") as response:
        assert await response.json() is True
    async with session.get(url + "?raw") as response:
        assert response.status == 200 and await response.read() == b"\x00binary\xff"
    async with session.delete(url) as response:
        assert await response.json() is True
    async with session.get(url) as response:
        assert response.status == 404 and "X-Consul-Index" in response.headers
