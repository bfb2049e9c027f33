"""The access line of a request or an upgrade, one format whichever path served it (aiohttp's, through
`wsnode.app.AccessLogger`, or the front's lean paths)."""

from __future__ import annotations

import logging

ACCESS_LOG = logging.getLogger("aiohttp.access")  # the logger aiohttp's runner hands its access logger


def log_request(logger: logging.Logger, remote: str | None, method: str, raw_target: str, status: int,
                seconds: float) -> None:
    """One line: client address, method, path, status, time taken."""
    # The raw (still percent-encoded) path, without the query string: client tokens travel in `?token=` and must not
    # reach the logs, and a decoded path could put a newline or other control characters of the client's choosing
    # into the log.
    logger.info("%s %s %s %d %.1fms", remote, method, raw_target.partition("?")[0], status, seconds * 1000)
