"""SCG filters that need no proxy machinery of their own, and the ones wsgate refuses; pure.

- TokenRelay: SCG exchanges the logged-in user's OAuth2 session for an access token and sends it as
  `Authorization: Bearer`. wsgate holds no session: the bearer token the client sent is relayed unchanged, and a
  request without one goes on without one (SCG forwards a request without a logged-in user unchanged too).
- SaveSession: SCG saves the WebSession before forwarding; wsgate has no WebSession, so there is nothing to save.
- CacheRequestBody: SCG keeps the body as an exchange attribute for Java code to read; no filter here reads it.
  wsgate streams bodies, and Retry re-sends only requests without a body.
- FallbackHeaders: on the route a CircuitBreaker forwarded its fallback to, adds the failure as request headers.
- RequestHeaderToRequestUri: the request goes to the URL named in a request header instead of the route's uri.
- RemoveJsonAttributesResponseBody: drops attributes from a JSON response body (buffered: `gateway.proxy.buffered`).
- ModifyRequestBody / ModifyResponseBody: refused; SCG offers them only through Java code (a rewrite function).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import GatewayError
from gateway.model import Headers
from gateway.routing.factory import Definition, Shortcut, Unsupported, bind, get_bool, get_list, get_str
from gateway.routing.filters.base import PlanState, check_header_name, expand


@dataclass(frozen=True, slots=True)
class Passive:
    """A filter accepted for compatibility whose work has no counterpart here (see the module docstring)."""

    name: str
    shown: str = ""

    def apply(self, state: PlanState) -> None:
        return None

    def describe(self) -> str:
        return f"[{self.name}{' ' + self.shown if self.shown else ''}]"


@dataclass(frozen=True, slots=True)
class FallbackHeaders:
    """`FallbackHeaders`: on a fallback route, the CircuitBreaker's failure as request headers (SCG's names)."""

    type_header: str = "Execution-Exception-Type"
    message_header: str = "Execution-Exception-Message"
    root_type_header: str = "Root-Cause-Exception-Type"
    root_message_header: str = "Root-Cause-Exception-Message"

    name = "FallbackHeaders"

    def apply(self, state: PlanState) -> None:
        if state.failure is None:
            return
        kind, message = state.failure
        message = message.replace("\r", " ").replace("\n", " ")
        # The exception has no cause here, so it is its own root cause (as SCG's getRootCause).
        state.headers.extend(((self.type_header, kind), (self.message_header, message),
                              (self.root_type_header, kind), (self.root_message_header, message)))

    def describe(self) -> str:
        return "[FallbackHeaders]"


@dataclass(frozen=True, slots=True)
class RequestHeaderToRequestUri:
    """`RequestHeaderToRequestUri=X-New-Url`: send to the header's http(s) URL (path and query included)."""

    header: str

    name = "RequestHeaderToRequestUri"

    def apply(self, state: PlanState) -> None:
        value = state.request.header(self.header)
        if value:
            send_to_url(state, value)

    def describe(self) -> str:
        return f"[RequestHeaderToRequestUri name = '{self.header}']"


def send_to_url(state: PlanState, value: str) -> None:
    """Send the request to an absolute http(s) URL (its path and query too); an invalid one changes nothing."""
    try:
        url = urlsplit(value.strip())
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return  # SCG logs an invalid URL and keeps the route's uri
    if url.scheme not in ("http", "https") or not url.hostname or any(ch in value for ch in "\r\n\0 "):
        return
    state.request_url = f"{url.scheme}://{url.netloc}"
    state.path = url.path or "/"
    state.query = url.query


@dataclass(frozen=True, slots=True)
class SetRequestUri:
    """`SetRequestUri=template`: send to the URL the template gives (URI template variables expanded)."""

    template: str

    name = "SetRequestUri"

    def apply(self, state: PlanState) -> None:
        send_to_url(state, expand(self.template, state.variables, encode=True))

    def describe(self) -> str:
        return f"[SetRequestUri template = '{self.template}']"


def _remove(node: object, fields: frozenset[str], recursive: bool) -> None:
    if isinstance(node, dict):
        for name in fields & node.keys():
            del node[name]
    if recursive:
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            _remove(child, fields, True)


