"""Concurrent calls of one Lua script, coalesced into one pipelined round trip per event-loop turn.

Under load most of a push's cost on the node is system calls (one write and one read per Redis command): calls that
arrive in the same loop turn share them. A lone call costs what a plain script call costs; each call still gets its
own result or error, and the script runs once per call (the batch is not a transaction).

With `min_replicas`, every round trip ends with `WAIT min_replicas timeout` on the same connection: its calls are
answered only once that many replicas have their writes, and fail with `NotReplicated` otherwise (CONTRACT
section 7, `--redis-min-replicas`). The writes stay on the master; callers make a retry harmless with a dedupe key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from wsnode.redis_lane import RedisLane

Args = Sequence[str | int]


class NotReplicated(RedisError):
    """Fewer replicas than asked confirmed a round trip's writes within the timeout (the push is answered 503)."""


def check_replicated(confirmed: Any, min_replicas: int, wait_timeout_ms: int) -> None:
    """Raise unless `WAIT`'s reply `confirmed` counts at least `min_replicas` replicas (NotReplicated, or its error)."""
    if isinstance(confirmed, Exception):
        raise confirmed
    if int(confirmed) < min_replicas:
        raise NotReplicated(f"{int(confirmed)} of {min_replicas} replica(s) confirmed the write within "
                            f"{wait_timeout_ms} ms")


class ScriptBatcher:
    """Callable like a registered script (`await batcher(keys=[], args=[...])`), batching concurrent calls."""

    __slots__ = ("_min_replicas", "_pending", "_redis", "_script", "_tasks", "_wait_timeout_ms", "lane")

    def __init__(self, client: aioredis.Redis, script: str, *, min_replicas: int = 0,
                 wait_timeout_ms: int = 1000, lane: RedisLane | None = None) -> None:
        self._redis = client
        self.lane = lane  # when given, every round trip goes through it (`client` only loads the script)
        self._min_replicas = min_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._script = client.register_script(script)
        self._pending: list[tuple[Args, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, *, keys: Sequence[str], args: Args) -> Any:
        """The script's result for these arguments (keys must be empty: batched scripts take ARGV only)."""
        if keys:
            raise ValueError("batched scripts take no KEYS")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)  # after every call of this loop turn has joined
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Args, asyncio.Future[Any]]]) -> None:
        try:
            if len(batch) == 1 and not self._min_replicas and self.lane is None:
                results: list[Any] = [await self._script(keys=[], args=list(batch[0][0]))]
            else:
                results = await self._pipelined([args for args, _ in batch])
        except BaseException as exc:  # every waiting caller gets the error (cancellation included)
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up (e.g. its request was cancelled)
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipelined(self, calls: list[Args]) -> list[Any]:
        results = await self._evalsha(calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # Redis lost its script cache (restart, SCRIPT FLUSH): those calls did not run; load and run them again.
            await self._redis.script_load(self._script.script)
            for i, result in zip(missing, await self._evalsha([calls[i] for i in missing]), strict=True):
                results[i] = result
        return results

    async def _evalsha(self, calls: list[Args]) -> list[Any]:
        if self.lane is not None:
            commands: list[Sequence[str | int | bytes]] = [("EVALSHA", self._script.sha, 0, *args) for args in calls]
            if self._min_replicas:
                commands.append(("WAIT", self._min_replicas, self._wait_timeout_ms))
            results = await self.lane.execute(commands)
        else:
            results = await self._pipelined_evalsha(calls)
        if self._min_replicas:
            check_replicated(results.pop(), self._min_replicas, self._wait_timeout_ms)
        return results

    async def _pipelined_evalsha(self, calls: list[Args]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.evalsha(self._script.sha, 0, *args)
            if self._min_replicas:
                pipe.execute_command("WAIT", self._min_replicas, self._wait_timeout_ms)
            return list(await pipe.execute(raise_on_error=False))
