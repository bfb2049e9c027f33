"""Filters that change the response on its way back, with SCG's semantics: DedupeResponseHeader,
RewriteResponseHeader, RewriteLocationResponseHeader, SecureHeaders, SetStatus; pure.

Each records a `ResponseEdit` in the plan; the proxy applies the edits, in filter order, to the instance's
response head (or to an answer the gateway gives itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.model import Headers
from gateway.routing.factory import Definition, SpecError, bind, get_list, get_str, parse_status, relaxed
from gateway.routing.filters.base import PlanState, check_header_name, check_header_value, compile_rewrite

_STRATEGIES = ("RETAIN_FIRST", "RETAIN_LAST", "RETAIN_UNIQUE")


def _values(headers: Headers, lname: str) -> list[str]:
    return [v for k, v in headers if k.lower() == lname]


def _replace(headers: Headers, name: str, values: list[str]) -> Headers:
    """`headers` with every `name` line replaced by `values`, at the place of the first one."""
    lname = name.lower()
    out: list[tuple[str, str]] = []
    placed = False
    for key, value in headers:
        if key.lower() != lname:
            out.append((key, value))
        elif not placed:
            out.extend((key, v) for v in values)
            placed = True
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DedupeEdit:
    """Keep one value of each named header (RETAIN_FIRST, RETAIN_LAST) or each distinct value (RETAIN_UNIQUE)."""

    names: tuple[str, ...]
    strategy: str

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        for name in self.names:
            values = _values(headers, name.lower())
            if len(values) <= 1:
                continue
            if self.strategy == "RETAIN_FIRST":
                kept = values[:1]
            elif self.strategy == "RETAIN_LAST":
                kept = values[-1:]
            else:
                kept = list(dict.fromkeys(values))
            headers = _replace(headers, name, kept)
        return status, headers


@dataclass(frozen=True, slots=True)
class DedupeResponseHeader:
    """`DedupeResponseHeader=Name1 Name2, strategy` (names space-separated; RETAIN_FIRST by default)."""

    names: str
    strategy: str

    name = "DedupeResponseHeader"

    def apply(self, state: PlanState) -> None:
        state.response_ops.append(DedupeEdit(tuple(n.strip() for n in self.names.split(" ") if n.strip()),
                                             self.strategy))

    def describe(self) -> str:
        return f"[DedupeResponseHeader {self.names} = '{self.strategy}']"


@dataclass(frozen=True, slots=True)
class RegexEdit:
    """Java `replaceAll` on every value of one header."""

    header: str
    pattern: re.Pattern[str]
    template: str

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        values = _values(headers, self.header.lower())
        if not values:
            return status, headers
        rewritten = [self.pattern.sub(self.template, v) for v in values]
        if any(ch in v for v in rewritten for ch in "\r\n\0"):
            return status, headers  # never let a rewrite split a header
        return status, _replace(headers, self.header, rewritten)


@dataclass(frozen=True, slots=True)
class RewriteResponseHeader:
    """`RewriteResponseHeader=name, regexp, replacement` (Java regex; `$\\{g}` or `${g}` in the replacement)."""

    header: str
    regexp: str
    replacement: str
    edit: RegexEdit

    name = "RewriteResponseHeader"

    def apply(self, state: PlanState) -> None:
        state.response_ops.append(self.edit)

    def describe(self) -> str:
        return f"[RewriteResponseHeader name = '{self.header}', regexp = '{self.regexp}', " \
               f"replacement = '{self.replacement}']"


_VERSIONED_PATH = re.compile(r"^/v\d+/.*")


@dataclass(frozen=True, slots=True)
class LocationEdit:
    """Replace host[:port] (and a /vN prefix when stripping) of an absolute Location-like header."""

    header: str
    host: str
    strip: bool
    protocols: re.Pattern[str]

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        values = _values(headers, self.header.lower())
        if not values:
            return status, headers
        location = values[0]
        scheme_end = location.find("://")
        if scheme_end < 0 or not self.protocols.fullmatch(location[:scheme_end]):
            return status, headers
        rest = location[scheme_end + 3:]
        found = re.match(r"[^:/]+(?::\d+)?" + (r"(?:/v\d+)?" if self.strip else "") + r"(?=/)", rest)
        if found is None:
            return status, headers
        fixed = location[: scheme_end + 3] + self.host + rest[found.end():]
        return status, _replace(headers, self.header, [fixed])


@dataclass(frozen=True, slots=True)
class RewriteLocationResponseHeader:
    """`RewriteLocationResponseHeader=stripVersion, locationHeaderName, hostValue, protocols` (SCG's defaults:
    AS_IN_REQUEST, Location, the request's Host, `https?|ftps?`)."""

    strip_version: str
    header: str
    host_value: str | None
    protocols: str
    _protocols: re.Pattern[str]

    name = "RewriteLocationResponseHeader"

    def apply(self, state: PlanState) -> None:
        host = self.host_value if self.host_value is not None else state.request.header("host")
        if host is None:
            return
        strip = self.strip_version == "ALWAYS_STRIP" or (
            self.strip_version == "AS_IN_REQUEST" and not _VERSIONED_PATH.match(state.request.raw_path))
        state.response_ops.append(LocationEdit(self.header, host, strip, self._protocols))

    def describe(self) -> str:
        return f"[RewriteLocationResponseHeader stripVersion = '{self.strip_version}', locationHeaderName = " \
               f"'{self.header}', hostValue = '{self.host_value}', protocols = '{self.protocols}']"


# SCG's SecureHeadersProperties defaults; Permissions-Policy is opt-in (`enable`).
SECURE_HEADER_DEFAULTS: dict[str, str] = {
    "X-Xss-Protection": "1 ; mode=block",
    "Strict-Transport-Security": "max-age=631138519",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self' https:; font-src 'self' https: data:; img-src 'self' https: "
                               "data:; object-src 'none'; script-src https:; style-src 'self' https: "
                               "'unsafe-inline'",
    "X-Download-Options": "noopen",
    "X-Permitted-Cross-Domain-Policies": "none",
}
PERMISSIONS_POLICY_DEFAULT = (
    "accelerometer=(), ambient-light-sensor=(), autoplay=(), battery=(), camera=(), cross-origin-isolated=(), "
    "display-capture=(), document-domain=(), encrypted-media=(), execution-while-not-rendered=(), "
    "execution-while-out-of-viewport=(), fullscreen=(), geolocation=(), gyroscope=(), keyboard-map=(), "
    "magnetometer=(), microphone=(), midi=(), navigation-override=(), payment=(), picture-in-picture=(), "
    "publickey-credentials-get=(), screen-wake-lock=(), sync-xhr=(), usb=(), web-share=(), xr-spatial-tracking=()")
# Route arguments that set one header's value (SecureHeadersGatewayFilterFactory.Config).
_VALUE_ARGS = {
    "xssProtectionHeaderValue": "X-Xss-Protection",
    "strictTransportSecurityHeaderValue": "Strict-Transport-Security",
    "frameOptionsHeaderValue": "X-Frame-Options",
    "contentTypeOptionsHeaderValue": "X-Content-Type-Options",
    "referrerPolicyHeaderValue": "Referrer-Policy",
    "contentSecurityPolicyHeaderValue": "Content-Security-Policy",
    "downloadOptionsHeaderValue": "X-Download-Options",
    "permittedCrossDomainPoliciesHeaderValue": "X-Permitted-Cross-Domain-Policies",
    "permissionPolicyHeaderValue": "Permissions-Policy",
}


@dataclass(frozen=True, slots=True)
class AddMissingEdit:
    """Add each header the response does not already have."""

    headers: Headers

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        present = {k.lower() for k, _ in headers}
        return status, headers + tuple((k, v) for k, v in self.headers if k.lower() not in present)


@dataclass(frozen=True, slots=True)
class SecureHeaders:
    """`SecureHeaders`: SCG's security headers, unless the response has them; `disable`/`enable` per route."""

    edit: AddMissingEdit

    name = "SecureHeaders"

    def apply(self, state: PlanState) -> None:
        state.response_ops.append(self.edit)

    def describe(self) -> str:
        return "[SecureHeaders]"


@dataclass(frozen=True, slots=True)
class StatusEdit:
    """Replace the response status."""

    status: int

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        return self.status, headers


@dataclass(frozen=True, slots=True)
class SetStatus:
    """`SetStatus=401` or `SetStatus=UNAUTHORIZED`: the client gets this status whatever the instance answered."""

    status: str
    edit: StatusEdit

    name = "SetStatus"

    def apply(self, state: PlanState) -> None:
        state.response_ops.append(self.edit)

    def describe(self) -> str:
        return f"[SetStatus status = '{self.status}']"


def dedupe_response_header(definition: Definition) -> DedupeResponseHeader:
    """Build DedupeResponseHeader (name, strategy)."""
    args = bind(definition, ("name", "strategy"))
    names = get_str(args, "name")
    for one in names.split(" "):
        if one.strip():
            check_header_name(one.strip())
    strategy = get_str(args, "strategy", default="RETAIN_FIRST").strip().upper()
    if strategy not in _STRATEGIES:
        raise SpecError(f"strategy must be one of {', '.join(_STRATEGIES)}, not {strategy!r}", key="strategy")
    return DedupeResponseHeader(names, strategy)


def rewrite_response_header(definition: Definition) -> RewriteResponseHeader:
    """Build RewriteResponseHeader (name, regexp, replacement)."""
    args = bind(definition, ("name", "regexp", "replacement"))
    header = check_header_name(get_str(args, "name"))
    regexp = get_str(args, "regexp")
    replacement = get_str(args, "replacement", default="")
    pattern, template = compile_rewrite(regexp, replacement)
    return RewriteResponseHeader(header, regexp, replacement, RegexEdit(header, pattern, template))


def rewrite_location_response_header(definition: Definition) -> RewriteLocationResponseHeader:
    """Build RewriteLocationResponseHeader (stripVersion, locationHeaderName, hostValue, protocols)."""
    args = bind(definition, ("stripVersion", "locationHeaderName", "hostValue", "protocols"))
    strip = get_str(args, "stripVersion", default="AS_IN_REQUEST").strip().upper()
    if strip not in ("NEVER_STRIP", "AS_IN_REQUEST", "ALWAYS_STRIP"):
        raise SpecError(f"stripVersion must be NEVER_STRIP, AS_IN_REQUEST or ALWAYS_STRIP, not {strip!r}",
                        key="stripVersion")
    header = check_header_name(get_str(args, "locationHeaderName", default="Location"), "locationHeaderName")
    # SCG documents the shortcut `AS_IN_REQUEST, Location, ,`: an empty value means the default.
    host_value = check_header_value(get_str(args, "hostValue", default=""), "hostValue") or None
    protocols = get_str(args, "protocols", default="") or "https?|ftps?"
    try:
        compiled = re.compile(f"(?:{protocols})")
    except re.error as exc:
        raise SpecError(f"bad protocols regex: {exc}", key="protocols") from None
    return RewriteLocationResponseHeader(strip, header, host_value, protocols, compiled)


def secure_headers(definition: Definition) -> SecureHeaders:
    """Build SecureHeaders (disable, enable, permissionsPolicy and the `*HeaderValue` overrides)."""
    fields = ("disable", "enable", "permissionsPolicy", *_VALUE_ARGS)
    if any(key.startswith("_genkey_") for key, _ in definition.args):
        raise SpecError("SecureHeaders takes no shortcut arguments (use args: disable/enable)")
    args = bind(definition, fields)
    values = dict(SECURE_HEADER_DEFAULTS)
    values["Permissions-Policy"] = PERMISSIONS_POLICY_DEFAULT
    for arg, header in _VALUE_ARGS.items():
        if relaxed(arg) in args:
            values[header] = check_header_value(get_str(args, arg), arg)
    enabled = {name.lower() for name in SECURE_HEADER_DEFAULTS}
    enabled |= {name.lower() for name in get_list(args, "enable", required=False)}
    if relaxed("permissionsPolicy") in args:
        values["Permissions-Policy"] = check_header_value(get_str(args, "permissionsPolicy"), "permissionsPolicy")
    enabled -= {name.lower() for name in get_list(args, "disable", required=False)}
    return SecureHeaders(AddMissingEdit(tuple((k, v) for k, v in values.items() if k.lower() in enabled)))


def set_status(definition: Definition) -> SetStatus:
    """Build SetStatus (status: a number or an HttpStatus name)."""
    status = get_str(bind(definition, ("status",)), "status")
    return SetStatus(status, StatusEdit(parse_status(status)))
