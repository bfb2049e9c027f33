"""Query parameter filters with SCG's semantics: AddRequestParameter, RemoveRequestParameter,
RewriteRequestParameter; pure.

SCG decodes the query into parameters (percent escapes decoded, '+' kept as '+'), edits them and encodes every
name and value again with `UriUtils.encode` (only unreserved characters stay as they are); Remove and Rewrite do
the same here. AddRequestParameter appends `name=value` to the raw query as SCG does, encoding the new pair unless
the query already holds percent escapes (then SCG takes the text as encoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from gateway.routing.factory import Definition, bind, get_str
from gateway.routing.filters.base import PlanState, check_header_value, expand, without_controls

Param = tuple[str, str | None]


def parse_query(query: str) -> list[Param]:
    """`a=1&b&c=%20` -> [("a", "1"), ("b", None), ("c", " ")] (percent-decoded, '+' kept, as WebFlux)."""
    params: list[Param] = []
    for part in query.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        params.append((unquote(name), unquote(value) if eq else None))
    return params


def encode_query(params: list[Param]) -> str:
    """Parameters back to a query, every name and value encoded as SCG's `encodeQueryParams`."""
    return "&".join(quote(name, safe="") if value is None else f"{quote(name, safe='')}={quote(value, safe='')}"
                    for name, value in params)


@dataclass(frozen=True, slots=True)
class AddRequestParameter:
    """`AddRequestParameter=name, value`: append a parameter (URI template variables expanded in the value)."""

    param: str
    value: str

    name = "AddRequestParameter"

    def apply(self, state: PlanState) -> None:
        value = expand(self.value, state.variables)
        pair = f"{self.param}={value}"
        if "%" not in state.query and "%" not in pair:
            pair = f"{quote(self.param, safe='')}={quote(value, safe='')}"
        query = state.query
        if query and not query.endswith("&"):
            query += "&"
        state.query = without_controls(quote(query + pair, safe="&=%+;/?:@!$'()*,-._~"), "query parameter", "#")

    def describe(self) -> str:
        return f"[AddRequestParameter {self.param} = '{self.value}']"


@dataclass(frozen=True, slots=True)
class RemoveRequestParameter:
    """`RemoveRequestParameter=name`: drop every parameter with that (decoded) name."""

    param: str

    name = "RemoveRequestParameter"

    def apply(self, state: PlanState) -> None:
        params = parse_query(state.query)
        kept = [(n, v) for n, v in params if n != self.param]
        state.query = encode_query(kept)

    def describe(self) -> str:
        return f"[RemoveRequestParameter name = '{self.param}']"


@dataclass(frozen=True, slots=True)
class RewriteRequestParameter:
    """`RewriteRequestParameter=name, replacement`: every value of a present parameter becomes one replacement."""

    param: str
    replacement: str

    name = "RewriteRequestParameter"

    def apply(self, state: PlanState) -> None:
        params = parse_query(state.query)
        if not any(n == self.param for n, _ in params):
            return
        # SCG removes the name from its ordered map and adds it again: the parameter moves to the end.
        kept = [(n, v) for n, v in params if n != self.param]
        kept.append((self.param, self.replacement))
        state.query = encode_query(kept)

    def describe(self) -> str:
        return f"[RewriteRequestParameter {self.param} = '{self.replacement}']"


def add_request_parameter(definition: Definition) -> AddRequestParameter:
    """Build AddRequestParameter (name, value)."""
    args = bind(definition, ("name", "value"))
    name = check_header_value(get_str(args, "name"), "name")
    return AddRequestParameter(name, check_header_value(get_str(args, "value")))


def remove_request_parameter(definition: Definition) -> RemoveRequestParameter:
    """Build RemoveRequestParameter (name)."""
    return RemoveRequestParameter(get_str(bind(definition, ("name",)), "name"))


def rewrite_request_parameter(definition: Definition) -> RewriteRequestParameter:
    """Build RewriteRequestParameter (name, replacement)."""
    args = bind(definition, ("name", "replacement"))
    replacement = check_header_value(get_str(args, "replacement"), "replacement")
    return RewriteRequestParameter(get_str(args, "name"), replacement)
