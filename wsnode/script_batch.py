"""Concurrent calls of one Lua script, coalesced into one pipelined round trip per event-loop turn.

Under load most of a push's cost on the node is system calls (one write and one read per Redis command): calls that
arrive in the same loop turn share them. A lone call costs what a plain script call costs; each call still gets its
own result or error, and the script runs once per call (the batch is not a transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Args = Sequence[str | int]


class ScriptBatcher:
    """Callable like a registered script (`await batcher(keys=[], args=[...])`), batching concurrent calls."""

    __slots__ = ("_pending", "_redis", "_script", "_tasks")

    def __init__(self, client: aioredis.Redis, script: str) -> None:
        self._redis = client
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
            if len(batch) == 1:
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
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.evalsha(self._script.sha, 0, *args)
            return list(await pipe.execute(raise_on_error=False))
