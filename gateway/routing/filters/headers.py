"""Header filters with SCG's semantics: Add/Set/Remove Request/Response Header and PreserveHostHeader; pure.

Values may hold URI template variables (`{segment}`) from the Path or Host predicate, as in SCG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.model import HeaderOp
from gateway.routing.factory import Definition, Shortcut, SpecError, bind, get_bool, get_list, get_str, relaxed
from gateway.routing.filters.base import PlanState, check_header_name, check_header_value, expand, without_controls


def _expanded(value: str, state: PlanState) -> str:
    return without_controls(expand(value, state.variables), "header value")


@dataclass(frozen=True, slots=True)
class RequestHeaderFilter:
    """AddRequestHeader (append a value), SetRequestHeader (replace all values), RemoveRequestHeader."""

    op: str
    header: str
    value: str = ""

    @property
    def name(self) -> str:
        return f"{self.op.capitalize()}RequestHeader"

    def apply(self, state: PlanState) -> None:
        lname = self.header.lower()
        if self.op in ("set", "remove"):
            state.headers = [(k, v) for k, v in state.headers if k.lower() != lname]
        if self.op in ("add", "set"):
            state.headers.append((self.header, _expanded(self.value, state)))

    def describe(self) -> str:
        if self.op == "remove":
            return f"[{self.name} name = '{self.header}']"
        return f"[{self.name} {self.header} = '{self.value}']"


@dataclass(frozen=True, slots=True)
class ResponseHeaderFilter:
    """AddResponseHeader, SetResponseHeader, RemoveResponseHeader: recorded as HeaderOps for the proxy."""

    op: str
    header: str
    value: str = ""

    @property
    def name(self) -> str:
        return "AddResponseHeader" if self.op == "add-if-absent" else f"{self.op.capitalize()}ResponseHeader"

    def apply(self, state: PlanState) -> None:
        state.response_ops.append(HeaderOp(self.op, self.header, _expanded(self.value, state)))

    def describe(self) -> str:
        if self.op == "remove":
            return f"[{self.name} name = '{self.header}']"
        if self.op == "add-if-absent":
            return f"[{self.name} name = '{self.header}', value = '{self.value}', override = false]"
        return f"[{self.name} {self.header} = '{self.value}']"


@dataclass(frozen=True, slots=True)
class PreserveHostHeader:
    """`PreserveHostHeader`: send the client's Host upstream instead of the instance's address."""

    name = "PreserveHostHeader"

    def apply(self, state: PlanState) -> None:
        state.preserve_host = True

    def describe(self) -> str:
        return "[PreserveHostHeader]"


@dataclass(frozen=True, slots=True)
class MapRequestHeader:
    """`MapRequestHeader=fromHeader, toHeader`: add every value of fromHeader to toHeader (when present)."""

    from_header: str
    to_header: str

    name = "MapRequestHeader"

    def apply(self, state: PlanState) -> None:
        lname = self.from_header.lower()
        values = [v for k, v in state.headers if k.lower() == lname]
        state.headers.extend((self.to_header, v) for v in values)

    def describe(self) -> str:
        return f"[MapRequestHeader fromHeader = '{self.from_header}', toHeader = '{self.to_header}']"


@dataclass(frozen=True, slots=True)
class AddRequestHeadersIfNotPresent:
    """`AddRequestHeadersIfNotPresent=X-A:1, X-B:2`: add each header whose values are all missing or blank."""

    pairs: tuple[tuple[str, str], ...]

    name = "AddRequestHeadersIfNotPresent"

    def apply(self, state: PlanState) -> None:
        # SCG first groups the values by name, then checks the request as it came to this filter.
        grouped: dict[str, list[str]] = {}
        for header, value in self.pairs:
            grouped.setdefault(header, []).append(value)
        for header, values in grouped.items():
            lname = header.lower()
            if all(not v.strip() for k, v in state.headers if k.lower() == lname):
                state.headers.extend((header, _expanded(v, state)) for v in values)

    def describe(self) -> str:
        return "[AddRequestHeadersIfNotPresent " + ", ".join(f"{k} = '{v}'" for k, v in self.pairs) + "]"


@dataclass(frozen=True, slots=True)
class SetRequestHostHeader:
    """`SetRequestHostHeader=host`: replace Host (template variables expanded) and keep it (PreserveHostHeader)."""

    host: str

    name = "SetRequestHostHeader"

    def apply(self, state: PlanState) -> None:
        state.headers = [(k, v) for k, v in state.headers if k.lower() != "host"]
        state.headers.append(("Host", _expanded(self.host, state)))
        state.preserve_host = True

    def describe(self) -> str:
        return f"[SetRequestHostHeader {self.host}]"


def map_request_header(definition: Definition) -> MapRequestHeader:
    """Build MapRequestHeader (fromHeader, toHeader)."""
    args = bind(definition, ("fromHeader", "toHeader"))
    return MapRequestHeader(check_header_name(get_str(args, "fromHeader"), "fromHeader"),
                            check_header_name(get_str(args, "toHeader"), "toHeader"))


def add_request_headers_if_not_present(definition: Definition) -> AddRequestHeadersIfNotPresent:
    """Build AddRequestHeadersIfNotPresent (keyValues, each `name:value` as SCG's KeyValueConverter)."""
    pairs = []
    for item in get_list(bind(definition, ("keyValues",), Shortcut.GATHER_LIST), "keyValues"):
        parts = [part for part in item.split(":")]
        while parts and not parts[-1]:
            parts.pop()  # Java's split drops trailing empty strings
        if len(parts) != 2:
            raise SpecError(f"Invalid configuration, expected format is: 'key:value', received: {item}",
                            key="keyValues")
        pairs.append((check_header_name(parts[0], "keyValues"), check_header_value(parts[1], "keyValues")))
    return AddRequestHeadersIfNotPresent(tuple(pairs))


def set_request_host_header(definition: Definition) -> SetRequestHostHeader:
    """Build SetRequestHostHeader (host)."""
    return SetRequestHostHeader(check_header_value(get_str(bind(definition, ("host",)), "host"), "host"))


def add_response_header(definition: Definition) -> ResponseHeaderFilter:
    """Build AddResponseHeader (name, value, override=true; with false only a missing or blank header is added)."""
    args = bind(definition, ("name", "value", "override"))
    header = check_header_name(get_str(args, "name"))
    value = check_header_value(get_str(args, "value", default=""))
    override = get_bool(args, "override", default=True)
    return ResponseHeaderFilter("add" if override else "add-if-absent", header, value)


def _name_value(op: str, response: bool) -> Callable[[Definition], RequestHeaderFilter | ResponseHeaderFilter]:
    def build(definition: Definition) -> RequestHeaderFilter | ResponseHeaderFilter:
        # `values`: SCG Server MVC's name for the same argument (a list, sent as one comma-separated value).
        args = bind(definition, ("name", "value", "values"))
        header = check_header_name(get_str(args, "name"))
        if relaxed("values") in args:
            if relaxed("value") in args:
                raise SpecError(f"{definition.name} takes `value` or `values`, not both", key="values")
            value = check_header_value(", ".join(get_list(args, "values")))
        else:
            value = check_header_value(get_str(args, "value", default=""))
        return ResponseHeaderFilter(op, header, value) if response else RequestHeaderFilter(op, header, value)

    return build


def _name_only(response: bool) -> Callable[[Definition], RequestHeaderFilter | ResponseHeaderFilter]:
    def build(definition: Definition) -> RequestHeaderFilter | ResponseHeaderFilter:
        header = check_header_name(get_str(bind(definition, ("name",)), "name"))
        return ResponseHeaderFilter("remove", header) if response else RequestHeaderFilter("remove", header)

    return build


def preserve_host_header(definition: Definition) -> PreserveHostHeader:
    """Build PreserveHostHeader (it takes no arguments)."""
    bind(definition, ())
    return PreserveHostHeader()


add_request_header = _name_value("add", response=False)
set_request_header = _name_value("set", response=False)
remove_request_header = _name_only(response=False)
set_response_header = _name_value("set", response=True)
remove_response_header = _name_only(response=True)
