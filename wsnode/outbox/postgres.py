"""The PostgreSQL outbox (asyncpg): batches claimed with FOR UPDATE SKIP LOCKED, woken by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from wsnode.outbox.db import RowHandler
from wsnode.outbox.ddl import CHANNEL, DEAD_TABLE, POSTGRES_DDL, TABLE, first_id

CLAIM = f"SELECT id, payload::text AS payload, created_at FROM {TABLE} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
DEAD = (f"INSERT INTO {DEAD_TABLE} (id, payload, error, created_at) VALUES ($1, $2::jsonb, $3, $4) "
        "ON CONFLICT (id) DO NOTHING")
DELETE = f"DELETE FROM {TABLE} WHERE id = ANY($1::bigint[])"
OLDEST = f"SELECT extract(epoch FROM now() - created_at)::float8 FROM {TABLE} ORDER BY id LIMIT 1"


async def init_schema(dsn: str) -> bool:
    """Create the outbox tables and trigger (idempotent); True when the outbox table was new."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            # One init at a time: two nodes' deploy hooks may run it together.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('wsgate_outbox_init'))")
            new = await conn.fetchval("SELECT to_regclass($1) IS NULL", TABLE)
            for statement in POSTGRES_DDL:
                await conn.execute(statement)
            if new:
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), $1, false)",
                                   first_id(time.time()))
        return bool(new)
    finally:
        await conn.close()


class PostgresOutbox:
    """Two connections: one claims batches, one LISTENs (a connection inside a transaction still gets NOTIFY only
    between transactions, so a separate one wakes the node at once)."""

    def __init__(self, dsn: str, *, batch: int) -> None:
        self._dsn = dsn
        self._batch = batch
        self._conn: Any = None
        self._listen: Any = None
        self.wake = asyncio.Event()
        self.lost = False

    async def open(self) -> None:
        # The claiming transactions commit without waiting for the disk: a commit lost in a database crash leaves
        # its rows in the outbox, and pushing them again is deduped, so durability buys nothing here but latency.
        self._conn = await asyncpg.connect(self._dsn, timeout=5, server_settings={
            "synchronous_commit": "off", "application_name": "wsnode outbox"})
        self._listen = await asyncpg.connect(self._dsn, timeout=5, server_settings={
            "application_name": "wsnode outbox listener"})
        for conn in (self._conn, self._listen):
            conn.add_termination_listener(self._on_lost)
        await self._listen.add_listener(CHANNEL, self._on_notify)

    def _on_lost(self, *_: object) -> None:
        self.lost = True
        self.wake.set()

    def _on_notify(self, *_: object) -> None:
        self.wake.set()

    async def close(self) -> None:
        for conn in (self._listen, self._conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
                if not conn.is_closed():
                    conn.terminate()

    async def claim(self, handle: RowHandler) -> tuple[int, list[int]]:
        """Claim up to a batch, push each row, dead-letter the poison ones, delete them all, commit.

        (rows claimed, ids dead-lettered). An exception from `handle` rolls the whole batch back: nothing is deleted,
        and the rows pushed already are deduped when they come again."""
        if self._listen is None or self._listen.is_closed():
            self.lost = True
        async with self._conn.transaction():
            rows = await self._conn.fetch(CLAIM, self._batch)
            errors = await handle([(int(row["id"]), row["payload"]) for row in rows]) if rows else []
            dead = [(row["id"], row["payload"], error, row["created_at"])
                    for row, error in zip(rows, errors, strict=True) if error is not None]
            if dead:
                await self._conn.executemany(DEAD, dead)
            if rows:
                await self._conn.execute(DELETE, [row["id"] for row in rows])
        return len(rows), [item[0] for item in dead]

    async def oldest_age_s(self) -> float:
        """Age of the oldest row still in the outbox (0 when it is empty)."""
        age = await self._conn.fetchval(OLDEST)
        return float(age) if age is not None else 0.0
