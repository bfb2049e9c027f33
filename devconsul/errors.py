"""The dev agent's one exception root; every error carries the HTTP status Consul would answer with.

    DevConsulError            (status, reason)
    ├── BadRequest            400: undecodable body, invalid parameter or definition
    ├── NotFound              404: unknown service, check or path
    ├── PayloadTooLarge       413: KV value over Consul's limit
    └── MethodNotAllowed      405: known path, other method
"""

from __future__ import annotations


class DevConsulError(Exception):
    """An error answered as `status` with the plain-text `reason`, as Consul does."""

    status = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(DevConsulError):
    """The request cannot be decoded or is invalid (400)."""

    status = 400


class NotFound(DevConsulError):
    """The service, check or path does not exist (404)."""

    status = 404


class PayloadTooLarge(DevConsulError):
    """The body is larger than Consul accepts (413)."""

    status = 413


class MethodNotAllowed(DevConsulError):
    """The path exists but not for this method (405); `allowed` feeds the Allow header."""

    status = 405

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"method {method} not allowed")
        self.allowed = allowed
