"""Filters that act around the forward, through a real gateway and real backends: local answers (RedirectTo,
RequestSize), SetStatus, Retry on HTTP and on WebSocket upgrades, CircuitBreaker with a `forward:` fallback and
FallbackHeaders (tables after SCG's RetryGatewayFilterFactoryIntegrationTests and
SpringCloudCircuitBreakerFilterFactoryTests).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.config.loader import load_config_text
from gateway.config.model import RouteSpec
from gateway.routing.factory import Definition
from gateway.routing.filters import build_filter
from gateway.routing.resilience import BreakerSettings
from harness import free_port
from tests.gateway.conftest import StartGateway, config, route

Counter = dict[str, int]


def with_filter(spec: RouteSpec, factory: str, **args: str) -> RouteSpec:
    """`spec` with one filter given in SCG's expanded form (name + args)."""
    return dataclasses.replace(spec, filters=(*spec.filters, build_filter(Definition(factory, tuple(args.items())))))


@pytest.fixture
async def flaky() -> AsyncIterator[Callable[[int], asyncio.Future[tuple[int, Counter]]]]:
    """A backend whose /flaky answers 500 (and refuses upgrades with 503) the first `fail` times, then succeeds."""
    runners: list[web.AppRunner] = []

    async def start(fail: int) -> tuple[int, Counter]:
        counts: Counter = {"http": 0, "ws": 0}

        async def flaky_http(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                counts["ws"] += 1
                if counts["ws"] <= fail:
                    return web.Response(status=503, text="not yet")
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                async for msg in ws:
                    await ws.send_str(msg.data)
                return ws
            counts["http"] += 1
            if counts["http"] <= fail:
                await request.read()
                return web.Response(status=500, text="boom")
            return web.json_response({"attempt": counts["http"], "headers": dict(request.headers),
                                      "body": (await request.read()).decode()})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", flaky_http)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        assert site._server is not None
        return int(site._server.sockets[0].getsockname()[1]), counts  # type: ignore[attr-defined]

    yield start  # type: ignore[misc]
    for runner in runners:
        await runner.cleanup()


async def test_scg_policy_redirect_to_is_answered_by_the_gateway(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(route("r", "http://127.0.0.1:9", ["Path=/old/**"],
                                          ["AddResponseHeader=X-Before, 1", "RedirectTo=302, https://acme.org"])))
    async with aiohttp.ClientSession() as session, \
            session.get(f"{gw.url}/old/x", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "https://acme.org"
        assert response.headers["X-Before"] == "1"


async def test_scg_policy_request_size_413(start_gateway: StartGateway, flaky: Callable[..., object]) -> None:
    port, _ = await flaky(0)  # type: ignore[misc]
    limited = with_filter(route("r", f"http://127.0.0.1:{port}", ["Path=/**"]), "RequestSize", maxSize="10B")
    gw = await start_gateway(config(limited))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/up", data=b"x" * 11) as response:
            assert response.status == 413
            assert response.headers["errorMessage"].startswith("Request size is larger than permissible limit.")
        async with session.post(f"{gw.url}/up", data=b"x" * 10) as response:
            assert response.status == 200


async def test_scg_policy_set_status_changes_the_instance_status(start_gateway: StartGateway,
                                                                 flaky: Callable[..., object]) -> None:
    port, _ = await flaky(0)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"], ["SetStatus=401"])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 401
        assert (await response.json())["attempt"] == 1


@pytest.mark.parametrize(
    ("retry", "fail", "status", "attempts"),
    [
        ("Retry=3", 2, 200, 3),  # SERVER_ERROR series by default
        ("Retry=1", 2, 500, 2),  # the last answer is passed on
        ("Retry=3, BAD_GATEWAY", 1, 200, 2),  # statuses add to the default SERVER_ERROR series, as in SCG
        ("Retry=3, INTERNAL_SERVER_ERROR, POST", 1, 500, 1),  # GET is not a listed method
        ("Retry=3, INTERNAL_SERVER_ERROR, GET, 10ms, 50ms, 2, false", 2, 200, 3),
    ],
)
async def test_scg_policy_retry_http(start_gateway: StartGateway, flaky: Callable[..., object], retry: str,
                                     fail: int, status: int, attempts: int) -> None:
    port, counts = await flaky(fail)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"], [retry])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == status
    assert counts["http"] == attempts


async def test_scg_policy_retry_http_on_connect_refused(start_gateway: StartGateway) -> None:
    port = free_port()  # nothing listens: every dial is refused
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          ["Retry=2, INTERNAL_SERVER_ERROR, GET, 5ms"])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 503
    assert gw.metrics.render().count(f'instance="127.0.0.1:{port}"') >= 1
    text = gw.metrics.render()
    assert f'wsgate_upstream_errors_total{{instance="127.0.0.1:{port}",reason="refused",route="r"}} 3' in text


@pytest.mark.parametrize("native", [True, False])
async def test_scg_policy_retry_websocket_upgrade_on_listed_status(start_gateway: StartGateway,
                                                                   flaky: Callable[..., object],
                                                                   native: bool) -> None:
    port, counts = await flaky(2)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"ws://127.0.0.1:{port}", ["Path=/**"],
                                          ["Retry=3, SERVICE_UNAVAILABLE"]), native_relay=native))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.url}/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "hello"
    assert counts["ws"] == 3


