"""Service and check definitions decoded from Consul's JSON register bodies (pure).

Consul decodes with Go's encoding/json (field names match case-insensitively) plus snake_case aliases such as
`deregister_critical_service_after`; durations are Go strings ("10s") or integer nanoseconds. Errors read like Go's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from devconsul.durations import parse_duration_ns
from devconsul.errors import BadRequest

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
# Check kinds Consul knows but this agent does not run; registering one is refused rather than silently ignored.
_UNSUPPORTED_KINDS = ("Args", "ScriptArgs", "Script", "TCP", "UDP", "GRPC", "H2PING", "DockerContainerID",
                      "AliasNode", "AliasService", "OSService")


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """One check of a service: an HTTP probe run every interval, or a TTL the service must refresh."""

    check_id: str = ""
    name: str = ""
    notes: str = ""
    status: str = ""
    http: str = ""
    method: str = ""
    header: tuple[tuple[str, tuple[str, ...]], ...] = ()
    body: str = ""
    tls_skip_verify: bool = False
    interval_ns: int = 0
    timeout_ns: int = 0
    ttl_ns: int = 0
    deregister_after_ns: int = 0

    def __post_init__(self) -> None:
        if self.status and self.status not in STATUSES:
            raise BadRequest("Status for checks must 'passing', 'warning', 'critical'")
        if self.http and self.ttl_ns:
            raise BadRequest("Invalid check: HTTP and TTL are exclusive")
        if self.http and self.interval_ns <= 0:
            raise BadRequest("Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP or UDP checks")
        if not self.http and self.ttl_ns <= 0:
            raise BadRequest("Invalid check: Must provide TTL or Script/DockerContainerID/HTTP/TCP/UDP/H2PING/GRPC/"
                             "AliasNode/AliasService and Interval")
        if min(self.interval_ns, self.timeout_ns, self.deregister_after_ns) < 0:
            raise BadRequest("Invalid check: durations must not be negative")

    @property
    def kind(self) -> str:
        """Consul's check Type: "http" or "ttl"."""
        return "http" if self.http else "ttl"


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """A service instance as registered with the agent."""

    name: str
    service_id: str = ""
    address: str = ""
    port: int = 0
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    checks: tuple[CheckDefinition, ...] = ()
    enable_tag_override: bool = False
    weights: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if not self.name:
            raise BadRequest("Missing service name")
        if not 0 <= self.port <= 65535:
            raise BadRequest(f"Invalid service port: {self.port}")

    @property
    def id(self) -> str:
        """The service ID, which defaults to the name."""
        return self.service_id or self.name


class _Fields:
    """A JSON object read the way Go's encoding/json fills a struct: case-insensitive names, snake_case aliases."""

    def __init__(self, raw: object, struct: str) -> None:
        if not isinstance(raw, dict):
            raise BadRequest(f"Request decode failed: json: cannot unmarshal {_go_type(raw)} into Go value of type "
                             f"structs.{struct}")
        self.struct = struct
        self.values: dict[str, object] = {}
        for key, value in raw.items():
            self.values.setdefault(key.lower().replace("_", ""), value)

    def get(self, name: str) -> object:
        return self.values.get(name.lower())

    def _fail(self, name: str, raw: object, go_type: str) -> BadRequest:
        return BadRequest(f"Request decode failed: json: cannot unmarshal {_go_type(raw)} into Go struct field "
                          f"{self.struct}.{name} of type {go_type}")

    def string(self, name: str) -> str:
        raw = self.get(name)
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise self._fail(name, raw, "string")
        return raw

    def integer(self, name: str) -> int:
        raw = self.get(name)
        if raw is None:
            return 0
        if isinstance(raw, bool) or not isinstance(raw, int | float) or int(raw) != raw:
            raise self._fail(name, raw, "int")
        return int(raw)

    def boolean(self, name: str) -> bool:
        raw = self.get(name)
        if raw is None:
            return False
        if not isinstance(raw, bool):
            raise self._fail(name, raw, "bool")
        return raw

    def strings(self, name: str) -> tuple[str, ...]:
        raw = self.get(name)
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise self._fail(name, raw, "[]string")
        return tuple(raw)

    def string_map(self, name: str) -> tuple[tuple[str, str], ...]:
        raw = self.get(name)
        if raw is None:
            return ()
        if not isinstance(raw, dict) or not all(isinstance(value, str) for value in raw.values()):
            raise self._fail(name, raw, "map[string]string")
        return tuple(sorted(raw.items()))

    def duration_ns(self, name: str) -> int:
        raw = self.get(name)
        if raw is None or raw == "":
            return 0
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise BadRequest(f"Request decode failed: invalid duration for {name}: {json.dumps(raw)}")
        if isinstance(raw, int | float):
            return int(raw)  # Go's encoding of a Duration as a number is nanoseconds
        try:
            return parse_duration_ns(raw)
        except BadRequest as exc:
            raise BadRequest(f"Request decode failed: {exc.reason}") from exc


