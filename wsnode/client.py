"""A small async client for backends: push through a node's HTTP API or through the Redis stream.

    async with PushClient("http://127.0.0.1:8080", api_key="k") as client:
        accepted = await client.push(users=["u1"], module="notice", event="created", data={"id": 7})

    stream = StreamPushClient(redis.asyncio.from_url("redis://127.0.0.1:6379/0"), prefix="")
    entry_id = await stream.push(users=["u1"], module="notice", data={"id": 7})
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from wsnode.envelope import parse_push
from wsnode.errors import WsnodeError
from wsnode.keys import Keys


class PushClientError(WsnodeError):
    """The node refused a request (status and its JSON body)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def push_body(*, users: Sequence[str] | None = None, to_all: bool = False, module: str, event: str = "message",
              data: Any = None, store: bool = True) -> dict[str, Any]:
    """A push request body, validated as a node would (PushError names a bad field)."""
    body: dict[str, Any] = {"to": {"all": True} if to_all else {"users": list(users or [])}, "module": module,
                            "event": event, "data": data, "store": store}
    parse_push(body)
    return body


class PushClient:
    """The push API of a node (or of the gateway under /ws-svc)."""

    def __init__(self, base_url: str, *, api_key: str, session: aiohttp.ClientSession | None = None,
                 timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session = session
        self._owned = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __aenter__(self) -> PushClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(method, self._base + path, json=body, headers=self._headers) as resp:
            try:
                answer = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                answer = await resp.text()
            if resp.status >= 400:
                raise PushClientError(resp.status, answer)
            return answer

    async def push(self, *, users: Sequence[str] | None = None, to_all: bool = False, module: str,
                   event: str = "message", data: Any = None, store: bool = True) -> dict[str, Any]:
        """POST /api/v1/push; the 202 body (id, online_sessions, stored, ids)."""
        body = push_body(users=users, to_all=to_all, module=module, event=event, data=data, store=store)
        result: dict[str, Any] = await self._request("POST", "/api/v1/push", body)
        return result

    async def presence(self, user: str) -> dict[str, Any]:
        """The user's live sessions."""
        result: dict[str, Any] = await self._request("GET", f"/api/v1/users/{user}/presence")
        return result

    async def unread(self, user: str) -> dict[str, int]:
        """Unread counts per module."""
        result: dict[str, Any] = await self._request("GET", f"/api/v1/users/{user}/unread")
        return {str(k): int(v) for k, v in result.get("unread", {}).items()}

    async def disconnect(self, user: str) -> int:
        """Close every session of the user; how many there were."""
        result: dict[str, Any] = await self._request("POST", f"/api/v1/users/{user}/disconnect")
        return int(result.get("sessions", 0))

    async def stats(self) -> dict[str, Any]:
        """Session and node counts."""
        result: dict[str, Any] = await self._request("GET", "/api/v1/stats")
        return result


class StreamPushClient:
    """Pushes as entries of the Redis stream `<prefix>wsgate:push` (consumed by the nodes' consumer group)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "", maxlen: int = 1_000_000) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._maxlen = maxlen

    async def push(self, *, users: Sequence[str] | None = None, to_all: bool = False, module: str,
                   event: str = "message", data: Any = None, store: bool = True) -> str:
        """Add one push to the stream; the entry id."""
        body = push_body(users=users, to_all=to_all, module=module, event=event, data=data, store=store)
        entry = await self._redis.xadd(self._keys.push_stream, {"payload": json.dumps(body)}, maxlen=self._maxlen,
                                       approximate=True)
        return entry.decode() if isinstance(entry, bytes) else str(entry)
