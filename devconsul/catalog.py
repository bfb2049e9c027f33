"""The catalog of one dev node: services, checks and Consul's raft-like index (pure: no I/O, time passed in).

Every mutation returns `Changes`, the watch topics it touched, so the caller can wake blocking queries. As in Consul,
one operation advances the index once; a check whose output changes but whose status does not is updated in place
without advancing the index (Consul defers such output-only syncs by `check_update_interval`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from devconsul.definitions import CRITICAL, PASSING, CheckDefinition, ServiceDefinition
from devconsul.durations import NS_PER_S
from devconsul.errors import BadRequest, DevConsulError, NotFound

SERF_CHECK_ID = "serfHealth"
MAINTENANCE_PREFIX = "_service_maintenance:"
MAINTENANCE_DEFAULT_NOTES = ("Maintenance mode is enabled for this service, but no reason was provided. "
                             "This is a default message.")
TOPIC_SERVICES, TOPIC_CHECKS, TOPIC_NODES, TOPIC_KV = "services", "checks", "nodes", "kv"
HEALTH_STATES = ("any", "passing", "warning", "critical")


def service_topic(name: str) -> str:
    """The watch topic of everything about the service called `name`."""
    return f"service:{name}"


@dataclass(frozen=True, slots=True)
class Changes:
    """The watch topics one mutation touched; empty when nothing observable changed."""

    topics: frozenset[str] = frozenset()

    def __or__(self, other: Changes) -> Changes:
        return Changes(self.topics | other.topics)

    def __bool__(self) -> bool:
        return bool(self.topics)


class IndexClock:
    """The single, monotonically increasing index shared by the catalog and the KV store."""

    def __init__(self, start: int = 1) -> None:
        self.value = start

    def advance(self) -> int:
        """Move to and return the next index."""
        self.value += 1
        return self.value


@dataclass(frozen=True, slots=True)
class Node:
    """The one node this agent is."""

    name: str
    node_id: str
    address: str = "127.0.0.1"
    datacenter: str = "dc1"
    create_index: int = 1


@dataclass(slots=True)
class ServiceRecord:
    """A registered service instance."""

    definition: ServiceDefinition
    create_index: int
    modify_index: int
    system: bool = False  # the agent's own "consul" service: in the catalog, not in /v1/agent/services


@dataclass(slots=True)
class CheckRecord:
    """A check's current state."""

    check_id: str
    name: str
    status: str
    kind: str  # Consul's Type: "http", "ttl", "maintenance", or "" for serfHealth
    create_index: int
    modify_index: int
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    definition: CheckDefinition | None = None
    critical_since_s: float | None = None
    ttl_deadline_s: float | None = None
    last_ttl_output: str = ""


