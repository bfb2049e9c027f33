"""The push API (CONTRACT section 5): push, presence, unread, disconnect, stats, OpenAPI; Bearer API keys."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from wsnode import metrics
from wsnode.auth import BearerKeys
from wsnode.envelope import USER_ID_RULE, parse_push, valid_user_id
from wsnode.errors import BackendUnavailable, PushError
from wsnode.node import Node
from wsnode.openapi import OPENAPI

log = logging.getLogger("wsnode.push_api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"status": status, "error": message, **extra}, status=status)


class PushApi:
    """Handlers of /api/v1/*, guarded by API keys."""

    def __init__(self, node: Node, keys: BearerKeys) -> None:
        self.node = node
        self._keys = keys

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the application."""
        return [
            web.post("/api/v1/push", self._guard(self.push)),
            web.get("/api/v1/users/{user}/presence", self._guard(self.presence)),
            web.get("/api/v1/users/{user}/unread", self._guard(self.unread)),
            web.post("/api/v1/users/{user}/disconnect", self._guard(self.disconnect)),
            web.get("/api/v1/stats", self._guard(self.stats)),
            web.get("/api/v1/openapi.json", self.openapi),
        ]

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._keys.admits(request.headers.get("Authorization")):
                return web.json_response({"status": 401, "error": "missing or wrong API key"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="wsnode"'})
            try:
                return await handler(request)
            except PushError as exc:
                return _error(400, exc.reason, field=exc.field)
            except BackendUnavailable as exc:
                return _error(503, exc.reason)
            except (RedisError, OSError) as exc:
                metrics.REDIS_ERRORS.labels("api").inc()
                return _error(503, f"redis unavailable: {exc}")
        return guarded

    @staticmethod
    def _user(request: web.Request) -> str:
        user = request.match_info["user"]
        if not valid_user_id(user):
            raise PushError("user", USER_ID_RULE)
        return user

    async def push(self, request: web.Request) -> web.Response:
        """POST /api/v1/push -> 202 once Redis holds (and routed) the message."""
        push = parse_push(await request.read())
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= 200:
            raise PushError("Idempotency-Key", "must be 1-200 characters")
        answer = await self.node.push(push, source="http", dedupe_key=f"http:{key}" if key else None)
        return web.json_response(answer, status=202)

    async def presence(self, request: web.Request) -> web.Response:
        """GET presence: the user's live sessions on every node."""
        user = self._user(request)
        found = await self.node.registry.presence(user)
        return web.json_response({"user": user, "online": bool(found), "sessions": [
            {"session": s.session, "node": s.node, "since": s.since_ms} for s in found]})

    async def unread(self, request: web.Request) -> web.Response:
        """GET unread counts per module."""
        user = self._user(request)
        return web.json_response({"user": user, "unread": await self.node.store.unread(user)})

    async def disconnect(self, request: web.Request) -> web.Response:
        """POST disconnect: close every session of the user (close code 1008); `revoke=true` also refuses the
        user's tokens issued before now (else the client may reconnect at once with the same token)."""
        user = self._user(request)
        raw = request.query.get("revoke", "false")
        if raw not in ("true", "false"):
            raise PushError("revoke", "must be true or false")
        sessions = await self.node.disconnect_user(user, revoke=raw == "true")
        return web.json_response({"user": user, "sessions": sessions, "revoked": raw == "true"})

    async def stats(self, request: web.Request) -> web.Response:
        """GET cluster and node counts."""
        sessions, nodes = await self.node.registry.counts()
        return web.json_response({"node": self.node.settings.node_id, "node_sessions": len(self.node.sessions),
                                  "cluster_sessions": sessions, "nodes": nodes})

    async def openapi(self, request: web.Request) -> web.Response:
        """GET the OpenAPI document (no key needed)."""
        return web.json_response(OPENAPI)
