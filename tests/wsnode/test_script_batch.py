"""ScriptBatcher against the real Redis: concurrent calls coalesce, yet each gets its own result or error.

Every case runs through redis-py's connections and through the push script's lane (wsnode/redis_lane.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from harness import RedisInfo
from wsnode.redis_lane import RedisLane
from wsnode.script_batch import ScriptBatcher

MakeBatcher = Callable[[str], ScriptBatcher]

# INCR a counter and return "<argument>:<new value>"; error on demand, to check errors stay with their caller.
_SCRIPT = """
if ARGV[2] == 'fail' then return redis.error_reply('asked to fail') end
local n = redis.call('INCR', ARGV[1])
return ARGV[3] .. ':' .. n
"""


@pytest.fixture
async def client(redis_server: RedisInfo) -> AsyncIterator[aioredis.Redis]:
    conn = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    yield conn
    await conn.aclose()


@pytest.fixture(params=["redis-py", "lane"])
async def make(request: pytest.FixtureRequest, client: aioredis.Redis,
               redis_server: RedisInfo) -> AsyncIterator[MakeBatcher]:
    lane = RedisLane(host=redis_server.host, port=redis_server.port) if request.param == "lane" else None

    def made(script: str) -> ScriptBatcher:
        return ScriptBatcher(client, script, lane=lane)

    yield made
    if lane is not None:
        await lane.aclose()


def _fresh_script() -> str:
    # A script text no Redis has cached yet: its first pipelined call meets NOSCRIPT.
    return f"-- {uuid.uuid4().hex}\n{_SCRIPT}"


async def test_script_batch_concurrent_calls_each_get_their_result(make: MakeBatcher, client: aioredis.Redis,
                                                                   redis_prefix: str) -> None:
    batcher = make(_fresh_script())
    counter = f"{redis_prefix}count"
    results = await asyncio.gather(*(batcher(keys=[], args=[counter, "ok", f"c{i}"]) for i in range(50)))
    assert [r.decode().split(":")[0] for r in results] == [f"c{i}" for i in range(50)]
    # The script ran once per call, in call order within the batch.
    assert sorted(int(r.decode().split(":")[1]) for r in results) == list(range(1, 51))
    assert await client.get(counter) == b"50"


async def test_script_batch_error_goes_only_to_its_caller(make: MakeBatcher, redis_prefix: str) -> None:
    batcher = make(_fresh_script())
    counter = f"{redis_prefix}count"
    outcomes = await asyncio.gather(*(batcher(keys=[], args=[counter, "fail" if i == 3 else "ok", f"c{i}"])
                                      for i in range(6)), return_exceptions=True)
    assert isinstance(outcomes[3], ResponseError) and "asked to fail" in str(outcomes[3])
    assert [o for i, o in enumerate(outcomes) if i != 3] == [f"c{i}:{n}".encode() for i, n in
                                                            zip((0, 1, 2, 4, 5), range(1, 6), strict=True)]


@pytest.mark.parametrize("calls", [1, 2, 7])
async def test_script_batch_runs_without_a_cached_script(make: MakeBatcher, redis_prefix: str,
                                                         calls: int) -> None:
    batcher = make(_fresh_script())
    results = await asyncio.gather(*(batcher(keys=[], args=[f"{redis_prefix}n", "ok", "x"]) for _ in range(calls)))
    assert sorted(results) == sorted(f"x:{n}".encode() for n in range(1, calls + 1))


async def test_script_batch_refuses_keys(make: MakeBatcher) -> None:
    with pytest.raises(ValueError, match="KEYS"):
        await make(_SCRIPT)(keys=["k"], args=[])


async def test_script_batch_cancelled_caller_does_not_disturb_others(make: MakeBatcher,
                                                                     redis_prefix: str) -> None:
    batcher = make(_fresh_script())
    first = asyncio.ensure_future(batcher(keys=[], args=[f"{redis_prefix}n", "ok", "a"]))
    second = asyncio.ensure_future(batcher(keys=[], args=[f"{redis_prefix}n", "ok", "b"]))
    await asyncio.sleep(0)  # both joined the batch
    first.cancel()
    assert await second in (b"b:1", b"b:2")
    assert first.cancelled()
