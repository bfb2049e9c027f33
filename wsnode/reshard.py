"""`python -m wsnode.reshard --from LIST --to LIST`: change the client-side shard list without losing users' data.

It makes the shards agree on the new list (so nodes started with it pass wsnode/shard_agreement.py), then moves the
keys of every user found on a shard that the new list does not give them to: messages, counter, unacked ids, unread
counts, revocation and publish budget, with their TTLs, and the idempotency markers of their stored pushes. Each
user's move is two atomic steps: on the source, their keys are renamed aside (a push still arriving from a node on
the old list starts fresh keys, which a later run moves); on the target, a script merges them into whatever nodes on
the new list already wrote there (reshard_merge.lua); then the aside keys are deleted. A run that stops half way
leaves the aside keys, which the next run merges first; merging twice changes nothing. The plan is
wsnode/reshard_plan.py; the procedure around it is docs/scaling.md, "Changing the shard list".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from wsnode import lua
from wsnode.keys import Keys
from wsnode.redis_connect import cluster_enabled, connect_shard
from wsnode.redis_urls import RedisUrlError, split_redis_urls
from wsnode.reshard_plan import (
    MOVED_SUFFIXES,
    Move,
    Report,
    list_problem,
    marker_pattern,
    marker_targets,
    marker_users,
    plan_moves,
    staged_base,
    staged_pattern,
    staged_user_of,
    user_of,
    user_pattern,
)

_STAGE_LUA = lua.source("reshard_stage")
_MERGE_LUA = lua.source("reshard_merge")
_PARALLEL = 16


class ReshardError(Exception):
    """A problem that stops the run; its text names it (the command exits 1)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _shard_id(client: aioredis.Redis, keys: Keys, *, dry_run: bool) -> str:
    if not dry_run:  # as a node does on first contact: a shard's id is set once
        await client.set(keys.shard_id, uuid.uuid4().hex, nx=True)
    value = await client.get(keys.shard_id)
    return _text(value) if value is not None else f"(no id yet: {uuid.uuid4().hex})"


async def _scan_users(client: aioredis.Redis, prefix: str) -> set[str]:
    users: set[str] = set()
    async for key in client.scan_iter(match=user_pattern(prefix), count=1000):
        user = user_of(_text(key), prefix)
        if user is not None:
            users.add(user)
    async for key in client.scan_iter(match=staged_pattern(prefix), count=1000):
        user = staged_user_of(_text(key), prefix)
        if user is not None:
            users.add(user)
    return users