async def test_scg_policy_circuit_breaker_fallback_forward_with_fallback_headers(
        start_gateway: StartGateway, flaky: Callable[..., object]) -> None:
    port, _ = await flaky(0)  # type: ignore[misc]
    dead = free_port()
    guarded = with_filter(route("cb", f"http://127.0.0.1:{dead}", ["Path=/guarded/**"]), "CircuitBreaker",
                          name="myCircuitBreaker", fallbackUri="forward:/fallback")
    fallback = route("fb", f"http://127.0.0.1:{port}", ["Path=/fallback"], ["FallbackHeaders"])
    gw = await start_gateway(config(guarded, fallback))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/guarded/x") as response:
        assert response.status == 200
        headers = (await response.json())["headers"]
        assert headers["Execution-Exception-Type"] == "io.netty.channel.AbstractChannel$AnnotatedConnectException"
        assert "Root-Cause-Exception-Message" in headers


async def test_scg_policy_circuit_breaker_opens_then_answers_503(start_gateway: StartGateway) -> None:
    dead = free_port()
    cfg = config(route("cb", f"http://127.0.0.1:{dead}", ["Path=/**"], ["CircuitBreaker=cb1"]))
    settings = BreakerSettings(sliding_window_size=2, minimum_number_of_calls=2, wait_duration_in_open_state_s=3600)
    gw = await start_gateway(dataclasses.replace(cfg, breakers=(("cb1", settings),)))
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{gw.url}/x") as response:
                statuses.append((response.status, (await response.json())["message"]))
    assert [s for s, _ in statuses] == [503, 503, 503]
    assert statuses[2][1] == "Upstream service is temporarily unavailable"  # the open breaker, not a dial
    assert gw.server.breakers.get("cb1").state.value == "OPEN"


async def test_scg_policy_remove_json_attributes_response_body(start_gateway: StartGateway,
                                                               flaky: Callable[..., object]) -> None:
    port, _ = await flaky(0)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          ["RemoveJsonAttributesResponseBody=headers, body"])))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the client connection stays usable after a buffered answer
            async with session.get(f"{gw.url}/x") as response:
                assert response.status == 200
                assert await response.read() in (b'{"attempt":1}', b'{"attempt":2}')
                assert response.headers["Content-Length"] == "13"


async def test_scg_policy_local_response_cache_serves_the_second_get(start_gateway: StartGateway,
                                                                    flaky: Callable[..., object]) -> None:
    port, counts = await flaky(0)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          ["LocalResponseCache=1m"])))
    async with aiohttp.ClientSession() as session:
        bodies = []
        for _ in range(3):
            async with session.get(f"{gw.url}/x") as response:
                assert response.status == 200
                assert response.headers["Cache-Control"].startswith("max-age=")
                bodies.append((await response.json())["attempt"])
        async with session.get(f"{gw.url}/x", headers={"Cache-Control": "no-cache"}) as response:
            bodies.append((await response.json())["attempt"])
    assert bodies == [1, 1, 1, 2]
    assert counts["http"] == 2


