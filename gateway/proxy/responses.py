"""The gateway's own answers: JSON error bodies in Spring Cloud Gateway's shape and complete small responses."""

from __future__ import annotations

import json
from http import HTTPStatus

from gateway.errors import GatewayError, NoInstance
from gateway.model import Headers
from gateway.proxy.httpparse import serialize_head


def error_body(error: GatewayError, path: str) -> bytes:
    """The JSON body of an error answer (SCG-like fields; `service` when no instance was available)."""
    body: dict[str, object] = {"status": error.status, "error": HTTPStatus(error.status).phrase,
                               "message": str(error), "path": path}
    if isinstance(error, NoInstance):
        body["service"] = error.service
    return json.dumps(body).encode()


def simple_response(status: int, body: bytes, *, content_type: str = "application/json",
                    close: bool = False, extra: Headers = ()) -> bytes:
    """A complete response with a Content-Length body."""
    headers: list[tuple[str, str]] = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    headers.extend(extra)
    if close:
        headers.append(("Connection", "close"))
    return serialize_head(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", tuple(headers)) + body


def rate_limit_refusal(status: int, path: str, headers: Headers, *, close: bool) -> bytes:
    """A rate limiter's refusal as the client gets it (429, 403 for an empty key, 503 when Redis is down and the
    limiter fails closed), on either lane: the Python path and the native lane's (gateway/_http_redis.c)."""
    error = GatewayError("rate limit exceeded" if status == 429 else "request refused by rate limiter", status=status)
    return simple_response(status, error_body(error, path), close=close, extra=headers)
