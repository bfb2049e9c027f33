"""A backend for gateway tests: WebSocket echo and HTTP echo, runnable in-process or as a process.

    python -m tests.gateway.upstream --port P [--name N]

WebSocket at any path ending in `/ws` (or `/websocket`); query parameters steer the handshake:
`protocols=a,b` (subprotocols it accepts), `compress=0` (refuse permessage-deflate), `status=403` (refuse with that
status, a `Set-Cookie` and a body). Messages are echoed; a text message `close:<code>` makes it close with that code.
Every response carries `X-Upstream: <name>`. `GET /health` answers 200 (503 after `POST /health/fail`);
`POST /echo` returns the body; `GET /stream?chunks=K&size=S` streams K chunks; anything else returns JSON describing
the request (method, path, query, headers). `GET /closes` lists the close codes of finished WebSockets.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

from aiohttp import WSMsgType, web

NAME = web.AppKey("name", str)
HEALTHY = web.AppKey("healthy", list)
CLOSES = web.AppKey("closes", list)


async def _ws(request: web.Request) -> web.StreamResponse:
    name = request.app[NAME]
    status = request.query.get("status")
    if status:
        return web.Response(status=int(status), text=f"refused by {name}", headers={
            "Set-Cookie": "session=abc123; Path=/; HttpOnly", "X-Upstream": name})
    protocols = tuple(p for p in request.query.get("protocols", "").split(",") if p)
    ws = web.WebSocketResponse(protocols=protocols, compress=request.query.get("compress", "1") != "0",
                               max_msg_size=8 * 1024 * 1024, autoping=True)
    ws.headers["X-Upstream"] = name
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            if msg.data.startswith("close:"):
                await ws.close(code=int(msg.data[6:]), message=b"bye")
                break
            if msg.data == "whoami":
                await ws.send_str(name)
                continue
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    request.app[CLOSES].append(ws.close_code)
    return ws


async def _closes(request: web.Request) -> web.Response:
    return web.json_response(request.app[CLOSES])


async def _health(request: web.Request) -> web.Response:
    ok = request.app[HEALTHY][0]
    return web.Response(status=200 if ok else 503, text="ok" if ok else "failing")


async def _health_set(request: web.Request) -> web.Response:
    request.app[HEALTHY][0] = request.match_info["state"] == "pass"
    return web.Response(text="set")


async def _echo_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Upstream": request.app[NAME]})
    if request.content_length is not None:
        response.content_length = request.content_length
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


async def _stream(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "3"))
    size = int(request.query.get("size", "10"))
    response = web.StreamResponse(headers={"X-Upstream": request.app[NAME]})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for index in range(chunks):
        await response.write(bytes([65 + index % 26]) * size)
    await response.write_eof()
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="late")


async def _describe(request: web.Request) -> web.Response:
    body = await request.read()
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await _ws(request)  # type: ignore[return-value]
    return web.json_response({
        "name": request.app[NAME], "method": request.method, "path": request.raw_path.partition("?")[0],
        "query": request.raw_path.partition("?")[2], "headers": [[k, v] for k, v in request.headers.items()],
        "body_len": len(body), "peer": request.remote,
    }, headers={"X-Upstream": request.app[NAME]})


def make_app(name: str = "upstream") -> web.Application:
    """The backend as an aiohttp application."""
    app = web.Application()
    app[NAME] = name
    app[HEALTHY] = [True]
    app[CLOSES] = []
    app.router.add_get("/health", _health)
    app.router.add_post("/health/{state:pass|fail}", _health_set)
    app.router.add_post("/echo", _echo_body)
    app.router.add_get("/stream", _stream)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/closes", _closes)
    app.router.add_get(r"/{prefix:.*}ws", _ws)
    app.router.add_get(r"/{prefix:.*}websocket", _ws)
    app.router.add_route("*", "/{tail:.*}", _describe)
    return app


def main() -> None:
    """Run the backend on --host/--port."""
    parser = argparse.ArgumentParser(prog="upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--cert", default=None, help="serve TLS with this certificate (and --key)")
    parser.add_argument("--key", default=None)
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    web.run_app(make_app(args.name), host=args.host, port=args.port, ssl_context=context, print=lambda *_: print(
        f"upstream {args.name} on {args.host}:{args.port}", flush=True), access_log=None)


if __name__ == "__main__":

    main()
