"""Header filters with SCG's semantics: Add/Set/Remove Request/Response Header and PreserveHostHeader; pure.

Values may hold URI template variables (`{segment}`) from the Path or Host predicate, as in SCG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import BadRequest
from gateway.factory import Definition, bind, get_str
from gateway.filters.base import PlanState, check_header_name, check_header_value, expand
from gateway.model import HeaderOp


def _expanded(value: str, state: PlanState) -> str:
    result = expand(value, state.variables)
    if any(ch in result for ch in "\r\n\0"):
        raise BadRequest("a header value would contain CR, LF or NUL")
    return result


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
        return f"{self.op.capitalize()}ResponseHeader"

    def apply(self, state: PlanState) -> None:
        state.response_ops.append(HeaderOp(self.op, self.header, _expanded(self.value, state)))

    def describe(self) -> str:
        if self.op == "remove":
            return f"[{self.name} name = '{self.header}']"
        return f"[{self.name} {self.header} = '{self.value}']"


@dataclass(frozen=True, slots=True)
class PreserveHostHeader:
    """`PreserveHostHeader`: send the client's Host upstream instead of the instance's address."""

    name = "PreserveHostHeader"

    def apply(self, state: PlanState) -> None:
        state.preserve_host = True

    def describe(self) -> str:
        return "[PreserveHostHeader]"


def _name_value(op: str, response: bool) -> Callable[[Definition], RequestHeaderFilter | ResponseHeaderFilter]:
    def build(definition: Definition) -> RequestHeaderFilter | ResponseHeaderFilter:
        args = bind(definition, ("name", "value"))
        header = check_header_name(get_str(args, "name"))
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
add_response_header = _name_value("add", response=True)
set_response_header = _name_value("set", response=True)
remove_response_header = _name_only(response=True)
