"""The python-socketio baseline for the fan-out benchmark: AsyncServer + AsyncRedisManager on aiohttp and uvloop.

`python -m bench.sio_server --port P --redis URL --channel C`: a client connects with auth `{"user": U}` and joins the
room U, the usual way to address a user with socket.io; pushes come through the Redis manager from anywhere.
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvloop
from aiohttp import web


def build_app(redis_url: str, channel: str) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url, channel=channel)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, cors_allowed_origins="*")

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        user = (auth or {}).get("user")
        if not user:
            return False
        await sio.enter_room(sid, str(user))
        return True

    app = web.Application()
    sio.attach(app)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "UP"})

    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--channel", default="wsgate-bench-socketio")
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build_app(args.redis, args.channel), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
