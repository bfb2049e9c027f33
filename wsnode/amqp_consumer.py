"""Pushes from a RabbitMQ queue (CONTRACT section 9): the body is the push JSON, `message_id` the idempotency key.

Topology, declared by every node (idempotent): the durable queue `<queue>` with `x-dead-letter-exchange:
<queue>.dlx`, the fanout exchange `<queue>.dlx` and the durable queue `<queue>.dead` bound to it.

- A message is acked only after `push` returned, that is once Redis stored and published it (where HTTP answers 202).
  A node that dies before that leaves it unacked and RabbitMQ gives it to another consumer; the push dedupe key
  `amqp:<message_id>` makes that second delivery harmless.
- A malformed message (or one that fails for a reason a retry cannot fix) is published to `<queue>.dlx` with the
  header `x-wsgate-error` (through a confirming channel, so it is in `<queue>.dead` before the original is acked).
- Redis down: the message is not acked; it is given back (`nack requeue`) after a pause and comes again later.
- Several nodes consuming one queue are competing consumers; each holds at most `prefetch` unacked messages.
- Connection lost (broker restart, `rabbitmqctl close_all_connections`): reconnect with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from redis.exceptions import RedisError

from wsnode.envelope import PushRequest, parse_push
from wsnode.errors import BackendUnavailable, PushError
from wsnode.ingest import IngestStatus, keep_running, reason_text

log = logging.getLogger("wsnode.amqp")

PushFn = Callable[[PushRequest, str | None], Awaitable[Any]]  # (request, dedupe key)
ERROR_HEADER = "x-wsgate-error"


def dedupe_key(message_id: str | None) -> str | None:
    """The push dedupe key of a message: its AMQP message_id, or none (then a redelivery may push twice)."""
    return f"amqp:{message_id}" if message_id else None


def queue_names(queue: str) -> tuple[str, str]:
    """(dead-letter exchange, dead-letter queue) of `queue`."""
    return f"{queue}.dlx", f"{queue}.dead"


class AmqpConsumer:
    """Consumes `queue` with a bounded prefetch and hands each message to `push`."""

    def __init__(self, url: str, queue: str, *, prefetch: int, push: PushFn, retry_s: float = 1.0,
                 monitor_s: float = 2.0) -> None:
        self._url = url
        self._queue_name = queue
        self._prefetch = prefetch
        self._push = push
        self._retry_s = retry_s
        self._monitor_s = monitor_s
        self._dlx: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._in_flight = 0
        self.status = IngestStatus("amqp", queue)

    async def run(self) -> None:
        """Consume until cancelled; reconnect with backoff whenever the connection or channel is lost."""
        await keep_running(self._consume, self.status, log)

    async def _consume(self) -> None:
        """One connection: declare, consume, and return (raise) when it is lost."""
        lost = asyncio.Event()
        connection = await aio_pika.connect(self._url, timeout=5, client_properties={
            "connection_name": f"wsnode {self._queue_name}"})
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel(publisher_confirms=True)
            channel.close_callbacks.add(lambda *_: lost.set())
            await self._declare(channel)
            assert self._queue is not None
            await self._queue.consume(self._on_message)
            self.status.up()
            log.info("consuming RabbitMQ queue %s (prefetch %d)", self._queue_name, self._prefetch)
            while not lost.is_set():
                await self._watch_backlog()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._monitor_s)
            raise ConnectionError("connection to RabbitMQ lost")
        finally:
            self._queue = self._dlx = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2.0)

    async def _declare(self, channel: AbstractChannel) -> None:
        await channel.set_qos(prefetch_count=self._prefetch)
        dlx_name, dead_name = queue_names(self._queue_name)
        self._dlx = await channel.declare_exchange(dlx_name, aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(dead_name, durable=True)
        await dead.bind(self._dlx)
        self._queue = await channel.declare_queue(self._queue_name, durable=True,
                                                  arguments={"x-dead-letter-exchange": dlx_name})

    async def _watch_backlog(self) -> None:
        """With nothing waiting and nothing in hand, nothing lags (the lag otherwise comes from message timestamps)."""
        queue = self._queue
        if queue is None:
            return
        declared = await queue.channel.declare_queue(self._queue_name, passive=True)
        waiting = declared.declaration_result.message_count or 0
        self.status.set_backlog(waiting)
        if waiting == 0 and self._in_flight == 0:
            self.status.set_lag(0.0)

    def _note_lag(self, message: AbstractIncomingMessage) -> None:
        stamp = message.timestamp
        if isinstance(stamp, dt.datetime):
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            self.status.set_lag(time.time() - stamp.timestamp())

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        try:
            self._note_lag(message)
            await self._handle(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the channel went away mid-way: the broker redelivers what was not acked
            log.warning("RabbitMQ message %s not settled: %s", message.message_id, exc)
        finally:
            self._in_flight -= 1

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            request = parse_push(message.body)
        except PushError as exc:
            await self._dead_letter(message, exc.reason)
            return
        try:
            await self._push(request, dedupe_key(message.message_id))
        except (BackendUnavailable, RedisError, OSError) as exc:
            # Not acked: back to the queue after a pause (not at once, or it would spin while Redis is away).
            self.status.count_retry()
            log.warning("RabbitMQ message %s given back: %s", message.message_id, exc)
            await asyncio.sleep(self._retry_s)
            await message.nack(requeue=True)
            return
        except PushError as exc:
            await self._dead_letter(message, exc.reason)
            return
        except Exception as exc:  # a bug, not an outage: dead-lettered, or it would hold a prefetch slot for ever
            log.exception("RabbitMQ message %s failed", message.message_id)
            await self._dead_letter(message, f"{type(exc).__name__}: {exc}")
            return
        await message.ack()
        self.status.count_handled()

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Publish to the dead-letter exchange with the reason in a header, then ack the original."""
        log.warning("RabbitMQ message %s dead-lettered: %s", message.message_id, reason)
        dlx = self._dlx
        headers: dict[str, Any] = dict(message.headers or {})
        headers[ERROR_HEADER] = reason_text(reason)
        headers["x-wsgate-queue"] = self._queue_name
        if dlx is None:
            await message.reject(requeue=False)  # the broker dead-letters it, without our reason
        else:
            await dlx.publish(aio_pika.Message(
                body=message.body, headers=headers, message_id=message.message_id, timestamp=message.timestamp,
                content_type=message.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self._queue_name)
            await message.ack()
        self.status.count_dead()
