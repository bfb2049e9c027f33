"""The transactional outbox (CONTRACT section 9): backends insert pushes as rows in their own transaction; nodes push
them. `python -m wsnode.outbox init --dsn DSN` creates the tables (wsnode/outbox/ddl.py says what they are)."""

from __future__ import annotations

from collections.abc import Callable

from wsnode.outbox.consumer import OutboxConsumer, PushFn
from wsnode.outbox.db import OutboxDb
from wsnode.outbox.ddl import MYSQL, POSTGRES, dialect_of

__all__ = ["OutboxConsumer", "connector", "consumer", "init_schema"]


def connector(dsn: str, *, batch: int) -> Callable[[], OutboxDb]:
    """A factory of fresh database adapters for `dsn` (one per connection attempt)."""
    dialect = dialect_of(dsn)
    if dialect == POSTGRES:
        from wsnode.outbox.postgres import PostgresOutbox

        return lambda: PostgresOutbox(dsn, batch=batch)
    assert dialect == MYSQL
    from wsnode.outbox.mysql import MysqlOutbox

    return lambda: MysqlOutbox(dsn, batch=batch)


async def init_schema(dsn: str) -> bool:
    """Create the outbox tables for `dsn` (idempotent); True when they were new."""
    if dialect_of(dsn) == POSTGRES:
        from wsnode.outbox import postgres

        return await postgres.init_schema(dsn)
    from wsnode.outbox import mysql

    return await mysql.init_schema(dsn)


def consumer(dsn: str, *, push: PushFn, batch: int, poll_s: float) -> OutboxConsumer:
    """The node's outbox consumer for `dsn`."""
    return OutboxConsumer(connector(dsn, batch=batch), push=push, batch=batch, poll_s=poll_s)
