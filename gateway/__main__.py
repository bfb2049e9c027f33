"""`python -m gateway --config routes.yaml [--host H] [--port P] [--workers N]` (console script `wsgate`).

`wsgate --check FILE [--profile P]` validates the file, prints its route table and every warning, and exits
0 (or 2 with the errors) without listening, like `nginx -t`.
A file that cannot be used is reported on stderr as `file:line: key: reason` and the exit status is 2.
With one worker the process serves itself; with more it becomes the master of N workers (see supervisor.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from gateway.config import environment
from gateway.config.loader import load_config
from gateway.config.settings_table import setting
from gateway.errors import ConfigError

EXIT_CONFIG = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="wsgate", description="WebSocket gateway with SCG routes and Consul.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="routes.yaml (Spring Cloud Gateway route syntax)")
    source.add_argument("--check", metavar="FILE", help="validate FILE, print its routes and warnings, and exit")
    parser.add_argument("--profile", action="append", default=None,
                        help="active Spring profile (repeatable or comma-separated; default SPRING_PROFILES_ACTIVE)")
    parser.add_argument("--unknown-filters", choices=setting("unknown-filters").choices, default=None,
                        help="override the file's wsgate.unknown-filters")
    parser.add_argument("--host", default=None, help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, default=None, help="listen port (overrides server.port)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes sharing the port (default: server.workers, else the CPU count)")
    parser.add_argument("--log-level", default=environment.log_level(environment.current()),
                        help=f"logging level (default ${environment.LOG_LEVEL}, else INFO)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s")
    if args.check is not None:
        return check(args.check, args.profile, args.unknown_filters)
    try:
        config = load_config(args.config, profiles=args.profile, unknown_filters=args.unknown_filters)
    except ConfigError as error:
        print(f"wsgate: {error}", file=sys.stderr)
        return EXIT_CONFIG
    limiter_url_error = redis_url_error(config.server.redis_url)
    if limiter_url_error:
        print(f"wsgate: {limiter_url_error}", file=sys.stderr)
        return EXIT_CONFIG
    # Workers and reloads read the file again: they find the choices in the environment they inherit.
    if args.profile:
        environment.export(environment.PROFILES, ",".join(args.profile))
    if args.unknown_filters is not None:
        environment.export(environment.UNKNOWN_FILTERS, args.unknown_filters)
    if args.workers is not None and args.workers < 1:
        print("wsgate: --workers must be >= 1", file=sys.stderr)
        return EXIT_CONFIG
    workers = args.workers or config.server.workers or os.cpu_count() or 1
    from gateway.app import serve_forever

    if args.worker:
        return serve_forever(args.config, host=args.host, port=args.port, watch_file=False)
    if workers == 1:
        # No SO_REUSEPORT for a lone process: a port still held by another gateway must fail loudly instead of the
        # kernel silently splitting connections between the two.
        return serve_forever(args.config, host=args.host, port=args.port, watch_file=True, reuse_port=False)
    from gateway.ops.supervisor import Supervisor

    worker_args = ["--config", args.config, "--log-level", args.log_level]

    if args.host is not None:
        worker_args += ["--host", args.host]
    if args.port is not None:
        worker_args += ["--port", str(args.port)]
    return Supervisor(args.config, worker_args, workers, drain_timeout_s=config.server.drain_timeout_s).run()


def redis_url_error(file_url: str | None) -> str:
    """Why the rate limiter's Redis URL (the file's, else $REDIS_URL) cannot be used, or "" when it can.

    Checked before any worker starts: a worker that fails on it would be restarted by the master in a loop.
    """
    from gateway.ratelimit.redis import check_redis_url

    try:
        check_redis_url(environment.wsgate_fallback("redis.url", file_url, environment.current()))
    except ValueError as error:
        return f"{'wsgate.redis.url' if file_url is not None else 'REDIS_URL'}: {error}"
    return ""


def check(file: str, profiles: Sequence[str] | None, unknown_filters: str | None) -> int:
    """`--check`: the route table and the warnings on stdout, the errors on stderr; 0 or EXIT_CONFIG."""
    try:
        config = load_config(file, profiles=profiles, unknown_filters=unknown_filters)
    except ConfigError as error:
        print(f"wsgate: {error}", file=sys.stderr)
        return EXIT_CONFIG
    from gateway.ops.check_report import route_table

    print(route_table(config))
    for warning in config.warnings:
        print(f"warning: {warning}")
    print(f"{file}: ok, {len(config.routes)} route(s), {len(config.warnings)} warning(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
