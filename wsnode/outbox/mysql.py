"""The MySQL/MariaDB outbox (aiomysql): the PostgreSQL design without notifications (nodes poll).

Needs FOR UPDATE SKIP LOCKED: MySQL 8.0 or MariaDB 10.6 and newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomysql

from wsnode.outbox.db import RowHandler
from wsnode.outbox.ddl import DEAD_TABLE, MYSQL_DDL, TABLE, first_id

CLAIM = (f"SELECT id, CAST(payload AS CHAR), created_at FROM {TABLE} ORDER BY id LIMIT %s "
         "FOR UPDATE SKIP LOCKED")
DEAD = f"INSERT IGNORE INTO {DEAD_TABLE} (id, payload, error, created_at) VALUES (%s, %s, %s, %s)"
OLDEST = f"SELECT TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) FROM {TABLE} ORDER BY id LIMIT 1"


def connect_args(dsn: str) -> dict[str, Any]:
    """aiomysql.connect keyword arguments from mysql://user:password@host:port/database."""
    parts = urlsplit(dsn)
    database = parts.path.lstrip("/")
    if not database:
        raise ValueError("a MySQL outbox DSN names its database: mysql://user:password@host:3306/database")
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
            "user": unquote(parts.username or "root"), "password": unquote(parts.password or ""), "db": database,
            "autocommit": False, "charset": "utf8mb4"}


async def init_schema(dsn: str) -> bool:
    """Create the outbox tables (idempotent); True when the outbox table was new."""
    conn = await aiomysql.connect(**connect_args(dsn), connect_timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
                              "AND table_name = %s", (TABLE,))
            row = await cur.fetchone()
            new = row is not None and int(row[0]) == 0
            for statement in MYSQL_DDL:
                await cur.execute(statement)
            if new:
                await cur.execute(f"ALTER TABLE {TABLE} AUTO_INCREMENT = {first_id(time.time())}")
        await conn.commit()
        return new
    finally:
        conn.close()


class MysqlOutbox:
    """One connection, polling."""

    def __init__(self, dsn: str, *, batch: int) -> None:
        self._args = connect_args(dsn)
        self._batch = batch
        self._conn: Any = None
        self.wake = asyncio.Event()  # never set by the database: MySQL has no notifications
        self.lost = False

    async def open(self) -> None:
        self._conn = await aiomysql.connect(**self._args, connect_timeout=5)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()

    async def claim(self, handle: RowHandler) -> tuple[int, list[int]]:
        """As PostgresOutbox.claim."""
        conn = self._conn
        await conn.begin()
        try:
            async with conn.cursor() as cur:
                await cur.execute(CLAIM, (self._batch,))
                rows = await cur.fetchall()
                errors = await handle([(int(row[0]), row[1]) for row in rows]) if rows else []
                dead = [(row_id, payload, error, created_at)
                        for (row_id, payload, created_at), error in zip(rows, errors, strict=True) if error is not None]
                if dead:
                    await cur.executemany(DEAD, dead)
                if rows:
                    marks = ", ".join(["%s"] * len(rows))
                    await cur.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", [row[0] for row in rows])
            await conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.rollback()
            raise
        return len(rows), [int(item[0]) for item in dead]

    async def oldest_age_s(self) -> float:
        async with self._conn.cursor() as cur:
            await cur.execute(OLDEST)
            row = await cur.fetchone()
        await self._conn.commit()  # end the read snapshot, or the next read would not see new rows
        return float(row[0]) / 1e6 if row and row[0] is not None else 0.0