@pytest.mark.parametrize("native", [True, False])
async def test_scg_policy_retry_websocket_upgrade_on_connect_refused(start_gateway: StartGateway, native: bool) -> None:
    """Retry on an upgrade route: each attempt dials again (here three refused dials), then 503 naming the service."""
    dead = free_port()
    gw = await start_gateway(config(route("r", f"ws://127.0.0.1:{dead}", ["Path=/**"], ["Retry=2"]),
                                    native_relay=native))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{gw.url}/ws")
    assert refused.value.status == 503
    text = gw.metrics.render()
    assert f'wsgate_upstream_errors_total{{instance="127.0.0.1:{dead}",reason="refused",route="r"}} 3' in text


@pytest.mark.parametrize("native", [True, False])
async def test_scg_policy_circuit_breaker_fallback_for_websocket_upgrade(start_gateway: StartGateway,
                                                                        native: bool) -> None:
    """A CircuitBreaker on an upgrade route answers its fallback when the dial fails (nothing was relayed yet);
    here the fallback is one of the gateway's own handlers (`forward:/actuator/health`)."""
    dead = free_port()
    guarded = with_filter(route("ws", f"ws://127.0.0.1:{dead}", ["Path=/ws/**"]), "CircuitBreaker",
                          fallbackUri="forward:/actuator/health")
    gw = await start_gateway(config(guarded, native_relay=native))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as answered:
            await session.ws_connect(f"{gw.url}/ws/chat")
    assert answered.value.status in (200, 503)  # the health handler's answer, not the dial's 503 error
    assert 'reason="refused",route="ws"' in gw.metrics.render()


async def test_scg_policy_circuit_breaker_time_limiter(start_gateway: StartGateway) -> None:
    """Resilience4j's time limiter (timeoutDuration): a slow instance is answered 504, or by the fallback."""
    app = web.Application()
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await release.wait()  # answers only after the test is over
        return web.Response(text="late")

    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        plain = route("plain", f"http://127.0.0.1:{port}", ["Path=/plain/**"], ["CircuitBreaker=slow"])
        guarded = with_filter(route("guarded", f"http://127.0.0.1:{port}", ["Path=/guarded/**"]), "CircuitBreaker",
                              name="slow", fallbackUri="forward:/actuator/health")
        cfg = dataclasses.replace(config(plain, guarded), breakers=(("slow", BreakerSettings(timeout_s=0.2)),))
        gw = await start_gateway(cfg)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.url}/plain/x") as response:
                assert response.status == 504
            async with session.get(f"{gw.url}/guarded/x") as response:
                assert response.status in (200, 503)  # the gateway's own health handler answered
                assert "status" in await response.json()
    finally:
        release.set()
        await runner.cleanup()


async def test_scg_policy_retry_timeout_ends_the_retries(start_gateway: StartGateway,
                                                         flaky: Callable[..., object]) -> None:
    """Retry's `timeout`: no retry starts once it has passed; the last answer is passed on."""
    port, counts = await flaky(10)  # type: ignore[misc]
    spec = with_filter(route("r", f"http://127.0.0.1:{port}", ["Path=/**"]), "Retry", retries="10",
                       **{"backoff.firstBackoff": "100ms", "backoff.factor": "1", "timeout": "250ms"})
    gw = await start_gateway(config(spec))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 500
    assert 1 <= counts["http"] <= 4  # attempts at least 100 ms apart, none started after 250 ms: not 11


