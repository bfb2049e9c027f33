"""What the push API answers, without an HTTP library: the API-key guard, its error answers and the push itself.

aiohttp's routes (`wsnode/push_api.py`) and the front's lean `POST /api/v1/push` (`wsnode/pushconn.py`) both call
these, so a request gets the same status, JSON body and metrics whichever path serves it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from wsnode import metrics
from wsnode.auth import BearerKeys
from wsnode.envelope import parse_push
from wsnode.errors import BackendUnavailable, PushError
from wsnode.node import Node

# The largest request body the node reads: aiohttp's client_max_size (413 beyond), which the lean path hands over.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """An API answer: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> bytes:
        # json.dumps with its default separators, as aiohttp's json_response writes it.
        return json.dumps(self.body).encode()


def error(status: int, message: str, **extra: Any) -> Answer:
    """The API's error body: `{"status", "error", ...}`."""
    return Answer(status, {"status": status, "error": message, **extra})


UNAUTHORIZED = Answer(401, {"status": 401, "error": "missing or wrong API key"},
                      (("WWW-Authenticate", 'Bearer realm="wsnode"'),))


async def guarded(keys: BearerKeys, authorization: str | None, call: Callable[[], Awaitable[Answer]]) -> Answer:
    """`call`'s answer when `authorization` carries an API key; each expected failure as its status."""
    if not keys.admits(authorization):
        return UNAUTHORIZED
    try:
        return await call()
    except PushError as exc:
        return error(400, exc.reason, field=exc.field)
    except BackendUnavailable as exc:
        return error(503, exc.reason)
    except (RedisError, OSError) as exc:
        metrics.REDIS_ERRORS.labels("api").inc()
        return error(503, f"redis unavailable: {exc}")


async def push(node: Node, body: bytes, idempotency_key: str | None) -> Answer:
    """POST /api/v1/push -> 202 once Redis holds (and routed) the message."""
    request = parse_push(body)
    key = idempotency_key
    if key is not None and not 0 < len(key) <= 200:
        raise PushError("Idempotency-Key", "must be 1-200 characters")
    answer = await node.push(request, source="http", dedupe_key=f"http:{key}" if key else None)
    return Answer(202, answer)
