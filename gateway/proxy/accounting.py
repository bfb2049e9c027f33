"""What the gateway records about each answer: the request counter, the access log and upstream error counts.

The access log holds the path only: a query string may hold a token or a key (`?token=...`), which no log line may
hold (CONTRACT section 8).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.config.model import RouteSpec, ServerSettings
from gateway.discovery.base import Endpoint
from gateway.errors import BadGateway, UpstreamTimeout
from gateway.ops.metrics import Metrics, SeriesKey
from gateway.proxy.httpparse import RequestHead

access_log = logging.getLogger("gateway.access")
_MAX_CACHED_KEYS = 4096  # bounds the per-worker cache of metric keys


class Accounting:
    """Counts and logs answers for one worker (`settings` is read per call: a reload may turn the log off)."""

    def __init__(self, metrics: Metrics, settings: Callable[[], ServerSettings]) -> None:
        self.metrics = metrics
        self._settings = settings
        self._request_keys: dict[tuple[str, int], SeriesKey] = {}

    def count(self, route: str, status: int) -> None:
        """One answer with `status` on `route` (`-` before a route was chosen)."""
        self.count_key(route, status).value += 1

    def count_key(self, route: str, status: int) -> SeriesKey:
        """The series `count` adds to (for a caller that keeps it: `key.value += 1`)."""
        key = self._request_keys.get((route, status))
        if key is None:
            if len(self._request_keys) >= _MAX_CACHED_KEYS:
                self._request_keys.clear()
            key = self._request_keys[(route, status)] = self.metrics.series("wsgate_requests_total", route=route,
                                                                       status=str(status))
        return key

    def log(self, remote: str, head: RequestHead, status: int, route: str, instance: str, started: float) -> None:
        """One access-log line (when the log is on)."""
        if self._settings().access_log:
            access_log.info('%s "%s %s %s" %d route=%s instance=%s %.1fms', remote, head.method, head.path,
                            head.version, status, route, instance, (time.monotonic() - started) * 1000)

    def answered(self, remote: str, head: RequestHead, status: int, route: str, started: float) -> None:
        """Count and log an answer the gateway gave itself (no instance)."""
        self.count(route, status)
        self.log(remote, head, status, route, "-", started)

    def refused(self, remote: str, status: int, error: object) -> None:
        """Count and log a request refused before it was routed (bad, slow or oversized head)."""
        self.count("-", status)
        access_log.info('%s "-" %d %s', remote, status, error)

    def upstream_error(self, route: RouteSpec, endpoint: Endpoint, error: BaseException) -> None:
        """Count an instance that timed out or answered something unusable."""
        if isinstance(error, (UpstreamTimeout, BadGateway)):
            self.metrics.add("wsgate_upstream_errors_total", 1, route=route.id, instance=endpoint.address,
                             reason="timeout" if isinstance(error, UpstreamTimeout) else "bad-response")
