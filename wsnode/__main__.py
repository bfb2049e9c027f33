"""`python -m wsnode --port P ...` (console script `wsnode`): run one push node."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from wsnode import environment
from wsnode.errors import SettingsError
from wsnode.settings import settings_from


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings (exit 2 when bad), then serve until SIGTERM (exit 0)."""
    logging.basicConfig(level=environment.log_level(environment.current()),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = settings_from(sys.argv[1:] if argv is None else argv, environment.current())
    except SettingsError as exc:
        print(f"wsnode: {exc.reason}", file=sys.stderr)
        return 2
    from wsnode.app import serve

    try:
        import uvloop

        runner: object = uvloop.run
    except ImportError:  # uvloop is a dependency, but the node still runs without it
        runner = asyncio.run
    try:
        runner(serve(settings))  # type: ignore[operator]
    except SettingsError as exc:  # found once Redis answered: a --redis list that differs from the other nodes'
        print(f"wsnode: {exc.reason}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wsnode: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
