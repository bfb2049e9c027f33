"""Retry and CircuitBreaker as SCG runs them (reactor-extra's Retry/Repeat, Resilience4j's breaker); pure.

The proxy reports what happened to one attempt as a `Failure` (or a response status); these objects say whether
to try again, how long to wait first, and whether the breaker lets a call through. Java exception classes in a
configuration (`exceptions: java.io.IOException`) are matched against the classes SCG would have seen for each
failure (`FAILURE_CLASSES`), superclasses included, so the usual names work as they do in SCG.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

_IO = ("java.io.IOException", "java.lang.Exception", "java.lang.Throwable")


class Failure(StrEnum):
    """Why an attempt produced no response."""

    REFUSED = "refused"  # connect refused or reset
    CONNECT_TIMEOUT = "connect-timeout"
    RESPONSE_TIMEOUT = "response-timeout"
    CLOSED = "closed"  # the instance closed the connection without a (valid) answer


# The exception SCG would see for each failure, then its superclasses (what `isInstance` matches).
FAILURE_CLASSES: dict[Failure, tuple[str, ...]] = {
    Failure.REFUSED: ("io.netty.channel.AbstractChannel$AnnotatedConnectException", "java.net.ConnectException",
                      "java.net.SocketException", *_IO),
    Failure.CONNECT_TIMEOUT: ("io.netty.channel.ConnectTimeoutException", "java.net.ConnectException",
                              "java.net.SocketException", *_IO),
    # SCG maps a response timeout to a 504 ResponseStatusException whose cause is the TimeoutException.
    Failure.RESPONSE_TIMEOUT: ("java.util.concurrent.TimeoutException", "java.lang.Exception", "java.lang.Throwable",
                               "org.springframework.web.server.ResponseStatusException",
                               "java.lang.RuntimeException"),
    Failure.CLOSED: ("reactor.netty.http.client.PrematureCloseException", *_IO),
}

_SERIES = {"INFORMATIONAL": 1, "SUCCESSFUL": 2, "REDIRECTION": 3, "CLIENT_ERROR": 4, "SERVER_ERROR": 5}


def series_number(name: str) -> int:
    """HttpStatus.Series by name (SERVER_ERROR -> 5) or number; ValueError otherwise."""
    text = name.strip().upper()
    if text in _SERIES:
        return _SERIES[text]
    if text.isdigit() and 1 <= int(text) <= 5:
        return int(text)
    raise ValueError(f"unknown status series {name!r} (one of {', '.join(_SERIES)})")


def exception_matches(configured: str, failure: Failure) -> bool:
    """Whether a configured exception class (full or simple name) covers `failure`."""
    return any(configured in (cls, cls.rsplit(".", 1)[-1]) for cls in FAILURE_CLASSES[failure])


@dataclass(frozen=True, slots=True)
class Backoff:
    """reactor-extra's `Backoff.exponential(first, max, factor, basedOnPreviousValue)`; seconds."""

    first_s: float = 0.005
    max_s: float | None = None
    factor: int = 2
    based_on_previous: bool = True

    def delay_s(self, iteration: int, previous_s: float) -> float:
        """The wait before retry number `iteration` (1-based), given the previous wait (0 before the first)."""
        delay = previous_s * self.factor if self.based_on_previous else self.first_s * self.factor ** (iteration - 1)
        delay = max(delay, self.first_s)
        return min(delay, self.max_s) if self.max_s is not None else delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A Retry filter's settings with SCG's defaults (3 retries, SERVER_ERROR, GET, IOException/TimeoutException)."""

    retries: int = 3
    statuses: frozenset[int] = frozenset()
    series: frozenset[int] = frozenset({5})
    methods: frozenset[str] = frozenset({"GET"})
    exceptions: tuple[str, ...] = ("java.io.IOException", "java.util.concurrent.TimeoutException")
    backoff: Backoff | None = None
    jitter: float | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.retries <= 0:
            raise ValueError("retries must be greater than 0")
        if not (self.statuses or self.series or self.exceptions):
            raise ValueError("series, status and exceptions may not all be empty")
        if not self.methods:
            raise ValueError("methods may not be empty")

    def retry_status(self, method: str, status: int, iteration: int) -> bool:
        """Whether to try again after a response with `status` (the `iteration`-th attempt failed, 1-based)."""
        if iteration > self.retries or method not in self.methods:
            return False
        return status in self.statuses or status // 100 in self.series

    def retry_failure(self, method: str, failure: Failure, iteration: int) -> bool:
        """Whether to try again after `failure`."""
        if iteration > self.retries or method not in self.methods:
            return False
        return any(exception_matches(name, failure) for name in self.exceptions)

    def delay_s(self, iteration: int, previous_s: float) -> float:
        """How long to wait before retry `iteration`; 0 without a backoff."""
        return self.backoff.delay_s(iteration, previous_s) if self.backoff is not None else 0.0


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Resilience4j's circuit breaker and time limiter settings (its defaults, as Spring Cloud CircuitBreaker)."""

    failure_rate_threshold: float = 50.0
    sliding_window_size: int = 100
    minimum_number_of_calls: int = 100
    wait_duration_in_open_state_s: float = 60.0
    permitted_number_of_calls_in_half_open_state: int = 10
    timeout_s: float | None = 1.0  # TimeLimiter timeoutDuration; None: no limit

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate_threshold <= 100:
            raise ValueError("failureRateThreshold must be in (0, 100]")
        for name in ("sliding_window_size", "minimum_number_of_calls", "permitted_number_of_calls_in_half_open_state"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """A CircuitBreaker filter: its breaker's id (name, else the route id), fallback and failing statuses."""

    id: str
    fallback_path: str | None = None  # from `forward:/path`
    status_codes: frozenset[int] = frozenset()
    resume_without_error: bool = False


class BreakerState(StrEnum):
    """Resilience4j's states (the ones a count-based breaker uses)."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass
class CircuitBreaker:
    """One breaker: a count-based window of outcomes; OPEN rejects calls until the wait is over, then HALF_OPEN."""

    settings: BreakerSettings
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    _window: deque[bool] = field(default_factory=deque)  # True: the call failed
    _opened_at: float = 0.0
    _half_open_calls: int = 0

    def try_acquire(self) -> bool:
        """Whether a call may go through now (moving OPEN to HALF_OPEN once the wait is over)."""
        if self.state is BreakerState.OPEN:
            if self.clock() - self._opened_at < self.settings.wait_duration_in_open_state_s:
                return False
            self._transition(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._half_open_calls >= self.settings.permitted_number_of_calls_in_half_open_state:
                return False
            self._half_open_calls += 1
        return True

    def record(self, failed: bool) -> None:
        """Record the outcome of a call that `try_acquire` let through."""
        if self.state is BreakerState.OPEN:
            return
        window = self._window
        window.append(failed)
        size = (self.settings.permitted_number_of_calls_in_half_open_state if self.state is BreakerState.HALF_OPEN
                else self.settings.sliding_window_size)
        while len(window) > size:
            window.popleft()
        needed = size if self.state is BreakerState.HALF_OPEN else self.settings.minimum_number_of_calls
        if len(window) < min(needed, size):
            return
        rate = 100.0 * sum(window) / len(window)
        if rate >= self.settings.failure_rate_threshold:
            self._transition(BreakerState.OPEN)
        elif self.state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.CLOSED)

    def _transition(self, state: BreakerState) -> None:
        self.state = state
        self._window.clear()
        self._half_open_calls = 0
        if state is BreakerState.OPEN:
            self._opened_at = self.clock()
