"""What the broker consumers share: their state for /health, their Prometheus metrics, the reconnect loop.

A source is `amqp` (wsnode/amqp_consumer.py) or `outbox` (wsnode/outbox/). Metrics per source:
- `wsnode_ingest_handled_total`: messages or rows pushed (throughput is its rate);
- `wsnode_ingest_dead_letters_total`: messages or rows sent to the dead-letter queue or table;
- `wsnode_ingest_lag_seconds`: age of the oldest message not yet handled (0 when nothing waits; for RabbitMQ, the
  age of the last message taken, from its `timestamp` property, which the publisher must set);
- `wsnode_ingest_backlog`: messages waiting in the RabbitMQ queue (ready, not yet given to a consumer);
- `wsnode_ingest_retries_total`: messages or batches given back because Redis could not take them;
- `wsnode_ingest_up`: 1 while connected to the broker or database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from wsnode import metrics

HANDLED = Counter("wsnode_ingest_handled", "Pushes taken from a broker or outbox and pushed", ["source"],
                  registry=metrics.REGISTRY)
DEAD_LETTERS = Counter("wsnode_ingest_dead_letters", "Broker messages or outbox rows dead-lettered", ["source"],
                       registry=metrics.REGISTRY)
RETRIES = Counter("wsnode_ingest_retries", "Broker messages or outbox batches given back (Redis down)", ["source"],
                  registry=metrics.REGISTRY)
LAG = Gauge("wsnode_ingest_lag_seconds", "Age of the oldest message or row not yet pushed", ["source"],
            registry=metrics.REGISTRY)
BACKLOG = Gauge("wsnode_ingest_backlog", "Messages waiting in the broker queue", ["source"], registry=metrics.REGISTRY)
UP = Gauge("wsnode_ingest_up", "1 while the node is connected to the broker or outbox database", ["source"],
           registry=metrics.REGISTRY)

# Dead-letter reasons are cut to this many characters (an AMQP header, a database column).
REASON_MAX = 500

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0

CONNECTING = "CONNECTING"
CONSUMING = "UP"
DOWN = "DOWN"


def reason_text(reason: str) -> str:
    """A dead-letter reason, bounded."""
    return reason if len(reason) <= REASON_MAX else reason[:REASON_MAX - 3] + "..."


@dataclass
class IngestStatus:
    """The live state of one consumer, as /health shows it."""

    source: str
    target: str  # the queue or table
    state: str = CONNECTING
    error: str | None = None
    handled: int = 0
    dead_letters: int = 0
    connects: int = 0
    lag_s: float = 0.0
    backlog: int | None = None
    retries: int = 0
    since: float = field(default_factory=time.time)

    def up(self) -> None:
        self.state, self.error, self.since = CONSUMING, None, time.time()
        self.connects += 1
        UP.labels(self.source).set(1)

    def down(self, error: str) -> None:
        if self.state != DOWN:
            self.since = time.time()
        self.state, self.error = DOWN, error
        UP.labels(self.source).set(0)

    def count_handled(self, n: int = 1) -> None:
        self.handled += n
        HANDLED.labels(self.source).inc(n)

    def count_dead(self, n: int = 1) -> None:
        self.dead_letters += n
        DEAD_LETTERS.labels(self.source).inc(n)

    def count_retry(self) -> None:
        self.retries += 1
        RETRIES.labels(self.source).inc()

    def set_lag(self, seconds: float) -> None:
        self.lag_s = max(0.0, seconds)
        LAG.labels(self.source).set(self.lag_s)

    def set_backlog(self, count: int) -> None:
        self.backlog = count
        BACKLOG.labels(self.source).set(count)

    def as_json(self) -> dict[str, Any]:
        """The /health entry."""
        return {"status": self.state, "target": self.target, "error": self.error, "handled": self.handled,
                "dead_letters": self.dead_letters, "retries": self.retries, "connects": self.connects,
                "lag_s": round(self.lag_s, 3), "backlog": self.backlog, "since": round(self.since, 3)}


async def keep_running(session: Callable[[], Awaitable[None]], status: IngestStatus, log: logging.Logger) -> None:
    """Run `session` (connect, serve until the connection fails) again and again until cancelled.

    A failure turns the status DOWN and waits with capped exponential backoff before the next attempt; a session that
    got as far as UP starts the backoff over (the broker or database was there a moment ago)."""
    delay = BACKOFF_MIN_S
    while True:
        connects = status.connects
        try:
            await session()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the drivers' errors share no root; any failure means reconnect
            status.down(f"{type(exc).__name__}: {exc}")
        if status.connects > connects:
            delay = BACKOFF_MIN_S
        log.warning("%s consumer: %s; reconnecting in %.1fs", status.source, status.error, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)
