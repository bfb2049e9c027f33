"""What the proxy does for the filters that act around a forward: local answers, Retry, CircuitBreaker, `forward:`.

`forward()` wraps `GatewayServer.forward` for one request. Each attempt runs with an `Attempt` in the context
variable `CURRENT_ATTEMPT`; the server consults it at the two points where an attempt can still be abandoned
without the client having seen anything: a dial that failed (`dial_failed`) and a response head that is about to
be passed on (`reject_status`, which makes the server close the instance's connection and raise
`RetryableStatus`). Both dial strategies of an upgrade (Python and the relay thread) go through those points, so
Retry and CircuitBreaker apply to WebSocket handshakes as long as no 101 was relayed.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from gateway.config.model import RouteSpec, parse_upstream
from gateway.errors import BadGateway, BadRequest, GatewayError, NoInstance, UpstreamTimeout
from gateway.model import ForwardPlan, Headers, LocalAnswer
from gateway.proxy.buffered import MAX_BUFFERED_BYTES, BodyReader, edited, read_body, too_large
from gateway.proxy.conn import Conn
from gateway.proxy.exchange import Exchange, Outcome, outcome_after
from gateway.proxy.headers import strip_hop_by_hop
from gateway.proxy.httpparse import (
    Framing,
    RequestHead,
    ResponseHead,
    keeps_alive_unread,
    request_framing,
    response_framing,
    serialize_head,
)
from gateway.routing.resilience import BreakerSettings, CircuitBreaker, Failure, RetryPolicy
from gateway.routing.table import apply_response_edits

if TYPE_CHECKING:
    from gateway.proxy.server import GatewayServer

MAX_FORWARD_HOPS = 8

# SCG's exception (class name, message) per failure, as FallbackHeaders shows them.
_FAILURE_TEXT = {
    Failure.REFUSED: ("io.netty.channel.AbstractChannel$AnnotatedConnectException", "Connection refused"),
    Failure.CONNECT_TIMEOUT: ("io.netty.channel.ConnectTimeoutException", "connection timed out"),
    Failure.RESPONSE_TIMEOUT: ("java.util.concurrent.TimeoutException", "Did not observe any item or terminal signal"),
    Failure.CLOSED: ("reactor.netty.http.client.PrematureCloseException",
                     "Connection prematurely closed BEFORE response"),
}
_STATUS_EXCEPTION = "org.springframework.cloud.gateway.filter.factory." \
                    "SpringCloudCircuitBreakerFilterFactory$CircuitBreakerStatusCodeException"
_NOT_PERMITTED = "io.github.resilience4j.circuitbreaker.CallNotPermittedException"


class ResumedWithoutError(GatewayError):
    """CircuitBreaker `resumeWithoutError`: a failure without fallback ends the exchange with an empty 200."""

    status = 200


class RetryableStatus(GatewayError):
    """An instance's response the attempt gave up before anything was sent (closed, never relayed)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"instance answered {status}", status=status)


@dataclass(slots=True)
class Attempt:
    """One try of a forward under Retry and/or CircuitBreaker settings."""

    method: str
    iteration: int
    retry: RetryPolicy | None
    breaker_codes: frozenset[int]
    breaker_fallback: bool
    time_limit_s: float | None
    retry_until: float | None = None  # Retry's `timeout`: no retry is started after this (monotonic) time
    failure: Failure | None = None
    status_failure: bool = False
    status_retry: bool = False  # reject_status gave the response up for Retry

    def may_retry(self) -> bool:
        """Whether Retry's overall `timeout` still allows another attempt."""
        return self.retry is not None and (self.retry_until is None or time.monotonic() < self.retry_until)

    def dial_failed(self, reason: str) -> None:
        """The server could not connect to an instance (`timeout` or `refused`)."""
        self.failure = Failure.CONNECT_TIMEOUT if reason == "timeout" else Failure.REFUSED

    def reject_status(self, status: int) -> bool:
        """Whether to drop a response with `status` (to retry, or to answer the breaker's fallback)."""
        in_breaker = status in self.breaker_codes
        self.status_failure = in_breaker
        self.status_retry = self.may_retry() and self.retry is not None and self.retry.retry_status(
            self.method, status, self.iteration)
        if self.status_retry:
            return True
        return in_breaker and self.breaker_fallback

    def response_timeout_s(self, configured: float | None) -> float | None:
        """The response timeout: the route's, shortened by the breaker's time limiter."""
        if self.time_limit_s is None:
            return configured
        return self.time_limit_s if configured is None else min(configured, self.time_limit_s)


