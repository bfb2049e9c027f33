"""The WebSocket endpoint `/websocket`: handshake checks before the upgrade, then the client frame loop."""

from __future__ import annotations

import logging
from typing import NoReturn
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from wsnode import metrics
from wsnode.auth import Identity, TokenVerifier, check_origin, extract_token
from wsnode.envelope import (
    Ack,
    Ping,
    Publish,
    decode_client_frame,
    encode_accepted,
    encode_error,
    encode_pong,
    parse_since,
)
from wsnode.errors import AuthError, BackendUnavailable, FrameError, WebSocketError
from wsnode.node import Node, new_id
from wsnode.sessions import CLOSE_POLICY, CLOSE_TOO_BIG, Session
from wsnode.store import Replay

log = logging.getLogger("wsnode.endpoint")


def _no_abort() -> None:
    """Nothing to abort (the connection is already gone)."""


def _query_params(raw_path: str) -> dict[str, str]:
    """The first value of each query parameter; unlike `request.query`, nothing stays cached for the session's life."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(raw_path.partition("?")[2], keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _release_http_parser(request: web.Request) -> None:
    """Drop the HTTP/1 parser of an upgraded connection, about 1.3 KiB of each idle session's memory.

    aiohttp keeps it until the connection closes although, once its WebSocket reader is installed, every byte goes
    to that reader; aiohttp itself sets it to None on connection loss and checks for that. Private attributes, so
    only touched when they look as expected.
    """
    protocol = request.protocol
    if getattr(protocol, "_payload_parser", None) is not None and getattr(protocol, "_parser", None) is not None:
        protocol._parser = None


def _refuse(status: int, reason: str) -> web.Response:
    metrics.HANDSHAKE_REFUSED.labels(str(status)).inc()
    return web.json_response({"status": status, "error": reason}, status=status)


BINARY_REFUSED = encode_error("bad_frame", "binary frames are not accepted; send JSON text")


class Endpoint:
    """The session logic both listeners share: aiohttp's handler for `/websocket` (`handle`, with --ws-compress or
    on a connection aiohttp already serves) and the lean path (`wsnode/wsconn.py`) call the same steps, so the
    checks, their order, the statuses and the close codes are one definition."""

    def __init__(self, node: Node, verifier: TokenVerifier) -> None:
        self.node = node
        self.verifier = verifier

    async def identify(self, origin: str | None, authorization: str | None,
                       raw_path: str) -> tuple[Identity, int | None]:
        """The checks before the upgrade: (identity, since), or WebSocketError with the status to refuse with."""
        settings = self.node.settings
        if self.node.draining:
            raise WebSocketError("node is draining", status=503)
        query = _query_params(raw_path)
        try:
            check_origin(origin, settings.allowed_origins)
            identity = self.verifier.verify(extract_token(authorization, query.get("token")))
            sharded = self.node.sharded
            if not self.node.router.live(self.node.shards.index_of(identity.user)) or (
                    sharded is not None and not sharded.subscribed(self.node.keys.user_slot(identity.user))):
                # Without the subscription on the user's shard (on a cluster: the channel of the user's slot) this
                # session would miss live pushes. Users whose data lives on other shards are served (CONTRACT
                # section 7: a lost shard costs only its users).
                raise WebSocketError("node is not subscribed on the Redis shard that holds this user", status=503)
        except AuthError as exc:
            raise WebSocketError(exc.reason, status=exc.status) from None
        since_raw = query.get("since")
        del query  # the token must not live as long as the session
        try:
            return identity, parse_since(since_raw) if since_raw else None
        except FrameError as exc:
            await self.refuse_after_revocation(identity, 400, exc.reason)

    async def admit(self, session: Session, identity: Identity, since: int | None) -> tuple[int, Replay]:
        """Revocation, the session count, the registration and the replay's reads: one round trip."""
        try:
            admission = await self.node.open_session(session, since=since, check=not identity.anonymous,
                                                     issued_at=identity.issued_at)
        except AuthError as exc:
            raise WebSocketError(exc.reason, status=exc.status) from None
        except BackendUnavailable as exc:
            log.warning("refusing session of user=%s: %s", identity.user, exc.reason)
            raise WebSocketError(exc.reason, status=503) from None
        return admission.held, admission.replay

    async def start(self, session: Session, identity: Identity, held: int, replay: Replay,
                    since: int | None) -> None:
        """After the 101: welcome and replay, the token's expiry, the per-user session limit."""
        self.node.go_live(session, replay, since=since)
        if identity.expires_at is not None:
            self.node.sessions.expire_at(session, identity.expires_at)
        if held >= self.node.settings.max_sessions_per_user:
            await self.node.evict_oldest(session)

    async def on_text(self, session: Session, text: str) -> bool:
        """A client text message; False when the session was closed for its rate."""
        if not session.allow_client_frame():
            await session.close(CLOSE_POLICY, "message rate exceeded")
            return False
        await self._on_text(session, text)
        return True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp's path: check origin and token, register the session, upgrade, replay, then serve frames."""
        settings = self.node.settings
        try:
            identity, since = await self.identify(request.headers.get("Origin"),
                                                  request.headers.get("Authorization"), request.raw_path)
        except WebSocketError as exc:
            return _refuse(exc.status, exc.reason)
        # Dead peers: a ping every heartbeat_s; no pong within heartbeat_s / 2 closes the session.
        # permessage-deflate costs tens of KiB of zlib state per session: off unless asked for.
        ws = web.WebSocketResponse(heartbeat=settings.heartbeat_s, compress=settings.ws_compress,
                                   max_msg_size=settings.max_frame_bytes, autoping=True)
        try:
            if not ws.can_prepare(request).ok:
                await self.refuse_after_revocation(identity, 400, "expected a WebSocket upgrade")
            transport = request.transport
            session = Session(new_id(), identity.user, ws, max_queue=settings.send_queue_max,
                              rate_per_s=settings.client_rate_per_s, burst=settings.client_burst,
                              # A bound method, not a closure: a little less memory for each idle session.
                              abort=transport.abort if transport is not None else _no_abort,
                              # Prebuilt frames are uncompressed: direct writes only when deflate cannot be
                              # negotiated.
                              transport=None if settings.ws_compress else transport)
            held, replay = await self.admit(session, identity, since)
        except WebSocketError as exc:
            return _refuse(exc.status, exc.reason)
        try:
            await ws.prepare(request)
            # Memory per idle session: the response headers are sent, and nothing below needs what these hold.
            ws.headers.clear()
            _release_http_parser(request)
            await self.start(session, identity, held, replay, since)
            del replay, identity  # the replayed frames and the claims must not live as long as the session
            # The frame loop is inline (no `async for`, no helper coroutine): each awaited coroutine frame stays
            # allocated for the session's whole life.
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.TEXT:
                    if not await self.on_text(session, msg.data):
                        break
                elif msg.type == WSMsgType.BINARY:
                    session.send(BINARY_REFUSED)
                elif msg.type == WSMsgType.ERROR:
                    error = ws.exception()
                    if error is not None and "too big" in str(error).lower():
                        log.info("session=%s closed for an oversized frame (%d)", session.id, CLOSE_TOO_BIG)
                    break
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
        finally:
            session.closed = True
            await self.node.close_session(session)
        return ws

    async def refuse_after_revocation(self, identity: Identity, status: int, reason: str) -> NoReturn:
        """Refuse a bad request (WebSocketError with `status`), but a revoked token first with 401, as when the
        revocation was checked on its own before anything else (open_session checks it with the registration)."""
        try:
            if not identity.anonymous:
                await self.node.admit(identity.user, identity.issued_at)
        except AuthError as exc:
            raise WebSocketError(exc.reason, status=exc.status) from None
        except BackendUnavailable as exc:
            raise WebSocketError(exc.reason, status=503) from None
        raise WebSocketError(reason, status=status)

    async def _on_text(self, session: Session, text: str) -> None:
        try:
            frame = decode_client_frame(text)
        except FrameError as exc:
            metrics.MESSAGES_IN.labels("bad").inc()
            session.send(encode_error(exc.code, exc.reason))
            return
        try:
            if isinstance(frame, Ping):
                metrics.MESSAGES_IN.labels("ping").inc()
                session.send(encode_pong())
            elif isinstance(frame, Ack):
                metrics.MESSAGES_IN.labels("ack").inc()
                await self.node.ack(session, frame.id)
            elif isinstance(frame, Publish):
                allowed = self.node.settings.publish_modules
                if allowed and frame.module not in allowed and "*" not in allowed:
                    metrics.MESSAGES_IN.labels("bad").inc()
                    session.send(encode_error("forbidden_module", f"publishing to module {frame.module!r} "
                                                                  "is not allowed"))
                    return
                metrics.MESSAGES_IN.labels("publish").inc()
                refused = await self.node.publish(session, frame.module, frame.data, frame.ref)
                if refused is None:
                    session.send(encode_accepted(frame.ref))
                else:
                    session.send(encode_error(refused, "over this user's publish budget "
                                                       f"({refused.replace('_', ' ')} per second); slow down"))
        except (RedisError, OSError):
            metrics.REDIS_ERRORS.labels("client_frame").inc()
            session.send(encode_error("unavailable", "the server cannot reach its store; try again"))
