"""`python -m devconsul [--host 127.0.0.1] [--port 8500]`: run the dev Consul agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from devconsul.app import AgentConfig, build_app

log = logging.getLogger("devconsul")
SHUTDOWN_TIMEOUT_S = 2.0  # blocking queries are released at shutdown; this only bounds stragglers


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="devconsul", description="Development agent for a subset of Consul's API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8500, help="HTTP port (default 8500)")
    parser.add_argument("--node-name", default="", help="node name (default: the host name)")
    parser.add_argument("--datacenter", default="dc1", help="datacenter name (default dc1)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until a stop signal arrives."""
    app = build_app(AgentConfig(node_name=args.node_name, datacenter=args.datacenter,
                                address="127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        log.info("devconsul listening on http://%s:%d", args.host, args.port)
        await stop.wait()
        log.info("devconsul stopping")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        log.error("devconsul cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
