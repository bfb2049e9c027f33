"""Every node must list the same Redis shards in the same order (CONTRACT section 7); this checks it against Redis.

Each shard keeps a random id of its own (`wsgate:shard:id`, set once) and the ordered list of shard ids
(`wsgate:shard:list`, set once by the first node to reach every shard). A node reads each shard's id; once it has
them all, it compares its list with the one every shard keeps and stops with the difference named when they differ
(`wsnode.sharding.shard_list_mismatch`). The node serves while the check waits for an unreachable shard: a shard
that is down must cost only its users.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsnode.errors import SettingsError
from wsnode.keys import Keys
from wsnode.sharding import shard_list_mismatch

log = logging.getLogger("wsnode.shards")


async def _shard_id(client: aioredis.Redis, keys: Keys) -> str:
    await client.set(keys.shard_id, uuid.uuid4().hex, nx=True)
    value = await client.get(keys.shard_id)
    return value.decode() if isinstance(value, bytes) else str(value)


async def agree_on_shards(clients: Sequence[aioredis.Redis], urls: Sequence[str], keys: Keys, *,
                          retry_s: float = 1.0) -> None:
    """Return once every shard confirmed this node's list; SettingsError naming the difference otherwise."""
    ids: dict[int, str] = {}
    while len(ids) < len(clients):
        for index, client in enumerate(clients):
            if index in ids:
                continue
            try:
                ids[index] = await _shard_id(client, keys)
            except (RedisError, OSError) as exc:
                log.info("shard %d (%s) not reachable yet for the shard-list check: %s", index, urls[index], exc)
        if len(ids) < len(clients):
            await asyncio.sleep(retry_s)
    observed = [ids[index] for index in range(len(clients))]
    listed = json.dumps(observed)
    pending = set(range(len(clients)))
    while pending:
        for index in sorted(pending):
            try:
                await clients[index].set(keys.shard_list, listed, nx=True)
                stored = await clients[index].get(keys.shard_list)
            except (RedisError, OSError) as exc:
                log.info("shard %d (%s) not reachable for the shard-list check: %s", index, urls[index], exc)
                continue
            problem = shard_list_mismatch(urls, observed, stored.decode() if isinstance(stored, bytes) else stored)
            if problem is not None:
                raise SettingsError(problem)
            pending.discard(index)
        if pending:
            await asyncio.sleep(retry_s)
    log.info("shard list agreed: %d shard(s)", len(clients))