CURRENT_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("wsgate_attempt", default=None)


def attempt_timeout(configured: float | None) -> float | None:
    """The response timeout for the current attempt (the route's, or the breaker's time limit if shorter)."""
    attempt = CURRENT_ATTEMPT.get()
    return attempt.response_timeout_s(configured) if attempt is not None else configured


def note_dial_failure(reason: str) -> None:
    """Tell the current attempt that a dial failed (`timeout` or `refused`)."""
    attempt = CURRENT_ATTEMPT.get()
    if attempt is not None:
        attempt.dial_failed(reason)


def check_response(upstream: Conn, status: int) -> None:
    """Before a response head is passed on: close it and raise RetryableStatus when the attempt gives it up."""
    attempt = CURRENT_ATTEMPT.get()
    if attempt is not None and attempt.reject_status(status):
        upstream.close()
        raise RetryableStatus(status)


Forwarder = Callable[[], Awaitable[Outcome]]
Redispatcher = Callable[[RequestHead, tuple[str, str] | None], Awaitable[Outcome]]


class Breakers:
    """The circuit breakers of one worker by id; settings per id (`resilience4j...instances.<id>`) or default."""

    def __init__(self, settings: dict[str, BreakerSettings] | None = None) -> None:
        self.settings = settings or {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._source: object = None

    def configure(self, settings: tuple[tuple[str, BreakerSettings], ...]) -> None:
        """Use the settings of the configuration in force (a reload keeps the breakers' states)."""
        if settings is self._source:
            return
        self._source = settings
        self.settings = dict(settings)
        for breaker_id, breaker in self._breakers.items():
            breaker.settings = self.settings.get(breaker_id) or self.settings.get("default") or BreakerSettings()

    def get(self, breaker_id: str) -> CircuitBreaker:
        """The breaker named `breaker_id`, created on first use."""
        breaker = self._breakers.get(breaker_id)
        if breaker is None:
            chosen = self.settings.get(breaker_id) or self.settings.get("default") or BreakerSettings()
            breaker = self._breakers[breaker_id] = CircuitBreaker(chosen)
        return breaker


def local_answer(answer: LocalAnswer, plan: ForwardPlan, *, keep_alive: bool,
                 head_request: bool = False) -> tuple[int, bytes]:
    """The bytes of a filter's own answer, after the response edits of the filters before it (no body for HEAD)."""
    status, headers = apply_response_edits(answer.status, answer.headers, plan.response_headers)
    # A cached answer carries the instance's framing headers: the length is the gateway's to say.
    framed = tuple((k, v) for k, v in strip_hop_by_hop(headers) if k.lower() not in ("content-length",
                                                                                      "transfer-encoding"))
    out: Headers = (*framed, ("Content-Length", str(len(answer.body))))
    if not keep_alive:
        out = (*out, ("Connection", "close"))
    return status, serialize_head(f"HTTP/1.1 {status} {reason(status)}", out) + (b"" if head_request else answer.body)


def needed(route: RouteSpec, plan: ForwardPlan) -> bool:
    """Whether the request needs `serve_policies` rather than a plain forward."""
    return bool(plan.answer or plan.retry or plan.breaker or plan.request_url) or route.uri.forward_path is not None


def edit_response(response: ResponseHead, headers: Headers, plan: ForwardPlan) -> tuple[ResponseHead, Headers]:
    """The instance's response head after the filters' response edits (SetStatus may change the status)."""
    status, headers = apply_response_edits(response.status, headers, plan.response_headers)
    if status != response.status:
        response = dataclasses.replace(response, status=status, reason=reason(status))
    return response, headers


async def relay_buffered(ex: Exchange, upstream: Conn, response: ResponseHead, headers: Headers) -> bool:
    """Answer with the instance's whole body after the filters' body edits (`buffered`); returns keep-alive."""
    conn, head, plan = ex.conn, ex.head, ex.plan
    framing, length = response_framing(head.method, response)
    reader = BodyReader(upstream, framing, length)
    keep = head.keep_alive and framing is not Framing.UNTIL_CLOSE
    try:
        raw = await read_body(reader)
        if raw is None:
            if not all(e.optional for e in plan.body_edits):
                raise too_large()
            # Too large to keep (a cache store): the body streams on as it came, framing untouched.
            out = strip_hop_by_hop(headers) if keep else (*strip_hop_by_hop(headers), ("Connection", "close"))
            conn.write(serialize_head(f"HTTP/1.1 {response.status} {response.reason}", out) + reader.overflow)
            while data := await reader.read():
                conn.write(data)
                await conn.drain()
            return keep
    finally:
        upstream.close()
    headers, body = edited(response.status, headers, reader.decode(raw), plan.body_edits)
    keep = head.keep_alive
    out = strip_hop_by_hop(headers) if keep else (*strip_hop_by_hop(headers), ("Connection", "close"))
    conn.write(serialize_head(f"HTTP/1.1 {response.status} {response.reason}", out) + body)
    await conn.drain()
    return keep


def reason(status: int) -> str:
    """The reason phrase of `status` ("" for one http.HTTPStatus does not know)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _failure_of(error: BaseException, attempt: Attempt) -> Failure | None:
    if isinstance(error, NoInstance):
        return attempt.failure  # None: no instance at all, which is not an I/O failure
    if isinstance(error, UpstreamTimeout):
        return Failure.RESPONSE_TIMEOUT
    if isinstance(error, BadGateway):
        return Failure.CLOSED
    return None


async def forward(ex: Exchange, breakers: Breakers, run: Forwarder, redispatch: Redispatcher, *,
                  body: bytes | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Outcome:
    """Run `run` (one forward) under the plan's Retry and CircuitBreaker.

    `body` is the request body kept for another attempt or the fallback (SCG caches it too); it is put back in
    front of the client connection's input for each. Without a kept body, a request with one is not retried.
    """
    head, route, plan, replay = ex.head, ex.route, ex.plan, ex.conn.unread
    has_body = request_framing(head)[0] is not Framing.NONE
    retry = plan.retry if body is not None or not has_body else None
    consumed = False  # whether the last attempt read the body off the client connection
    spec = plan.breaker
    breaker = breakers.get(spec.id or route.id) if spec is not None else None
    limit_s = breaker.settings.timeout_s if breaker is not None else None
    delay_s = 0.0
    iteration = 0
    retry_until = time.monotonic() + retry.timeout_s if retry is not None and retry.timeout_s else None
    while True:
        iteration += 1
        if breaker is not None and not breaker.try_acquire():
            assert spec is not None
            text = (_NOT_PERMITTED, f"CircuitBreaker '{spec.id or route.id}' is OPEN and does not permit "
                                    f"further calls")
            if spec.fallback_path is not None and _replayed(consumed, body, replay):
                return await _fallback(head, spec.fallback_path, text, redispatch)
            raise GatewayError("Upstream service is temporarily unavailable", status=503)
        attempt = Attempt(head.method, iteration, retry, spec.status_codes if spec else frozenset(),
                          bool(spec and spec.fallback_path), limit_s, retry_until)
        token = CURRENT_ATTEMPT.set(attempt)
        try:
            result = await run()
        except (RetryableStatus, NoInstance, UpstreamTimeout, BadGateway) as error:
            failure = None if isinstance(error, RetryableStatus) else _failure_of(error, attempt)
            if failure is None and not isinstance(error, RetryableStatus):
                raise
            if breaker is not None:
                breaker.record(failed=True)
            # Only a failed dial leaves the body unread: every other failure comes after it was sent.
            consumed = has_body and not isinstance(error, NoInstance)
            if retry is not None and (attempt.status_retry if failure is None else (
                    attempt.may_retry() and retry.retry_failure(head.method, failure, iteration))):
                delay_s = retry.delay_s(iteration, delay_s)
                if retry.jitter:
                    delay_s *= 1 + random.uniform(-retry.jitter, retry.jitter)
                if delay_s > 0:
                    await sleep(delay_s)
                consumed = not _replayed(consumed, body, replay)
                continue
            if spec is not None:
                text = _FAILURE_TEXT[failure] if failure is not None else (
                    _STATUS_EXCEPTION, f"{error.status} {reason(error.status).upper().replace(' ', '_')}")
                if spec.fallback_path is not None and _replayed(consumed, body, replay):
                    return await _fallback(head, spec.fallback_path, text, redispatch)
                if failure is Failure.RESPONSE_TIMEOUT:
                    raise UpstreamTimeout(text[1]) from None
                if spec.resume_without_error and failure is not None:
                    raise ResumedWithoutError(text[1]) from None
            raise
        finally:
            CURRENT_ATTEMPT.reset(token)
        if breaker is not None:
            breaker.record(failed=attempt.status_failure)
        return result


def _replayed(consumed: bool, body: bytes | None, replay: Callable[[bytes], None] | None) -> bool:
    """Make the body readable again if the last attempt read it; False when that is impossible (not kept)."""
    if not consumed:
        return True
    if body is None or replay is None:
        return False
    replay(body)
    return True


async def keep_body(ex: Exchange) -> tuple[bytes | None, RequestHead]:
    """Read a request body of at most MAX_BUFFERED_BYTES so that it can be sent again (left in the connection's
    input as well); (None, head) when it is larger. The head returned has no `Expect: 100-continue` left."""
    conn, head = ex.conn, ex.head
    framing, length = request_framing(head)
    if framing is Framing.NONE or (framing is Framing.LENGTH and length > MAX_BUFFERED_BYTES):
        return None, head
    if (head.header("expect") or "").lower() == "100-continue":
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = dataclasses.replace(head, headers=tuple((k, v) for k, v in head.headers if k.lower() != "expect"))
    reader = BodyReader(conn, framing, length, error=BadRequest)
    raw = await read_body(reader)
    conn.unread(raw if raw is not None else reader.overflow)
    return raw, head


async def _fallback(head: RequestHead, path: str, failure: tuple[str, str],
                    redispatch: Redispatcher) -> Outcome:
    """SCG's fallback: the request, with the fallback path (the query kept), dispatched again in the gateway."""
    query = head.query
    if "?" not in path and query:
        path = f"{path}?{query}"
    return await redispatch(dataclasses.replace(head, target=path), failure)


async def serve_policies(server: GatewayServer, ex: Exchange) -> Outcome:
    """Answer a request whose filters need more than a plain forward (see the module docstring)."""
    head, route, plan = ex.head, ex.route, ex.plan

    def answer(own: LocalAnswer) -> Outcome:
        keep = keeps_alive_unread(head)
        status, data = local_answer(own, plan, keep_alive=keep, head_request=head.method == "HEAD")
        server.accounting.answered(ex.view.remote_addr, head, status, route.id, ex.started)
        ex.conn.write(data)
        return outcome_after(keep)

    if plan.answer is not None:
        return answer(plan.answer)

    async def redispatch(new_head: RequestHead, failure: tuple[str, str] | None) -> Outcome:
        if ex.hops >= MAX_FORWARD_HOPS:
            raise GatewayError(f"more than {MAX_FORWARD_HOPS} forward: hops")
        token = CURRENT_ATTEMPT.set(None)  # the fallback is a request of its own, not another attempt
        try:
            return await server.handle(ex.conn, new_head, failure=failure, hops=ex.hops + 1)
        finally:
            CURRENT_ATTEMPT.reset(token)

    if route.uri.forward_path is not None:
        return await redispatch(dataclasses.replace(head, target=plan.target, headers=plan.headers), None)
    if plan.request_url is not None:
        ex = dataclasses.replace(ex, route=dataclasses.replace(route, uri=parse_upstream(plan.request_url)))
    if plan.breaker is not None:
        server.breakers.configure(server.state.config.breakers)
    body = None
    if plan.retry is not None or (plan.breaker is not None and plan.breaker.fallback_path is not None):
        body, kept_head = await keep_body(ex)
        ex = dataclasses.replace(ex, head=kept_head)
    attempt = ex

    async def run() -> Outcome:
        return await server.forward(attempt)

    try:
        return await forward(ex, server.breakers, run, redispatch, body=body)
    except ResumedWithoutError:
        return answer(LocalAnswer(200))
