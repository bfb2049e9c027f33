"""The push API (CONTRACT section 5): push, presence, unread, disconnect, stats, OpenAPI; Bearer API keys."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from wsnode import api_answers
from wsnode.api_answers import Answer
from wsnode.auth import BearerKeys
from wsnode.envelope import USER_ID_RULE, valid_user_id
from wsnode.errors import PushError
from wsnode.node import Node
from wsnode.openapi import OPENAPI

log = logging.getLogger("wsnode.push_api")
Handler = Callable[[web.Request], Awaitable[Answer]]


def response(answer: Answer) -> web.Response:
    """An answer as aiohttp's response."""
    return web.Response(body=answer.encoded(), status=answer.status, headers=answer.headers,
                        content_type="application/json", charset="utf-8")


class PushApi:
    """Handlers of /api/v1/*, guarded by API keys."""

    def __init__(self, node: Node, keys: BearerKeys) -> None:
        self.node = node
        self.keys = keys

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

    def _guard(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            return response(await api_answers.guarded(self.keys, request.headers.get("Authorization"),
                                                      lambda: handler(request)))
        return guarded

    @staticmethod
    def _user(request: web.Request) -> str:
        user = request.match_info["user"]
        if not valid_user_id(user):
            raise PushError("user", USER_ID_RULE)
        return user

    async def push(self, request: web.Request) -> Answer:
        """POST /api/v1/push (the front serves most of them itself, `wsnode/pushconn.py`, with the same call)."""
        return await api_answers.push(self.node, await request.read(), request.headers.get("Idempotency-Key"))

    async def presence(self, request: web.Request) -> Answer:
        """GET presence: the user's live sessions on every node."""
        user = self._user(request)
        found = await self.node.registry.presence(user)
        return Answer(200, {"user": user, "online": bool(found), "sessions": [
            {"session": s.session, "node": s.node, "since": s.since_ms} for s in found]})

    async def unread(self, request: web.Request) -> Answer:
        """GET unread counts per module."""
        user = self._user(request)
        return Answer(200, {"user": user, "unread": await self.node.store.unread(user)})

    async def disconnect(self, request: web.Request) -> Answer:
        """POST disconnect: close every session of the user (close code 1008); `revoke=true` also refuses the
        user's tokens issued before now (else the client may reconnect at once with the same token)."""
        user = self._user(request)
        raw = request.query.get("revoke", "false")
        if raw not in ("true", "false"):
            raise PushError("revoke", "must be true or false")
        sessions = await self.node.disconnect_user(user, revoke=raw == "true")
        return Answer(200, {"user": user, "sessions": sessions, "revoked": raw == "true"})

    async def stats(self, request: web.Request) -> Answer:
        """GET cluster and node counts."""
        sessions, nodes = await self.node.registry.counts()
        return Answer(200, {"node": self.node.settings.node_id, "node_sessions": len(self.node.sessions),
                                  "cluster_sessions": sessions, "nodes": nodes})

    async def openapi(self, request: web.Request) -> web.Response:
        """GET the OpenAPI document (no key needed)."""
        return web.json_response(OPENAPI)
