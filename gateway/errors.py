"""The gateway's exceptions: one root, each carrying the HTTP status a client is answered with.

    GatewayError (500)
    ├── ConfigError            routes.yaml refused: file, line and key (exit status 2 at start)
    ├── BadRequest (400)       invalid HTTP, or a rewrite that would escape its path
    ├── NoRoute (404)
    ├── RequestTimeout (408)   client too slow to send its head
    ├── HeadTooLarge (431)
    ├── RateLimited (429)
    ├── BadGateway (502)       an instance answered something that is not HTTP
    ├── NoInstance (503)       no healthy instance of a service, or every dial failed
    ├── Overloaded (503)       too many connections
    └── UpstreamTimeout (504)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's errors; `status` is the HTTP status to answer with."""

    status: int = 500

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ConfigError(GatewayError):
    """A routes.yaml that cannot be used; the message names the file, line and key."""

    def __init__(self, message: str, *, file: str = "", line: int | None = None, key: str = "") -> None:
        where = file
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.line = line
        self.key = key
        self.reason = message


class BadRequest(GatewayError):
    status = 400


class NoRoute(GatewayError):
    status = 404


class RequestTimeout(GatewayError):
    status = 408


class HeadTooLarge(GatewayError):
    status = 431


class RateLimited(GatewayError):
    status = 429


class BadGateway(GatewayError):
    status = 502


class NoInstance(GatewayError):
    """No instance could take the request; `service` names what was asked for."""

    status = 503

    def __init__(self, service: str, message: str = "") -> None:
        super().__init__(message or f"no instance available for service {service!r}")
        self.service = service


class Overloaded(GatewayError):
    status = 503


class UpstreamTimeout(GatewayError):
    status = 504
