"""What the outbox loop needs from a database (PostgreSQL, MySQL/MariaDB), as a protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

# [(row id, payload JSON text)] -> per row None when pushed, or the reason to dead-letter it; raises to roll back.
RowHandler = Callable[[list[tuple[int, str]]], Awaitable[list[str | None]]]


class OutboxDb(Protocol):
    """One node's connection(s) to the outbox."""

    wake: asyncio.Event  # set when new rows may be there (a notification) or the connection was lost
    lost: bool  # a connection was lost: the loop reconnects

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, handle: RowHandler) -> tuple[int, list[int]]: ...

    async def oldest_age_s(self) -> float: ...