def _go_type(raw: object) -> str:
    if isinstance(raw, bool):
        return "bool"
    if isinstance(raw, int | float):
        return "number"
    if isinstance(raw, str):
        return "string"
    if isinstance(raw, list):
        return "array"
    if raw is None:
        return "null"
    return "object"


def decode_json(body: bytes) -> object:
    """Parse a request body as JSON, failing as Consul does ("Request decode failed: ...")."""
    if not body.strip():
        raise BadRequest("Request decode failed: EOF")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Request decode failed: {exc}") from exc


def decode_check(raw: object) -> CheckDefinition:
    """Build a CheckDefinition from one element of `Check`/`Checks`."""
    fields = _Fields(raw, "CheckType")
    for kind in _UNSUPPORTED_KINDS:
        if fields.get(kind):
            raise BadRequest(f"Invalid check: devconsul runs only HTTP and TTL checks, not {kind}")
    header_raw = fields.get("Header")
    header: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if header_raw is not None:
        if not isinstance(header_raw, dict) or not all(
                isinstance(values, list) and all(isinstance(v, str) for v in values) for values in header_raw.values()):
            raise fields._fail("Header", header_raw, "map[string][]string")
        header = tuple((key, tuple(values)) for key, values in sorted(header_raw.items()))
    return CheckDefinition(
        check_id=fields.string("CheckID") or fields.string("ID"),
        name=fields.string("Name"),
        notes=fields.string("Notes"),
        status=fields.string("Status"),
        http=fields.string("HTTP"),
        method=fields.string("Method"),
        header=header,
        body=fields.string("Body"),
        tls_skip_verify=fields.boolean("TLSSkipVerify"),
        interval_ns=fields.duration_ns("Interval"),
        timeout_ns=fields.duration_ns("Timeout"),
        ttl_ns=fields.duration_ns("TTL"),
        deregister_after_ns=fields.duration_ns("DeregisterCriticalServiceAfter"),
    )


def decode_service(raw: object) -> ServiceDefinition:
    """Build a ServiceDefinition from the body of PUT /v1/agent/service/register."""
    fields = _Fields(raw, "ServiceDefinition")
    checks: list[CheckDefinition] = []
    single = fields.get("Check")
    if single is not None and single != {}:
        checks.append(decode_check(single))
    many = fields.get("Checks")
    if many is not None:
        if not isinstance(many, list):
            raise fields._fail("Checks", many, "structs.CheckTypes")
        checks.extend(decode_check(item) for item in many if item)
    weights_raw = fields.get("Weights")
    weights = (1, 1)
    if weights_raw is not None:
        weight_fields = _Fields(weights_raw, "Weights")
        weights = (weight_fields.integer("Passing") or 1, weight_fields.integer("Warning"))
    return ServiceDefinition(
        name=fields.string("Name"),
        service_id=fields.string("ID"),
        address=fields.string("Address"),
        port=fields.integer("Port"),
        tags=fields.strings("Tags"),
        meta=fields.string_map("Meta"),
        checks=tuple(checks),
        enable_tag_override=fields.boolean("EnableTagOverride"),
        weights=weights,
    )
