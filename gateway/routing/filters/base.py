"""What every gateway filter shares: the mutable plan being built and the `GatewayFilter` protocol; pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from gateway.config.javaregex import JavaRegexError, compile_java_regex, translate_replacement
from gateway.errors import BadRequest
from gateway.model import BodyEdit, LocalAnswer, RateLimit, RequestView, ResponseEdit
from gateway.routing.factory import SpecError
from gateway.routing.resilience import BreakerSpec, RetryPolicy

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TEMPLATE_VAR = re.compile(r"\{([^{}]+)\}")
_PATH_SAFE = "/!$&'()*+,;=:@-._~%"


@dataclass(slots=True)
class PlanState:
    """The request as the filters rewrite it, one filter after another (SCG's mutated exchange)."""

    request: RequestView
    path: str
    query: str
    headers: list[tuple[str, str]]
    variables: dict[str, str]
    preserve_host: bool = False
    response_ops: list[ResponseEdit] = field(default_factory=list)
    rate_limits: list[RateLimit] = field(default_factory=list)
    # A filter that answers itself (RedirectTo, RequestSize, ...) sets this; the filters after it do not run.
    answer: LocalAnswer | None = None
    body_edits: list[BodyEdit] = field(default_factory=list)
    retry: RetryPolicy | None = None
    breaker: BreakerSpec | None = None
    request_url: str | None = None
    # (exception type, message) when a CircuitBreaker forwarded here to its fallback, for FallbackHeaders.
    failure: tuple[str, str] | None = None


class GatewayFilter(Protocol):
    """One compiled filter: `apply` edits the plan; `describe` is SCG's actuator text without the order."""

    @property
    def name(self) -> str: ...

    def apply(self, state: PlanState) -> None: ...

    def describe(self) -> str: ...


def without_controls(text: str, what: str, extra: str = "") -> str:
    """`text`, or BadRequest when a rewrite at request time produced CR, LF or NUL (or one of `extra`) in it."""
    if any(ch in text for ch in "\r\n\0" + extra):
        raise BadRequest(f"a {what} would contain CR, LF, NUL{' or ' + repr(extra) if extra else ''}")
    return text


def compile_rewrite(regexp: str, replacement: str) -> tuple[re.Pattern[str], str]:
    """A Java regex and its `replaceAll` replacement (`$1`, `${name}`, SCG's `$\\{name}`) for `re.sub`."""
    try:
        pattern = compile_java_regex(regexp)
    except JavaRegexError as exc:
        raise SpecError(str(exc), key="regexp") from exc
    try:
        return pattern, translate_replacement(replacement, pattern)
    except JavaRegexError as exc:
        raise SpecError(str(exc), key="replacement") from exc


def check_header_name(name: str, key: str = "name") -> str:
    """A valid HTTP header name, or SpecError."""
    if not _TOKEN.fullmatch(name):
        raise SpecError(f"invalid header name {name!r}", key=key)
    return name


def check_header_value(value: str, key: str = "value") -> str:
    """A header value without CR, LF or NUL, or SpecError."""
    if any(ch in value for ch in "\r\n\0"):
        raise SpecError("header value contains CR, LF or NUL", key=key)
    return value


def expand(template: str, variables: dict[str, str], *, encode: bool = False) -> str:
    """Replace `{name}` with a URI template variable (percent-encoded for paths when `encode`).

    Unknown names stay as written, so a literal brace in a header value survives.
    """
    if "{" not in template:
        return template

    def one(found: re.Match[str]) -> str:
        value = variables.get(found.group(1))
        if value is None:
            return found.group(0)
        return quote(value, safe=_PATH_SAFE.replace("%", "")) if encode else value

    return _TEMPLATE_VAR.sub(one, template)
