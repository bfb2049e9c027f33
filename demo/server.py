"""The demo page server (development only): the page, short-lived HS256 tokens for demo users, and a push relay.

`python -m demo.server --port 8090 --secret S --gateway http://127.0.0.1:8080 --api-key K`

- `GET /` the page; `GET /static/*` its script and style; `GET /config.json` where the gateway is.
- `POST /token {"user":"alice"}` -> `{"token":..., "user":"alice", "expires_at":epoch_s}`: anyone may be anyone,
  which is the point of a demo and why this server must never face real users.
- `POST /push` relays a push body to the gateway's push API (`/ws-svc/api/v1/push`) with the demo API key, so that
  the page needs no CORS from the nodes; the answer is the push API's, status and body unchanged.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import ClientError, ClientSession, ClientTimeout, web

STATIC_DIR = Path(__file__).resolve().parent / "static"
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MODULES = ("notices", "chat", "orders")
MAX_BODY_BYTES = 64 * 1024


class DemoError(Exception):
    """A bad demo request or setting; carries the HTTP status to answer with."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Where the demo server listens, how it signs tokens, and which gateway it points the page at."""

    secret: str
    gateway_url: str
    api_key: str
    host: str = "127.0.0.1"
    port: int = 8090
    route_prefix: str = "/ws-svc"
    token_ttl_s: int = 600
    push_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.secret:
            raise DemoError("--secret must not be empty")
        if not re.match(r"^https?://[^/]+$", self.gateway_url):
            raise DemoError(f"--gateway must be http(s)://host:port without a path, not {self.gateway_url!r}")
        if not 0 < self.port < 65536:
            raise DemoError(f"--port must be 1-65535, not {self.port}")
        if not 10 <= self.token_ttl_s <= 86400:
            raise DemoError(f"--token-ttl-s must be 10-86400, not {self.token_ttl_s}")
        if self.route_prefix and not re.match(r"^/[A-Za-z0-9_.-]+$", self.route_prefix):
            raise DemoError(f"--route-prefix must look like /ws-svc, not {self.route_prefix!r}")

    @property
    def websocket_url(self) -> str:
        """The WebSocket endpoint through the gateway."""
        return "ws" + self.gateway_url.removeprefix("http") + self.route_prefix + "/websocket"

    @property
    def push_url(self) -> str:
        """The push API through the gateway."""
        return self.gateway_url + self.route_prefix + "/api/v1/push"

    def page_config(self) -> dict[str, Any]:
        """What the page needs to know (served as /config.json)."""
        return {
            "gateway": self.gateway_url,
            "websocket": self.websocket_url,
            "client": self.gateway_url + self.route_prefix + "/static/wsgate.js",
            "pushApi": self.push_url,
            "apiKey": self.api_key,
            "modules": list(MODULES),
            "tokenTtlS": self.token_ttl_s,
        }


def mint_token(user: str, secret: str, *, ttl_s: int, now_s: float | None = None) -> tuple[str, int]:
    """A short-lived HS256 token whose `sub` is `user`, and when it expires (epoch seconds)."""
    if not USER_RE.match(user):
        raise DemoError("user must be 1-64 of A-Z a-z 0-9 _ . @ -")
    issued = int(time.time() if now_s is None else now_s)
    expires = issued + ttl_s
    token = jwt.encode({"sub": user, "iat": issued, "exp": expires}, secret, algorithm="HS256")
    return token, expires


SETTINGS = web.AppKey("settings", DemoSettings)
HTTP = web.AppKey("http", ClientSession)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise DemoError("body too large", status=413)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise DemoError("body must be JSON") from None
    if not isinstance(body, dict):
        raise DemoError("body must be a JSON object")
    return body


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except DemoError as exc:
        return web.json_response({"status": exc.status, "error": exc.reason}, status=exc.status)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _config(request: web.Request) -> web.Response:
    return web.json_response(request.app[SETTINGS].page_config(), headers={"Cache-Control": "no-cache"})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "UP"})


async def _token(request: web.Request) -> web.Response:
    body = await _json_body(request)
    user = body.get("user")
    if not isinstance(user, str):
        raise DemoError("user must be a string")
    settings = request.app[SETTINGS]
    token, expires = mint_token(user, settings.secret, ttl_s=settings.token_ttl_s)
    return web.json_response({"token": token, "user": user, "expires_at": expires},
                             headers={"Cache-Control": "no-store"})


async def _push(request: web.Request) -> web.Response:
    body = await _json_body(request)
    settings = request.app[SETTINGS]
    try:
        async with request.app[HTTP].post(
                settings.push_url, json=body, headers={"Authorization": f"Bearer {settings.api_key}"}) as upstream:
            text = await upstream.text()
            return web.Response(text=text, status=upstream.status, content_type="application/json")
    except (ClientError, TimeoutError) as exc:
        raise DemoError(f"the gateway at {settings.gateway_url} did not answer: {exc!r}", status=502) from None


def build_app(settings: DemoSettings) -> web.Application:
    """The demo application (routes and its one HTTP client)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings

    async def http_client(app: web.Application) -> Any:
        app[HTTP] = ClientSession(timeout=ClientTimeout(total=settings.push_timeout_s))
        yield
        await app[HTTP].close()

    app.cleanup_ctx.append(http_client)
    app.router.add_get("/", _index)
    app.router.add_get("/config.json", _config)
    app.router.add_get("/health", _health)
    app.router.add_post("/token", _token)
    app.router.add_post("/push", _push)
    app.router.add_static("/static/", STATIC_DIR)
    return app


def parse_args(argv: Sequence[str]) -> DemoSettings:
    """Command-line flags to settings; DemoError when they are bad."""
    parser = argparse.ArgumentParser(prog="python -m demo.server", description="wsgate demo page (development only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--secret", required=True, help="the nodes' HS256 secret (--jwt-secret)")
    parser.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--api-key", required=True, help="a push API key of the nodes (--api-key)")
    parser.add_argument("--route-prefix", default="/ws-svc", help="the gateway route's path prefix")
    parser.add_argument("--token-ttl-s", type=int, default=600)
    args = parser.parse_args(list(argv))
    return DemoSettings(secret=args.secret, gateway_url=args.gateway.rstrip("/"), api_key=args.api_key,
                        host=args.host, port=args.port, route_prefix=args.route_prefix, token_ttl_s=args.token_ttl_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the demo page until interrupted; exit 2 on bad flags."""
    try:
        settings = parse_args(sys.argv[1:] if argv is None else argv)
    except DemoError as exc:
        print(f"demo: {exc.reason}", file=sys.stderr)
        return 2
    print(json.dumps({"demo": f"http://{settings.host}:{settings.port}/", "gateway": settings.gateway_url}),
          flush=True)
    web.run_app(build_app(settings), host=settings.host, port=settings.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
