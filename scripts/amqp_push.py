"""Publish one push to the nodes' RabbitMQ queue, as a backend would (the demo prints this command).

    python -m scripts.amqp_push [--url amqp://guest:guest@127.0.0.1:5672/] [--queue wsgate.push] [--message-id ID] JSON

The body is the push JSON of the push API; the message id (default: a new one) is the idempotency key, so sending
the same id twice pushes once. Persistent, with publisher confirms: when this returns, the broker has it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

import aio_pika

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def publish(url: str, queue: str, body: bytes, message_id: str) -> None:
    """Publish `body` to `queue` through the default exchange and wait for the broker's confirm."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(body, message_id=message_id, timestamp=time.time(), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.amqp_push", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--queue", default="wsgate.push")
    parser.add_argument("--message-id", default=None, help="idempotency key (default: a new uuid)")
    parser.add_argument("json", help="the push, as for POST /api/v1/push")
    args = parser.parse_args(argv)
    try:
        json.loads(args.json)
    except ValueError as exc:
        parser.error(f"not JSON: {exc}")
    message_id = args.message_id or uuid.uuid4().hex
    asyncio.run(publish(args.url, args.queue, args.json.encode(), message_id))
    print(f"published {message_id} to {args.queue}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