async def test_scg_policy_request_header_to_request_uri(start_gateway: StartGateway,
                                                        flaky: Callable[..., object]) -> None:
    """The request goes to the URL a header names (path and query included), not to the route's uri."""
    port, counts = await flaky(0)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{free_port()}", ["Path=/**"],
                                          ["RequestHeaderToRequestUri=X-New-Url"])))
    async with aiohttp.ClientSession() as session:
        headers = {"X-New-Url": f"http://127.0.0.1:{port}/elsewhere?q=1"}
        async with session.get(f"{gw.url}/x", headers=headers) as response:
            assert response.status == 200
    assert counts["http"] == 1


@pytest.mark.parametrize("expect100", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
async def test_scg_policy_retry_sends_the_body_again(start_gateway: StartGateway, flaky: Callable[..., object],
                                                     expect100: bool, chunked: bool) -> None:
    """SCG keeps the body for Retry (enableBodyCaching): a POST is sent whole on every attempt."""
    port, counts = await flaky(2)  # type: ignore[misc]
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          ["Retry=3, INTERNAL_SERVER_ERROR, POST"])))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"hel"
        yield b"lo"

    async with aiohttp.ClientSession() as session, session.post(
            f"{gw.url}/x", data=chunks() if chunked else b"hello", expect100=expect100) as response:
        assert response.status == 200
        assert (await response.json())["body"] == "hello"
    assert counts["http"] == 3


async def test_scg_policy_circuit_breaker_fallback_gets_the_body(start_gateway: StartGateway,
                                                               flaky: Callable[..., object]) -> None:
    """The fallback route receives the request body even though the failed attempt already sent it."""
    port, _ = await flaky(0)  # type: ignore[misc]
    failing, _ = await flaky(100)  # type: ignore[misc]
    guarded = with_filter(route("cb", f"http://127.0.0.1:{failing}", ["Path=/guarded/**"]), "CircuitBreaker",
                          fallbackUri="forward:/fallback", statusCodes="500")
    fallback = route("fb", f"http://127.0.0.1:{port}", ["Path=/fallback"], ["FallbackHeaders"])
    gw = await start_gateway(config(guarded, fallback))
    async with aiohttp.ClientSession() as session, session.post(f"{gw.url}/guarded/x", data=b"payload") as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["body"] == "payload"
    assert answer["headers"]["Execution-Exception-Message"] == "500 INTERNAL_SERVER_ERROR"


async def test_scg_policy_fallback_route_is_not_judged_by_the_failed_route_breaker(
        start_gateway: StartGateway, flaky: Callable[..., object]) -> None:
    """The fallback's own 500 is its answer: the guarded route's statusCodes do not apply to it."""
    failing, _ = await flaky(100)  # type: ignore[misc]
    also_failing, counts = await flaky(100)  # type: ignore[misc]
    guarded = with_filter(route("cb", f"http://127.0.0.1:{failing}", ["Path=/guarded/**"]), "CircuitBreaker",
                          fallbackUri="forward:/fallback", statusCodes="500")
    fallback = route("fb", f"http://127.0.0.1:{also_failing}", ["Path=/fallback"])
    gw = await start_gateway(config(guarded, fallback))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/guarded/x") as response:
        assert response.status == 500
        assert await response.text() == "boom"
    assert counts["http"] == 1


async def test_scg_policy_local_answer_to_head_has_no_body(start_gateway: StartGateway) -> None:
    """A gateway answer to HEAD keeps its Content-Length and sends no body, so the next request stays framed
    (here the 404 with global CORS headers that add-to-simple-url-handler-mapping gives a request no route takes)."""
    yaml_text = (
        "spring.cloud.gateway.globalcors:\n  add-to-simple-url-handler-mapping: true\n  cors-configurations:\n"
        "    '[/**]': {allowedOrigins: '*'}\n"
        "routes:\n  - {id: r, uri: 'http://127.0.0.1:9', predicates: [Path=/only/**]}\n")
    gw = await start_gateway(load_config_text(yaml_text))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"HEAD /x HTTP/1.1\r\nHost: h\r\nOrigin: http://o.example\r\n\r\n"
                     b"GET /x HTTP/1.1\r\nHost: h\r\nOrigin: http://o.example\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404 ") and b"Access-Control-Allow-Origin: *" in first
    assert rest.startswith(b"HTTP/1.1 404 ")  # no body between the two answers
    assert rest.endswith(b'"path": "/x"}')


async def test_scg_policy_circuit_breaker_resume_without_error(start_gateway: StartGateway) -> None:
    """`resumeWithoutError: true` without a fallback: a failed call ends with an empty 200 (SCG's Mono.empty())."""
    spec = with_filter(route("r", f"http://127.0.0.1:{free_port()}", ["Path=/**"]), "CircuitBreaker",
                       resumeWithoutError="true")
    gw = await start_gateway(config(spec))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 200
        assert await response.read() == b""
