"""`Retry` and `CircuitBreaker` with SCG's arguments and defaults; pure. Each puts its policy in the plan; the
proxy (`gateway/proxy/policies.py`) runs the attempts, the backoff and the breaker (`gateway.routing.resilience`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.routing.factory import (
    GENKEY,
    Definition,
    SpecError,
    bind,
    get_bool,
    get_int,
    get_list,
    get_str,
    parse_status,
    relaxed,
)
from gateway.routing.factory import get_duration_s as _duration
from gateway.routing.filters.base import PlanState, expand
from gateway.routing.resilience import Backoff, BreakerSpec, RetryPolicy, series_number

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_RETRY_FIELDS = ("retries", "statuses", "methods", "backoff.firstBackoff", "backoff.maxBackoff", "backoff.factor",
                 "backoff.basedOnPreviousValue", "jitter.randomFactor", "timeout", "series", "exceptions")


@dataclass(frozen=True, slots=True)
class Retry:
    """`Retry=retries, statuses, methods, firstBackoff, maxBackoff, factor, basedOnPreviousValue` (SCG's order)."""

    policy: RetryPolicy

    name = "Retry"

    def apply(self, state: PlanState) -> None:
        state.retry = self.policy

    def describe(self) -> str:
        p = self.policy
        return (f"[Retry retries = {p.retries}, series = {sorted(p.series)}, statuses = {sorted(p.statuses)}, "
                f"methods = {sorted(p.methods)}, exceptions = {list(p.exceptions)}]")


def retry(definition: Definition) -> Retry:
    """Build Retry; every list accepts one value or several (`statuses: [BAD_GATEWAY, 503]`)."""
    args = bind(definition, _RETRY_FIELDS)
    defaults = RetryPolicy()
    statuses = frozenset(parse_status(s, field="statuses") for s in get_list(args, "statuses", required=False))
    series = defaults.series
    if relaxed("series") in args:
        try:
            series = frozenset(series_number(s) for s in get_list(args, "series", required=False))
        except ValueError as exc:
            raise SpecError(str(exc), key="series") from None
    methods = defaults.methods
    if relaxed("methods") in args:
        methods = frozenset(m.upper() for m in get_list(args, "methods"))
        unknown = methods - _METHODS
        if unknown:
            raise SpecError(f"unknown HTTP method(s) {', '.join(sorted(unknown))}", key="methods")
    exceptions = defaults.exceptions
    if relaxed("exceptions") in args:
        exceptions = get_list(args, "exceptions", required=False)
    backoff = None
    if any(relaxed(f) in args for f in _RETRY_FIELDS[3:7]):
        first = _duration(args, "backoff.firstBackoff", default=0.005)
        assert first is not None
        backoff = Backoff(first, _duration(args, "backoff.maxBackoff"), get_int(args, "backoff.factor", default=2),
                          get_bool(args, "backoff.basedOnPreviousValue", default=True))
    jitter = None
    if relaxed("jitter.randomFactor") in args:
        try:
            jitter = float(get_str(args, "jitter.randomFactor"))
        except ValueError:
            raise SpecError("jitter.randomFactor must be a number", key="jitter.randomFactor") from None
        if not 0 <= jitter <= 1:
            raise SpecError("jitter.randomFactor must be between 0 and 1", key="jitter.randomFactor")
    try:
        policy = RetryPolicy(get_int(args, "retries", default=3), statuses, series, methods, exceptions, backoff,
                             jitter, _duration(args, "timeout"))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return Retry(policy)


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """`CircuitBreaker=name` with args fallbackUri (`forward:/path`), statusCodes, resumeWithoutError."""

    spec: BreakerSpec

    name = "CircuitBreaker"

    def apply(self, state: PlanState) -> None:
        spec = self.spec
        if spec.fallback_path is not None and "{" in spec.fallback_path:
            spec = dataclasses.replace(spec, fallback_path=expand(spec.fallback_path, state.variables, encode=True))
        state.breaker = spec

    def describe(self) -> str:
        fallback = f"forward:{self.spec.fallback_path}" if self.spec.fallback_path else ""
        return f"[CircuitBreaker name = '{self.spec.id}', fallback = {fallback}]"


def circuit_breaker(definition: Definition) -> CircuitBreaker:
    """Build CircuitBreaker (name, fallbackUri, statusCodes, resumeWithoutError, routeId; SCG Server MVC's `id` and
    `fallbackPath` for the name and the forward path)."""
    if sum(1 for key, _ in definition.args if key.startswith(GENKEY)) > 1:
        # SCG's shortcut order is [name] alone: it binds the first value and drops the others without a word.
        raise SpecError("CircuitBreaker's shortcut form takes only its name (Spring Cloud Gateway drops any other "
                        "value); give fallbackUri and the rest under `args:`")
    args = bind(definition, ("name", "fallbackUri", "statusCodes", "resumeWithoutError", "routeId", "id",
                             "fallbackPath"))
    name = (get_str(args, "name", default="") or get_str(args, "id", default="")
            or get_str(args, "routeId", default=""))
    fallback_path = None
    if relaxed("fallbackPath") in args:
        fallback_path = get_str(args, "fallbackPath").strip()
        if not fallback_path.startswith("/"):
            raise SpecError(f"fallbackPath must be a path of the gateway's own routes, not {fallback_path!r}",
                            key="fallbackPath")
    if relaxed("fallbackUri") in args:
        uri = get_str(args, "fallbackUri").strip()
        scheme, _, path = uri.partition(":")
        if scheme != "forward" or not path.startswith("/"):
            raise SpecError(f"fallbackUri must be forward:/path (the gateway's own routes), not {uri!r}",
                            key="fallbackUri")
        fallback_path = path
    codes = frozenset(parse_status(s, field="statusCodes") for s in get_list(args, "statusCodes", required=False))
    return CircuitBreaker(BreakerSpec(name, fallback_path, codes, get_bool(args, "resumeWithoutError",
                                                                           default=False)))
