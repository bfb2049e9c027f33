"""Small async clients: push through a node's HTTP API or the Redis stream (backends), and receive as a user.

    async with PushClient("http://127.0.0.1:8080", api_key="k") as client:
        accepted = await client.push(users=["u1"], module="notice", event="created", data={"id": 7})

    stream = StreamPushClient(redis.asyncio.from_url("redis://127.0.0.1:6379/0"), prefix="")
    entry_id = await stream.push(users=["u1"], module="notice", data={"id": 7})

    receiver = Receiver(["wss://gw/ws-svc/websocket"], token=lambda: login(), on_message=show)
    task = asyncio.create_task(receiver.run())   # reconnects with since=, resumes at a gap (docs/protocol.md)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from wsnode.envelope import parse_push
from wsnode.errors import WsnodeError
from wsnode.keys import Keys
from wsnode.resume import ResumeTracker, Verdict

log = logging.getLogger("wsnode.client")


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


TokenSource = str | Callable[[], str | Awaitable[str]]
MessageHandler = Callable[[dict[str, Any]], None]


class Receiver:
    """A user's WebSocket connection that does not lose what the node accepted for it.

    Reconnects after any close (backoff with full jitter, trying `urls` in turn, a fresh token each time) with
    `since=` the point reached; drops duplicate ids; at a gap in the stored ids it reconnects at once with `since=`
    the last id before the gap (the rule in docs/protocol.md, wsnode/resume.py). `on_message` gets each message
    frame once, in id order.
    """

    def __init__(self, urls: Sequence[str] | str, *, token: TokenSource, on_message: MessageHandler,
                 since: str | None = None, backoff_base_s: float = 0.5, backoff_max_s: float = 15.0,
                 session: aiohttp.ClientSession | None = None, rng: random.Random | None = None,
                 resume_on_gap: bool = True) -> None:
        """`resume_on_gap=False` delivers across gaps (counted in `stats["gaps"]`): what a client without the rule
        sees, for measuring the nodes alone."""
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self._token = token
        self._on_message = on_message
        self.tracker = ResumeTracker(since=since)
        self._backoff = (backoff_base_s, backoff_max_s)
        self._session = session
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.welcomes: list[dict[str, Any]] = []
        self.close_codes: list[int | None] = []
        self.stats = {"connects": 0, "messages": 0, "duplicates": 0, "gaps": 0, "reconnects": 0}
        self.connected = asyncio.Event()
        self._resume_on_gap = resume_on_gap

    async def _bearer(self) -> str:
        token = self._token() if callable(self._token) else self._token
        return await token if inspect.isawaitable(token) else token

    async def run(self) -> None:
        """Connect and receive until `stop()`."""
        owned = self._session is None
        http = self._session or aiohttp.ClientSession()
        attempt = 0
        try:
            while not self._stop.is_set():
                url = self.urls[self.stats["connects"] % len(self.urls)]
                self.stats["connects"] += 1
                params = {"token": await self._bearer()}
                if self.tracker.resume_from:
                    params["since"] = self.tracker.resume_from
                gap = False
                try:
                    async with http.ws_connect(url, params=params, heartbeat=None) as ws:
                        self._ws = ws
                        async for msg in ws:
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                continue
                            outcome = self._on_frame(json.loads(msg.data))
                            if outcome == "welcome":
                                attempt = 0
                            elif outcome == "gap":
                                gap = True
                                break
                        self.close_codes.append(ws.close_code)
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    log.info("connect to %s failed: %s", url, exc)
                finally:
                    self._ws = None
                    self.connected.clear()
                if self._stop.is_set():
                    return
                self.stats["reconnects"] += 1
                if not gap:
                    attempt += 1
                    cap = min(self._backoff[1], self._backoff[0] * 2 ** min(attempt, 30))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self._rng.uniform(0, cap))
        finally:
            if owned:
                await http.close()

    def _on_frame(self, frame: dict[str, Any]) -> str | None:
        """Handle one frame; "welcome", or "gap" when a message showed a gap (the caller resumes)."""
        kind = frame.get("type")
        if kind == "welcome":
            self.welcomes.append(frame)
            self.tracker.welcome(frame.get("last"))
            self.connected.set()
            return "welcome"
        if kind == "message" and frame.get("id") is not None:
            verdict = self.tracker.message(str(frame["id"]), allow_gap=not self._resume_on_gap)
            if verdict is Verdict.DUPLICATE:
                self.stats["duplicates"] += 1
            elif verdict is Verdict.GAP:
                self.stats["gaps"] += 1
                log.info("gap before id %s: resuming from %s", frame["id"], self.tracker.resume_from)
                return "gap"
            else:
                self.stats["messages"] += 1
                if verdict is Verdict.DELIVER_AFTER_GAP:
                    self.stats["gaps"] += 1
                self._on_message(frame)
        return None

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self._stop.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
