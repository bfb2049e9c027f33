"""Consul's HTTP API over the catalog and KV store: routing, parameters, blocking queries and response shapes."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from devconsul.catalog import (
    HEALTH_STATES,
    TOPIC_CHECKS,
    TOPIC_KV,
    TOPIC_NODES,
    TOPIC_SERVICES,
    Catalog,
    Changes,
    service_topic,
)
from devconsul.definitions import CRITICAL, PASSING, STATUSES, WARNING, decode_json, decode_service
from devconsul.durations import NS_PER_S, parse_duration_ns
from devconsul.errors import BadRequest, DevConsulError, MethodNotAllowed, NotFound
from devconsul.kv import KVStore
from devconsul.notify import Notifier
from devconsul.shapes import (
    agent_service_json,
    catalog_service_json,
    check_json,
    health_service_json,
    kv_json,
    node_json,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request, tuple[str, ...]], Awaitable[web.StreamResponse]]
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
LEADER = "127.0.0.1:8300"
VERSION = "1.20.0"
# Parameters whose silent omission would return wrong results; refused instead.
UNSUPPORTED_PARAMS = frozenset({"filter", "peer"})
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(value: str, name: str) -> bool:
    """Go's strconv.ParseBool; an empty value means "present", i.e. true."""
    if value == "" or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"Invalid value for ?{name}: {value!r}")


def parse_blocking(query: Mapping[str, str]) -> tuple[int, float]:
    """(index, wait_s) of a blocking query; index 0 means "do not block". Wait defaults to 5m, capped at 10m."""
    index = 0
    if raw := query.get("index", ""):
        if not (raw.isascii() and raw.isdigit()):
            raise BadRequest("Invalid index")
        index = int(raw)
    wait_s = DEFAULT_WAIT_S
    if raw := query.get("wait", ""):
        try:
            wait_s = parse_duration_ns(raw) / NS_PER_S
        except BadRequest as exc:
            raise BadRequest("Invalid wait time") from exc
        if wait_s <= 0:
            wait_s = DEFAULT_WAIT_S
    return index, min(wait_s, MAX_WAIT_S)


def _uint_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"Invalid {name} value: {raw!r}")
    return int(raw)


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """A plain-text answer, as Consul gives for errors."""
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


