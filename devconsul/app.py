"""Wiring of the dev agent: catalog, KV store, notifier, check runner and HTTP API in one aiohttp application."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from devconsul.catalog import Catalog, Changes, IndexClock, Node
from devconsul.checks import CheckRunner
from devconsul.errors import BadRequest
from devconsul.http import ConsulAPI
from devconsul.kv import KVStore
from devconsul.notify import Notifier

log = logging.getLogger("devconsul")
MAX_BODY_BYTES = 2 * 1024 * 1024  # above Consul's 512 KiB KV limit so that limit answers with its own message


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """How the dev agent presents itself."""

    node_name: str = ""
    datacenter: str = "dc1"
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not self.datacenter:
            raise BadRequest("datacenter must not be empty")


class Agent:
    """The dev agent's state and moving parts; `commit` is the one path every mutation's changes take."""

    def __init__(self, config: AgentConfig) -> None:
        clock = IndexClock()
        node = Node(name=config.node_name or socket.gethostname(), node_id=str(uuid.uuid4()),
                    address=config.address, datacenter=config.datacenter, create_index=clock.value)
        self.catalog = Catalog(node, clock)
        self.kv = KVStore(clock)
        self.notifier = Notifier()
        self.runner = CheckRunner(self.catalog, self.commit)
        self.api = ConsulAPI(self.catalog, self.kv, self.notifier, self.commit, clock=time.monotonic)

    def commit(self, changes: Changes) -> None:
        """Publish a mutation: wake blocking queries on its topics and let the check runner follow."""
        if changes:
            self.notifier.publish(changes)
            self.runner.on_changes(changes)


def build_app(config: AgentConfig | None = None) -> web.Application:
    """The aiohttp application serving Consul's HTTP API subset."""
    agent = Agent(config or AgentConfig())
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def run_checks(_: web.Application) -> AsyncIterator[None]:
        await agent.runner.start()
        yield
        await agent.runner.close()

    async def release_blocking_queries(_: web.Application) -> None:
        agent.notifier.close()

    app.cleanup_ctx.append(run_checks)
    app.on_shutdown.append(release_blocking_queries)
    app.router.add_route("*", "/{tail:.*}", agent.api.dispatch)
    return app
