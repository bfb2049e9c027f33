"""Memory per idle authenticated session on one node: Python heap (tracemalloc) and RSS, with N raw clients.

    python -m bench.idle_heap --clients 500            # the node as configured (the lean path)
    python -m bench.idle_heap --clients 500 --aiohttp  # the aiohttp path (--ws-compress, no client offers deflate)

Two node processes per path: one under tracemalloc for the heap (tracemalloc's own bookkeeping inflates RSS), one
without it for RSS. Each is measured (after gc) before the clients connect and once they all got their welcome
and sat idle for a second; the figure is the difference divided by the clients. The clients are raw sockets in
this process, so nothing of theirs counts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import jwt

from bench import procstat
from harness import ProcessGroup, free_port, provide_redis, scratch_group, unique_prefix

SECRET = "idle-heap-secret-0123456789abcdefghij"


def _measure(out: Path) -> None:
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps({"heap": traced, "rss": procstat.rss_bytes(os.getpid())}))
    partial.rename(out)


def node_main(out: Path, trace: bool, argv: list[str]) -> None:
    """The node, measuring itself into `out` on SIGUSR1."""
    from wsnode import environment
    from wsnode.app import serve
    from wsnode.settings import settings_from

    settings = settings_from(argv, environment.current())
    if trace:
        tracemalloc.start()

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _measure, out)
        await serve(settings)

    import uvloop

    uvloop.run(run())


async def _client(port: int, user: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /websocket?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    await asyncio.wait_for(reader.readexactly(2), 30)  # the welcome frame's head: the session is open
    return writer


async def _measure_node(group: ProcessGroup, redis_url: str, clients: int, trace: bool, aiohttp_path: bool,
                        workdir: Path) -> dict[str, float]:
    port, out = free_port(), workdir / f"measure-{trace}-{aiohttp_path}.json"
    argv = ["--port", str(port), "--host", "127.0.0.1", "--redis", redis_url, "--redis-prefix", unique_prefix("idle"),
            "--jwt-secret", SECRET, "--heartbeat", "300", "--max-sessions-per-user", "100000"]
    if aiohttp_path:
        argv.append("--ws-compress")
    proc = group.python(f"node-{trace}-{aiohttp_path}", "bench.idle_heap", "--node", str(out),
                        *(["--trace"] if trace else []), "--", *argv)
    proc.wait_http_ready(f"http://127.0.0.1:{port}/health", timeout_s=30)

    async def measure() -> dict[str, float]:
        out.unlink(missing_ok=True)
        proc.signal(signal.SIGUSR1)
        for _ in range(600):  # the node writes it whole (a rename), within a few seconds
            if out.exists():
                break
            await asyncio.sleep(0.05)
        figures: dict[str, float] = json.loads(out.read_text())
        return figures

    await asyncio.sleep(1.0)
    before = await measure()
    writers = []
    for start in range(0, clients, 100):
        writers += await asyncio.gather(*(_client(port, f"idle-{i}") for i in range(start, min(clients, start + 100))))
    await asyncio.sleep(1.0)
    after = await measure()
    for writer in writers:
        writer.close()
    proc.stop()
    return {name: (after[name] - before[name]) / clients for name in ("heap", "rss")}


async def _main(clients: int, aiohttp_path: bool) -> None:
    with scratch_group("idle-heap-") as (workdir, group), provide_redis(workdir / "redis") as (redis, _):
        heap = (await _measure_node(group, redis.url, clients, True, aiohttp_path, workdir))["heap"]
        rss = (await _measure_node(group, redis.url, clients, False, aiohttp_path, workdir))["rss"]
    path = "aiohttp" if aiohttp_path else "lean"
    print(f"{path} path, {clients} idle authenticated sessions: Python heap per session {heap:,.0f} B, "
          f"RSS per session {rss / 1024:.1f} KiB")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--node"]:
        trace = args[2:3] == ["--trace"]
        rest = args[args.index("--") + 1:]
        node_main(Path(args[1]), trace, rest)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.idle_heap", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--aiohttp", action="store_true", help="measure aiohttp's path (--ws-compress) instead")
    parsed = parser.parse_args(args)
    asyncio.run(_main(parsed.clients, parsed.aiohttp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