@dataclass(frozen=True, slots=True)
class JsonAttributesEdit:
    """Remove attributes from a JSON body (Jackson's compact output), other bodies unchanged."""

    fields: frozenset[str]
    recursive: bool
    optional = False

    def edit_body(self, status: int, headers: Headers, body: bytes) -> tuple[Headers, bytes]:
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "application/json" or not body:
            return headers, body
        try:
            document = json.loads(body)
        except ValueError:
            raise GatewayError("Failed to process JSON of response body.", status=500) from None
        _remove(document, self.fields, self.recursive)
        out = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return headers, out


@dataclass(frozen=True, slots=True)
class RemoveJsonAttributesResponseBody:
    """`RemoveJsonAttributesResponseBody=id, color[, true]` (the trailing flag: deleteRecursively)."""

    edit: JsonAttributesEdit

    name = "RemoveJsonAttributesResponseBody"

    def apply(self, state: PlanState) -> None:
        state.body_edits.append(self.edit)

    def describe(self) -> str:
        return f"[RemoveJsonAttributesResponseBody fieldList = {sorted(self.edit.fields)}, deleteRecursively = " \
               f"{str(self.edit.recursive).lower()}]"


def token_relay(definition: Definition) -> Passive:
    """Build TokenRelay (an optional client registration id, which has no meaning without an OAuth2 client)."""
    bind(definition, ("name",))
    return Passive("TokenRelay")


def save_session(definition: Definition) -> Passive:
    """Build SaveSession (no arguments; a no-op: no WebSession here)."""
    bind(definition, ())
    return Passive("SaveSession")


def cache_request_body(definition: Definition) -> Passive:
    """Build CacheRequestBody (bodyClass, e.g. java.lang.String; accepted, nothing reads the cached body)."""
    args = bind(definition, ("bodyClass",))
    return Passive("CacheRequestBody", f"Body class = {get_str(args, 'bodyClass', default='')}")


def fallback_headers(definition: Definition) -> FallbackHeaders:
    """Build FallbackHeaders (the four header names may be changed)."""
    names = ("executionExceptionTypeHeaderName", "executionExceptionMessageHeaderName",
             "rootCauseExceptionTypeHeaderName", "rootCauseExceptionMessageHeaderName")
    args = bind(definition, ("name", *names))
    defaults = FallbackHeaders()
    values = [check_header_name(get_str(args, n, default=d), n)
              for n, d in zip(names, (defaults.type_header, defaults.message_header, defaults.root_type_header,
                                      defaults.root_message_header), strict=True)]
    return FallbackHeaders(*values)


def set_request_uri(definition: Definition) -> SetRequestUri:
    """Build SetRequestUri (template)."""
    return SetRequestUri(get_str(bind(definition, ("template",)), "template"))


def refused(reason: str) -> Callable[[Definition], Passive]:
    """A factory that refuses its filter with `reason` (a filter SCG 4.x does not have, or needs Java or gRPC)."""

    def build(definition: Definition) -> Passive:
        raise Unsupported(f"{definition.name} is refused: {reason}")

    return build


def request_header_to_request_uri(definition: Definition) -> RequestHeaderToRequestUri:
    """Build RequestHeaderToRequestUri (name)."""
    return RequestHeaderToRequestUri(check_header_name(get_str(bind(definition, ("name",)), "name")))


def remove_json_attributes_response_body(definition: Definition) -> RemoveJsonAttributesResponseBody:
    """Build RemoveJsonAttributesResponseBody (fieldList, deleteRecursively)."""
    args = bind(definition, ("fieldList", "deleteRecursively"), Shortcut.GATHER_LIST_TAIL_FLAG)
    fields = frozenset(get_list(args, "fieldList"))
    return RemoveJsonAttributesResponseBody(JsonAttributesEdit(fields, get_bool(args, "deleteRecursively",
                                                                                default=False)))


JAVA_ONLY = refused("Spring Cloud Gateway only offers it through Java code (a RewriteFunction bean), not in "
                    "configuration; write a wsgate filter plugin instead")