class Resharder:
    """One run over connected shards (clients by shard id)."""

    def __init__(self, clients: dict[str, aioredis.Redis], old_ids: list[str], new_ids: list[str], prefix: str,
                 *, dry_run: bool) -> None:
        self.clients = clients
        self.old_ids = old_ids
        self.new_ids = new_ids
        self.prefix = prefix
        self.dry_run = dry_run
        self.report = Report()
        self._dry_copies: set[tuple[str, str]] = set()  # a dry run counts a marker once per target, as SET NX would
        self._stage = {sid: c.register_script(_STAGE_LUA) for sid, c in clients.items()}
        self._merge = {sid: c.register_script(_MERGE_LUA) for sid, c in clients.items()}

    async def run(self) -> Report:
        found = {sid: await _scan_users(self.clients[sid], self.prefix) for sid in self.old_ids}
        self.report.users_scanned = len(set().union(*found.values()))
        # Users are independent: a few at a time hide the round trips (each shard's pool is bounded anyway).
        pending = plan_moves(found, self.new_ids)
        while pending:
            batch, pending = pending[:_PARALLEL], pending[_PARALLEL:]
            await asyncio.gather(*(self._move_user(move) for move in batch))
        for sid in self.old_ids:
            await self._move_markers(sid)
        return self.report

    async def _move_user(self, move: Move) -> None:
        source = self.clients[move.source]
        live = Keys(self.prefix).user_base(move.user)
        if self.dry_run:
            names = [f"{live}:{s}" for s in MOVED_SUFFIXES] + [f"{staged_base(self.prefix, move.user)}:{s}"
                                                              for s in MOVED_SUFFIXES]
            present = int(await source.exists(*names))
            self.report.users_moved += 1 if present else 0
            self.report.keys_moved += present
            return
        moved = 0
        # Aside keys of an unfinished run first (stage answers 0 while they exist), then the live ones.
        for _ in range(2):
            moved += await self._merge_staged(move)
            if int(await self._stage[move.source](keys=[], args=[self.prefix, move.user, *MOVED_SUFFIXES])) == 0:
                break
        moved += await self._merge_staged(move)
        if moved:
            self.report.users_moved += 1
            self.report.keys_moved += moved

    async def _merge_staged(self, move: Move) -> int:
        source, target = self.clients[move.source], self.clients[move.target]
        base = staged_base(self.prefix, move.user)
        async with source.pipeline(transaction=True) as pipe:
            pipe.exists(*(f"{base}:{s}" for s in MOVED_SUFFIXES))
            pipe.get(f"{base}:seq")
            pipe.zrange(f"{base}:msgs", 0, -1, withscores=True)
            pipe.pttl(f"{base}:msgs")
            pipe.hgetall(f"{base}:unacked")
            pipe.pttl(f"{base}:unacked")
            pipe.get(f"{base}:revoked")
            pipe.pttl(f"{base}:revoked")
            pipe.dump(f"{base}:publish_budget")
            pipe.pttl(f"{base}:publish_budget")
            count, seq, rows, msgs_ttl, unacked, unacked_ttl, revoked, revoked_ttl, budget, budget_ttl = \
                await pipe.execute()
        if not count:
            return 0
        data = {"seq": None if seq is None else _text(seq),
                "msgs": [[str(int(score)), _text(member)] for member, score in rows], "msgs_ttl": msgs_ttl,
                "unacked": {_text(k): _text(v) for k, v in unacked.items()}, "unacked_ttl": unacked_ttl,
                "revoked": None if revoked is None else _text(revoked), "revoked_ttl": revoked_ttl}
        _, renumbered = await self._merge[move.target](keys=[], args=[self.prefix, move.user, json.dumps(data)])
        self.report.messages_renumbered += int(renumbered)
        budget_key = Keys(self.prefix).user_publish_budget(move.user)
        if budget is not None and not await target.exists(budget_key):
            try:
                await target.restore(budget_key, max(int(budget_ttl), 0), budget)
            except ResponseError as exc:
                # A node on the new list began one meanwhile: the target's own budget is the current one.
                if "BUSYKEY" not in str(exc):
                    raise
        await source.delete(*(f"{base}:{s}" for s in MOVED_SUFFIXES))
        return int(count)

    async def _move_markers(self, sid: str) -> None:
        source = self.clients[sid]
        async for raw in source.scan_iter(match=marker_pattern(self.prefix), count=1000):
            key = _text(raw)
            async with source.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                value, ttl = await pipe.execute()
            users = None if value is None else marker_users(_text(value))
            if users is None:
                continue  # expired meanwhile, or a push that stored nothing (docs/scaling.md)
            targets, keep = marker_targets(sid, users, self.new_ids)
            for target in targets:
                if self.dry_run:
                    if (target, key) not in self._dry_copies and not await self.clients[target].exists(key):
                        self._dry_copies.add((target, key))
                        self.report.markers_copied += 1
                elif await self.clients[target].set(key, value, px=ttl if ttl > 0 else None, nx=True):
                    self.report.markers_copied += 1
            if not keep:
                self.report.markers_deleted += 1 if self.dry_run else int(await source.delete(key))


async def reshard(from_urls: Sequence[str], to_urls: Sequence[str], prefix: str, *, dry_run: bool) -> Report:
    """Agree on the new list (unless dry) and move what it moves; ReshardError naming the problem otherwise."""
    urls = list(dict.fromkeys([*from_urls, *to_urls]))
    shards = {url: connect_shard(url, max_connections=_PARALLEL, pool_timeout_s=10.0, socket_timeout=30.0,
                                 socket_connect_timeout=5.0) for url in urls}
    keys = Keys(prefix)
    try:
        if await cluster_enabled(urls):
            raise ReshardError("a Redis in the lists runs in cluster mode; a Redis Cluster moves slots itself")
        ids = {url: await _shard_id(shards[url].client, keys, dry_run=dry_run) for url in urls}
        old_ids, new_ids = [ids[u] for u in from_urls], [ids[u] for u in to_urls]
        problem = list_problem(old_ids, new_ids)
        if problem is not None:
            raise ReshardError(problem)
        clients = {ids[url]: shards[url].client for url in urls}
        if not dry_run:
            listed = json.dumps(new_ids)
            for sid in new_ids:
                await clients[sid].set(keys.shard_list, listed)
        return await Resharder(clients, old_ids, new_ids, prefix, dry_run=dry_run).run()
    except (RedisError, OSError) as exc:
        raise ReshardError(f"Redis failed: {exc}") from exc
    finally:
        await asyncio.gather(*(shard.aclose() for shard in shards.values()), return_exceptions=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wsnode.reshard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="from_list", required=True, help="the shard list the nodes use now")
    parser.add_argument("--to", dest="to_list", required=True, help="the shard list they move to")
    parser.add_argument("--prefix", default="", help="the nodes' --redis-prefix")
    parser.add_argument("--dry-run", action="store_true", help="count what would move; write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from_urls, to_urls = split_redis_urls(args.from_list), split_redis_urls(args.to_list)
        report = asyncio.run(reshard(from_urls, to_urls, args.prefix, dry_run=args.dry_run))
    except (RedisUrlError, ReshardError) as exc:
        print(f"reshard: {exc}", file=sys.stderr)
        return 1
    print(report.line(dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