class Catalog:
    """Services and checks of the dev node, with per-table and per-service-name indexes for blocking queries."""

    def __init__(self, node: Node, clock: IndexClock) -> None:
        self.node = node
        self.clock = clock
        self._services: dict[str, ServiceRecord] = {}
        self._checks: dict[str, CheckRecord] = {}
        self._name_index: dict[str, int] = {}
        idx = clock.value
        self.nodes_index = self.services_index = self.checks_index = idx
        self._checks[SERF_CHECK_ID] = CheckRecord(
            check_id=SERF_CHECK_ID, name="Serf Health Status", status=PASSING, kind="", create_index=idx,
            modify_index=idx, output="Agent alive and reachable")
        consul = ServiceDefinition(name="consul", port=8300)
        self._services["consul"] = ServiceRecord(consul, idx, idx, system=True)
        self._name_index["consul"] = idx

    # ----- mutations -------------------------------------------------------------------------------------------

    def register_service(self, definition: ServiceDefinition, *, replace_existing_checks: bool,
                         now_s: float) -> Changes:
        """Add or replace a service and its checks (existing checks keep their status, as in Consul)."""
        sid = definition.id
        existing = self._services.get(sid)
        if existing is not None and existing.system:
            raise BadRequest(f'Service ID "{sid}" is reserved by the agent')
        idx = self.clock.advance()
        names = {definition.name}
        if existing is not None:
            names.add(existing.definition.name)
        self._services[sid] = ServiceRecord(definition, existing.create_index if existing else idx, idx)
        new_ids = [c.check_id or f"service:{sid}" + (f":{i + 1}" if len(definition.checks) > 1 else "")
                   for i, c in enumerate(definition.checks)]
        for record in list(self._checks.values()):
            if record.service_id != sid:
                continue
            if replace_existing_checks and record.kind != "maintenance" and record.check_id not in new_ids:
                del self._checks[record.check_id]
            else:
                record.service_name, record.service_tags = definition.name, definition.tags
        for check_id, check in zip(new_ids, definition.checks, strict=True):
            previous = self._checks.get(check_id)
            status = previous.status if previous else (check.status or CRITICAL)
            critical_since = (previous.critical_since_s if previous else None) if status == CRITICAL else None
            if status == CRITICAL and critical_since is None:
                critical_since = now_s
            self._checks[check_id] = CheckRecord(
                check_id=check_id, name=check.name or f"Service '{definition.name}' check", status=status,
                kind=check.kind, create_index=previous.create_index if previous else idx, modify_index=idx,
                notes=check.notes, output=previous.output if previous else "", service_id=sid,
                service_name=definition.name, service_tags=definition.tags, definition=check,
                critical_since_s=critical_since,
                ttl_deadline_s=now_s + check.ttl_ns / NS_PER_S if check.ttl_ns else None)
        self.services_index = self.checks_index = idx
        return self._touch(idx, names, TOPIC_SERVICES, TOPIC_CHECKS)

    def deregister_service(self, service_id: str) -> Changes:
        """Remove a service and every check of it."""
        record = self._require_service(service_id)
        idx = self.clock.advance()
        del self._services[service_id]
        for check_id in [c.check_id for c in self._checks.values() if c.service_id == service_id]:
            del self._checks[check_id]
        self.services_index = self.checks_index = idx
        return self._touch(idx, {record.definition.name}, TOPIC_SERVICES, TOPIC_CHECKS)

    def update_ttl(self, check_id: str, status: str, note: str, *, now_s: float) -> Changes:
        """A TTL check reported in (pass/warn/fail/update): set its status and output and restart its TTL."""
        record = self._checks.get(check_id)
        if record is None or check_id == SERF_CHECK_ID:
            raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
        if record.kind != "ttl" or record.definition is None:
            raise DevConsulError(f'CheckID "{check_id}" does not have associated TTL')
        record.ttl_deadline_s = now_s + record.definition.ttl_ns / NS_PER_S
        record.last_ttl_output = note
        return self._set_status(record, status, note, now_s=now_s)

    def record_http_result(self, check_id: str, definition: CheckDefinition, status: str, output: str, *,
                           now_s: float) -> Changes:
        """The result of one HTTP probe; ignored when the check was removed or redefined meanwhile."""
        record = self._checks.get(check_id)
        if record is None or record.definition != definition:
            return Changes()
        return self._set_status(record, status, output, now_s=now_s)

    def set_maintenance(self, service_id: str, *, enable: bool, reason: str, now_s: float) -> Changes:
        """Add or remove the critical `_service_maintenance:<id>` check."""
        service = self._require_service(service_id)
        check_id = MAINTENANCE_PREFIX + service_id
        present = check_id in self._checks
        if enable == present:
            return Changes()
        idx = self.clock.advance()
        if enable:
            definition = service.definition
            self._checks[check_id] = CheckRecord(
                check_id=check_id, name="Service Maintenance Mode", status=CRITICAL, kind="maintenance",
                create_index=idx, modify_index=idx, notes=reason or MAINTENANCE_DEFAULT_NOTES,
                service_id=service_id, service_name=definition.name, service_tags=definition.tags,
                critical_since_s=now_s)
        else:
            del self._checks[check_id]
        self.checks_index = idx
        return self._touch(idx, {service.definition.name}, TOPIC_CHECKS)

    def tick(self, now_s: float) -> Changes:
        """Expire TTL checks not refreshed in time and reap services critical past DeregisterCriticalServiceAfter."""
        changes = Changes()
        for record in list(self._checks.values()):
            if record.ttl_deadline_s is not None and record.ttl_deadline_s <= now_s:
                record.ttl_deadline_s = None
                output = "TTL expired"
                if record.last_ttl_output:
                    output += f" (last output before timeout follows): {record.last_ttl_output}"
                changes |= self._set_status(record, CRITICAL, output, now_s=now_s)
        for service_id in self._services_to_reap(now_s):
            changes |= self.deregister_service(service_id)
        return changes

    def next_deadline_s(self) -> float | None:
        """The earliest time at which `tick` has something to do, if any."""
        deadlines = [c.ttl_deadline_s for c in self._checks.values() if c.ttl_deadline_s is not None]
        deadlines += [reap_at for _, reap_at in self._reap_times()]
        return min(deadlines, default=None)

    # ----- queries ---------------------------------------------------------------------------------------------

    def local_services(self) -> list[ServiceRecord]:
        """Services registered through the agent API (not the agent's own "consul" service)."""
        return [s for s in self._services.values() if not s.system]

    def service(self, service_id: str) -> ServiceRecord | None:
        """One local service by ID."""
        record = self._services.get(service_id)
        return None if record is None or record.system else record

    def local_checks(self) -> list[CheckRecord]:
        """Checks registered through the agent API (serfHealth is a catalog-only node check)."""
        return [c for c in self._checks.values() if c.check_id != SERF_CHECK_ID]

    def check(self, check_id: str) -> CheckRecord | None:
        """One check by ID."""
        return self._checks.get(check_id)

    def service_index(self, name: str) -> int:
        """The index a blocking query on the service called `name` watches."""
        return max(self._name_index.get(name, self.services_index), 1)

    def instances(self, name: str, tags: Iterable[str] = ()) -> list[ServiceRecord]:
        """Instances of the service `name` carrying every tag in `tags` (case-insensitive, as Consul)."""
        wanted = {t.lower() for t in tags}
        found = [s for s in self._services.values() if s.definition.name == name
                 and wanted <= {t.lower() for t in s.definition.tags}]
        return sorted(found, key=lambda s: s.definition.id)

    def health(self, name: str, tags: Iterable[str] = (), *, passing_only: bool = False
               ) -> list[tuple[ServiceRecord, list[CheckRecord]]]:
        """Health entries: each instance with its checks and the node's; `passing_only` keeps all-passing ones."""
        entries = []
        for service in self.instances(name, tags):
            checks = [*self.service_checks(service.definition.id), self._checks[SERF_CHECK_ID]]
            if passing_only and any(c.status != PASSING for c in checks):
                continue
            entries.append((service, checks))
        return entries

    def service_checks(self, service_id: str) -> list[CheckRecord]:
        """The checks of one service instance, by check ID."""
        return sorted((c for c in self._checks.values() if c.service_id == service_id), key=lambda c: c.check_id)

    def checks_of_name(self, name: str) -> list[CheckRecord]:
        """Every check of every instance of the service `name`."""
        return [c for s in self.instances(name) for c in self.service_checks(s.definition.id)]

    def checks_in_state(self, state: str) -> list[CheckRecord]:
        """All checks in `state` ("any" for all)."""
        return sorted((c for c in self._checks.values() if state == "any" or c.status == state),
                      key=lambda c: (c.service_id, c.check_id))

    def service_tags(self) -> dict[str, list[str]]:
        """Every service name with the union of its instances' tags (the shape of /v1/catalog/services)."""
        result: dict[str, set[str]] = {}
        for service in self._services.values():
            result.setdefault(service.definition.name, set()).update(service.definition.tags)
        return {name: sorted(tags) for name, tags in sorted(result.items())}

    # ----- internals -------------------------------------------------------------------------------------------

    def _require_service(self, service_id: str) -> ServiceRecord:
        record = self._services.get(service_id)
        if record is None or record.system:
            raise NotFound(f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                           f"not the service name.")
        return record

    def _set_status(self, record: CheckRecord, status: str, output: str, *, now_s: float) -> Changes:
        if record.status == status:
            record.output = output
            return Changes()
        idx = self.clock.advance()
        record.status, record.output, record.modify_index = status, output, idx
        record.critical_since_s = now_s if status == CRITICAL else None
        self.checks_index = idx
        return self._touch(idx, {record.service_name} if record.service_name else set(), TOPIC_CHECKS)

    def _touch(self, idx: int, names: Iterable[str], *topics: str) -> Changes:
        touched = set(topics)
        for name in names:
            self._name_index[name] = idx
            touched.add(service_topic(name))
        return Changes(frozenset(touched))

    def _reap_times(self) -> list[tuple[str, float]]:
        return [(c.service_id, c.critical_since_s + c.definition.deregister_after_ns / NS_PER_S)
                for c in self._checks.values()
                if c.definition is not None and c.definition.deregister_after_ns > 0 and c.status == CRITICAL
                and c.critical_since_s is not None]

    def _services_to_reap(self, now_s: float) -> list[str]:
        return sorted({sid for sid, reap_at in self._reap_times() if reap_at <= now_s and sid in self._services})