class ConsulAPI:
    """The HTTP handlers; `commit` publishes a mutation's changes (wakes blocking queries, resyncs checks)."""

    def __init__(self, catalog: Catalog, kv: KVStore, notifier: Notifier, commit: Callable[[Changes], None],
                 *, clock: Callable[[], float]) -> None:
        self.catalog = catalog
        self.kv = kv
        self.notifier = notifier
        self.commit = commit
        self.clock = clock
        # Ordered like Consul's mux: exact endpoints before the prefix ones they would shadow.
        table: tuple[tuple[str, dict[str, Handler]], ...] = (
            (r"/v1/agent/service/register", {"PUT": self.register_service}),
            (r"/v1/agent/service/deregister/(.*)", {"PUT": self.deregister_service}),
            (r"/v1/agent/service/maintenance/(.*)", {"PUT": self.service_maintenance}),
            (r"/v1/agent/service/(.*)", {"GET": self.agent_service}),
            (r"/v1/agent/services", {"GET": self.agent_services}),
            (r"/v1/agent/checks", {"GET": self.agent_checks}),
            (r"/v1/agent/check/(pass|warn|fail)/(.*)", {"PUT": self.check_ttl}),
            (r"/v1/agent/check/update/(.*)", {"PUT": self.check_update}),
            (r"/v1/agent/self", {"GET": self.agent_self}),
            (r"/v1/agent/members", {"GET": self.agent_members}),
            (r"/v1/health/service/(.*)", {"GET": self.health_service}),
            (r"/v1/health/checks/(.*)", {"GET": self.health_checks}),
            (r"/v1/health/state/(.*)", {"GET": self.health_state}),
            (r"/v1/catalog/services", {"GET": self.catalog_services}),
            (r"/v1/catalog/service/(.*)", {"GET": self.catalog_service}),
            (r"/v1/catalog/nodes", {"GET": self.catalog_nodes}),
            (r"/v1/catalog/datacenters", {"GET": self.catalog_datacenters}),
            (r"/v1/status/leader", {"GET": self.status_leader}),
            (r"/v1/status/peers", {"GET": self.status_peers}),
            (r"/v1/kv/(.*)", {"GET": self.kv_get, "PUT": self.kv_put, "DELETE": self.kv_delete}),
        )
        self.routes = [(re.compile(pattern), methods) for pattern, methods in table]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route by path, then method; unknown paths are 404 and other methods 405, with Consul's texts."""
        try:
            for unsupported in UNSUPPORTED_PARAMS & request.query.keys():
                raise BadRequest(f"devconsul does not implement the ?{unsupported} parameter")
            for pattern, methods in self.routes:
                match = pattern.fullmatch(request.path)
                if match is None:
                    continue
                handler = methods.get(request.method)
                if handler is None:
                    raise MethodNotAllowed(request.method, tuple(methods))
                return await handler(request, match.groups())
            raise NotFound("404 page not found")
        except MethodNotAllowed as exc:
            return text_response(exc.status, exc.reason, {"Allow": ", ".join(exc.allowed)})
        except DevConsulError as exc:
            return text_response(exc.status, exc.reason)
        except web.HTTPRequestEntityTooLarge as exc:
            return text_response(exc.status, f"Request body too large, max size: {request.client_max_size} bytes")
        except Exception as exc:  # a bug must cost one request, never the agent
            log.exception("%s %s failed", request.method, request.path)
            return text_response(500, f"devconsul internal error: {exc}")

    # ----- helpers ---------------------------------------------------------------------------------------------

    def _json(self, request: web.Request, data: object, *, index: int | None = None) -> web.Response:
        indent = 4 if "pretty" in request.query else None
        headers = {}
        if index is not None:
            headers = {"X-Consul-Index": str(max(index, 1)), "X-Consul-KnownLeader": "true",
                       "X-Consul-LastContact": "0", "X-Consul-Effective-Consistency": "leader"}
        body = json.dumps(data, indent=indent) if indent else json.dumps(data, separators=(",", ":"))
        return web.Response(text=body, content_type="application/json", headers=headers)

    async def _blocking(self, request: web.Request, topic: str, read: Callable[[], tuple[int, T]]) -> tuple[int, T]:
        """Answer at once without `index`; otherwise wait until the read's index passes it, or until `wait`."""
        min_index, wait_s = parse_blocking(request.query)
        loop = asyncio.get_running_loop()
        # Consul adds up to wait/16 of jitter so that many watchers do not wake together.
        deadline = loop.time() + wait_s + random.uniform(0, wait_s / 16)
        while True:
            # The event is taken before reading, so a change in between is not missed.
            changed = self.notifier.watch(topic) if min_index else None
            index, result = read()
            remaining = deadline - loop.time()
            # An index ahead of the whole agent's can only come from before a restart of this dev agent: answer
            # at once so that watchers resynchronise instead of waiting out `wait` on a state they cannot know.
            if (changed is None or index > min_index or min_index > self.catalog.clock.value or remaining <= 0
                    or self.notifier.closed):
                return index, result
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return read()

    # ----- agent -----------------------------------------------------------------------------------------------

    async def register_service(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """PUT /v1/agent/service/register"""
        definition = decode_service(decode_json(await request.read()))
        replace = parse_bool(request.query["replace-existing-checks"], "replace-existing-checks") \
            if "replace-existing-checks" in request.query else False
        self.commit(self.catalog.register_service(definition, replace_existing_checks=replace, now_s=self.clock()))
        log.info("registered service %s (%s) with %d check(s)", definition.id, definition.name, len(definition.checks))
        return web.Response()

    async def deregister_service(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """PUT /v1/agent/service/deregister/:service_id"""
        if not groups[0]:
            raise BadRequest("Missing service ID")
        self.commit(self.catalog.deregister_service(groups[0]))
        log.info("deregistered service %s", groups[0])
        return web.Response()

    async def service_maintenance(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """PUT /v1/agent/service/maintenance/:service_id?enable=true|false&reason="""
        if not groups[0]:
            raise BadRequest("Missing service ID")
        raw = request.query.get("enable")
        if raw is None or raw == "":
            raise BadRequest("Missing value for enable")
        if raw not in _TRUE | _FALSE:
            raise BadRequest(f'Invalid value for enable: "{raw}"')
        self.commit(self.catalog.set_maintenance(groups[0], enable=raw in _TRUE,
                                                 reason=request.query.get("reason", ""), now_s=self.clock()))
        return web.Response()

    async def agent_service(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/agent/service/:service_id"""
        record = self.catalog.service(groups[0])
        if record is None:
            raise NotFound(f"unknown service ID: {groups[0]}")
        body = agent_service_json(record, self.catalog.node)
        response = self._json(request, body)
        response.headers["X-Consul-ContentHash"] = body["ContentHash"]
        return response

    async def agent_services(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/agent/services"""
        node = self.catalog.node
        return self._json(request, {s.definition.id: agent_service_json(s, node)
                                    for s in self.catalog.local_services()})

    async def agent_checks(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/agent/checks"""
        node = self.catalog.node
        return self._json(request, {c.check_id: check_json(c, node, with_indexes=False)
                                    for c in self.catalog.local_checks()})

    async def check_ttl(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """PUT /v1/agent/check/pass|warn|fail/:check_id?note="""
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[groups[0]]
        self.commit(self.catalog.update_ttl(groups[1], status, request.query.get("note", ""), now_s=self.clock()))
        return web.Response()

    async def check_update(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """PUT /v1/agent/check/update/:check_id with {"Status": ..., "Output": ...}"""
        raw = decode_json(await request.read())
        if not isinstance(raw, dict):
            raise BadRequest("Request decode failed: json: cannot unmarshal into Go value of type "
                             "agent.checkUpdate")
        fields = {k.lower(): v for k, v in raw.items()}
        status, output = fields.get("status", ""), fields.get("output", "")
        if not isinstance(status, str) or not isinstance(output, str):
            raise BadRequest("Request decode failed: json: Status and Output must be strings")
        if status not in STATUSES:
            raise BadRequest(f"Invalid check status: '{status}'")
        self.commit(self.catalog.update_ttl(groups[0], status, output, now_s=self.clock()))
        return web.Response()

    def _member(self) -> dict[str, Any]:
        node = self.catalog.node
        return {"Name": node.name, "Addr": node.address, "Port": 8301,
                "Tags": {"dc": node.datacenter, "role": "consul", "id": node.node_id, "build": VERSION,
                         "port": "8300", "vsn": "2"},
                "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2,
                "DelegateMax": 5, "DelegateCur": 4}

    async def agent_self(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/agent/self (the fields clients read: Config and Member)"""
        node = self.catalog.node
        config = {"Datacenter": node.datacenter, "PrimaryDatacenter": node.datacenter, "NodeName": node.name,
                  "NodeID": node.node_id, "Revision": "devconsul", "Server": True, "Version": VERSION,
                  "BuildDate": "1970-01-01T00:00:00Z"}
        return self._json(request, {"Config": config, "DebugConfig": {}, "Coord": None, "Member": self._member(),
                                    "Stats": {}, "Meta": {"consul-network-segment": ""}, "xDS": None})

    async def agent_members(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/agent/members"""
        return self._json(request, [self._member()])

    # ----- health ----------------------------------------------------------------------------------------------

    async def health_service(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/health/service/:name?passing&tag=...&index=&wait="""
        name = groups[0]
        if not name:
            raise BadRequest("Missing service name")
        passing = parse_bool(request.query["passing"], "passing") if "passing" in request.query else False
        tags = request.query.getall("tag", [])
        node = self.catalog.node

        def read() -> tuple[int, list[dict[str, Any]]]:
            entries = self.catalog.health(name, tags, passing_only=passing)
            return self.catalog.service_index(name), [
                {"Node": node_json(node), "Service": health_service_json(service),
                 "Checks": [check_json(c, node) for c in checks]} for service, checks in entries]

        index, body = await self._blocking(request, service_topic(name), read)
        return self._json(request, body, index=index)

    async def health_checks(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/health/checks/:service"""
        name = groups[0]
        if not name:
            raise BadRequest("Missing service name")
        node = self.catalog.node

        def read() -> tuple[int, list[dict[str, Any]]]:
            checks = self.catalog.checks_of_name(name)
            return self.catalog.service_index(name), [check_json(c, node) for c in checks]

        index, body = await self._blocking(request, service_topic(name), read)
        return self._json(request, body, index=index)

    async def health_state(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/health/state/:state (any, passing, warning, critical)"""
        state = groups[0]
        if not state:
            raise BadRequest("Missing check state")
        if state not in HEALTH_STATES:
            raise BadRequest("Bad check state")
        node = self.catalog.node

        def read() -> tuple[int, list[dict[str, Any]]]:
            checks = self.catalog.checks_in_state(state)
            return self.catalog.checks_index, [check_json(c, node) for c in checks]

        index, body = await self._blocking(request, TOPIC_CHECKS, read)
        return self._json(request, body, index=index)

    # ----- catalog ---------------------------------------------------------------------------------------------

    async def catalog_services(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/catalog/services"""
        index, body = await self._blocking(
            request, TOPIC_SERVICES, lambda: (self.catalog.services_index, self.catalog.service_tags()))
        return self._json(request, body, index=index)

    async def catalog_service(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/catalog/service/:name?tag="""
        name = groups[0]
        if not name:
            raise BadRequest("Missing service name")
        tags = request.query.getall("tag", [])
        node = self.catalog.node

        def read() -> tuple[int, list[dict[str, Any]]]:
            return self.catalog.service_index(name), [
                catalog_service_json(s, node) for s in self.catalog.instances(name, tags)]

        index, body = await self._blocking(request, service_topic(name), read)
        return self._json(request, body, index=index)

    async def catalog_nodes(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/catalog/nodes"""
        index, body = await self._blocking(
            request, TOPIC_NODES, lambda: (self.catalog.nodes_index, [node_json(self.catalog.node)]))
        return self._json(request, body, index=index)

    async def catalog_datacenters(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/catalog/datacenters"""
        return self._json(request, [self.catalog.node.datacenter])

    async def status_leader(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/status/leader"""
        return self._json(request, LEADER)

    async def status_peers(self, request: web.Request, _: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/status/peers"""
        return self._json(request, [LEADER])

    # ----- kv --------------------------------------------------------------------------------------------------

    async def kv_get(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """GET /v1/kv/:key?recurse&keys&separator=&raw&index=&wait="""
        key, query = groups[0], request.query
        if "keys" in query:
            separator = query.get("separator", "")
            index, keys = await self._blocking(request, TOPIC_KV, lambda: self.kv.keys(key, separator))
            if not keys:
                return web.Response(status=404, headers={"X-Consul-Index": str(index)})
            return self._json(request, keys, index=index)
        if "recurse" in query:
            index, entries = await self._blocking(request, TOPIC_KV, lambda: self.kv.list_prefix(key))
            if not entries:
                return web.Response(status=404, headers={"X-Consul-Index": str(index)})
            return self._json(request, [kv_json(e) for e in entries], index=index)
        index, entry = await self._blocking(request, TOPIC_KV, lambda: self.kv.get(key))
        if entry is None:
            return web.Response(status=404, headers={"X-Consul-Index": str(index)})
        if "raw" in query:
            return web.Response(body=entry.value, content_type="application/octet-stream",
                                headers={"X-Consul-Index": str(index)})
        return self._json(request, [kv_json(entry)], index=index)

    async def kv_put(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """PUT /v1/kv/:key?cas=&flags= with the raw value as body"""
        if "acquire" in request.query or "release" in request.query:
            raise BadRequest("devconsul does not implement sessions (acquire/release)")
        flags = _uint_param(request.query, "flags") or 0
        done, changes = self.kv.put(groups[0], await request.read(), flags=flags,
                                    cas=_uint_param(request.query, "cas"))
        self.commit(changes)
        return self._json(request, done)

    async def kv_delete(self, request: web.Request, groups: tuple[str, ...]) -> web.StreamResponse:
        """DELETE /v1/kv/:key?recurse&cas="""
        done, changes = self.kv.delete(groups[0], recurse="recurse" in request.query,
                                       cas=_uint_param(request.query, "cas"))
        self.commit(changes)
        return self._json(request, done)
