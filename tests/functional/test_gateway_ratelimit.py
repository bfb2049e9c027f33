"""RequestRateLimiter end to end: two gateway processes share one Redis token bucket per route and caller.

One gateway takes its Redis URL and key prefix from the environment (REDIS_URL, WSGATE_REDIS_PREFIX), the other
from `wsgate.redis` in its routes.yaml; both must land on the same buckets. On both HTTP lanes: with
`wsgate.native-http` the lane sends the bucket's script itself (gateway/_http_redis.c), once the first limited
request has told the limiter what its URL names.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from harness import ProcessGroup, RedisInfo
from tests.gateway.procs import start_gateway_proc, start_upstream_proc

BURST = 5


def routes(upstream: int, wsgate_section: str = "") -> str:
    return f"""\
{wsgate_section}routes:
  - id: by-client
    uri: http://127.0.0.1:{upstream}
    predicates:
      - Path=/client/**
    filters:
      - name: RequestRateLimiter
        args:
          redis-rate-limiter.replenishRate: 1
          redis-rate-limiter.burstCapacity: {BURST}
          redis-rate-limiter.requestedTokens: 1
          key-resolver: "#{{@ipKeyResolver}}"
  - id: by-header
    uri: http://127.0.0.1:{upstream}
    predicates:
      - Path=/header/**
    filters:
      - RequestRateLimiter=1, {BURST}, 1, header:X-Key
"""


@pytest.fixture(params=["native", "python"])
async def two_gateways(request: pytest.FixtureRequest, procs: ProcessGroup, tmp_path: Path, redis_server: RedisInfo,
                       redis_prefix: str) -> list[int]:
    """Ports of two gateway processes on the same Redis and prefix (one set by env, one by the file), on one lane."""
    lane = f"wsgate:\n  native-http: {'true' if request.param == 'native' else 'false'}\n"
    upstream = start_upstream_proc(procs, "upstream")
    by_env = tmp_path / "env.yaml"
    by_env.write_text(routes(upstream, lane))
    by_file = tmp_path / "file.yaml"
    by_file.write_text(routes(upstream, f'{lane}  redis: {{url: "{redis_server.url}", prefix: "{redis_prefix}"}}\n'))
    _, one = start_gateway_proc(procs, by_env, workers=1, name="gateway-env",
                                env={"REDIS_URL": redis_server.url, "WSGATE_REDIS_PREFIX": redis_prefix})
    # The file's section wins over an environment that points elsewhere.
    _, two = start_gateway_proc(procs, by_file, workers=1, name="gateway-file",
                                env={"REDIS_URL": "redis://127.0.0.1:1/0", "WSGATE_REDIS_PREFIX": "elsewhere:"})
    # One limited request each first: it asks Redis what it is (on the Python path), after which the native lane
    # carries the limited requests of the tests.
    for port in (one, two):
        results, _ = await burst([port], "/header/warm", 1, headers={"X-Key": f"warm-{port}"})
        assert results[0][0] == 200
    return [one, two]


async def next_second() -> None:
    """Wait for the wall clock's second to turn when it is about to: the bucket refills by whole seconds."""
    fraction = time.time() % 1
    if fraction > 0.6:
        await asyncio.sleep(1.0 - fraction + 0.01)  # aligning with the clock, not with the system under test


async def burst(ports: list[int], path: str, count: int, *,
                headers: dict[str, str] | None = None) -> tuple[list[tuple[int, dict[str, str]]], int]:
    """`count` concurrent GETs spread over the gateways; (status, X-RateLimit-* headers) each, and seconds spanned."""
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, dict[str, str]]:
            async with session.get(f"http://127.0.0.1:{ports[i % len(ports)]}{path}", headers=headers) as response:
                await response.read()
                return response.status, {k: v for k, v in response.headers.items() if k.startswith("X-RateLimit")}

        first = int(time.time())
        results = await asyncio.gather(*(one(i) for i in range(count)))
        return results, int(time.time()) - first


def check_exactly_burst(results: list[tuple[int, dict[str, str]]], seconds: int) -> None:
    """BURST pass (plus one per whole second the burst spanned: replenishRate 1), the rest are 429 with headers."""
    passed = [h for status, h in results if status == 200]
    refused = [h for status, h in results if status == 429]
    assert len(passed) + len(refused) == len(results)
    assert BURST <= len(passed) <= BURST + seconds
    if seconds == 0:
        assert len(passed) == BURST
    assert sorted(int(h["X-RateLimit-Remaining"]) for h in passed)[:BURST] == list(range(BURST))
    for headers in refused:
        assert headers == {"X-RateLimit-Remaining": "0", "X-RateLimit-Replenish-Rate": "1",
                           "X-RateLimit-Burst-Capacity": str(BURST), "X-RateLimit-Requested-Tokens": "1"}


async def test_gateway_ratelimit_by_client_address_shared_by_two_processes(two_gateways: list[int]) -> None:
    await next_second()
    results, seconds = await burst(two_gateways, "/client/x", 4 * BURST)
    check_exactly_burst(results, seconds)
    # Both processes refused some: the bucket is one, not one per process.
    assert {i % 2 for i, (status, _) in enumerate(results) if status == 429} == {0, 1}


async def test_gateway_ratelimit_by_header_keeps_a_bucket_per_key(two_gateways: list[int]) -> None:
    await next_second()
    (first, s1), (second, s2) = await asyncio.gather(
        burst(two_gateways, "/header/x", 3 * BURST, headers={"X-Key": "alice"}),
        burst(two_gateways, "/header/x", 3 * BURST, headers={"X-Key": "bob"}))
    check_exactly_burst(first, s1)
    check_exactly_burst(second, s2)
    # No key: SCG's deny-empty-key answers 403 on either process.
    results, _ = await burst(two_gateways, "/header/x", 2)
    assert [status for status, _ in results] == [403, 403]
