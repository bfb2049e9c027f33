"""The wsnode exception tree; every error carries the HTTP status or WebSocket close code to answer with.

    WsnodeError
    ├── SettingsError      bad flags or environment (exit status 2)
    ├── AuthError          missing/bad/expired token (401) or origin not allowed (403)
    ├── FrameError         a bad client frame (an `error` envelope; the connection stays open)
    ├── PushError          a bad push request (400, naming the field)
    ├── WebSocketError     a refused upgrade (its HTTP status) or a protocol violation after it (its close code)
    └── BackendUnavailable Redis cannot be reached (503)
"""

from __future__ import annotations


class WsnodeError(Exception):
    """Root of every error wsnode raises on purpose."""

    status: int = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SettingsError(WsnodeError):
    """A flag or environment variable has a bad value."""

    status = 500


class AuthError(WsnodeError):
    """The handshake is refused: 401 for a token problem, 403 for an origin outside the allowed list."""

    def __init__(self, reason: str, *, status: int = 401) -> None:
        super().__init__(reason)
        self.status = status


class FrameError(WsnodeError):
    """A client frame the node cannot accept; answered with `{"type":"error","code":...}`."""

    status = 400

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class PushError(WsnodeError):
    """A push request with a bad field; answered 400 naming `field`."""

    status = 400

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class BackendUnavailable(WsnodeError):
    """Redis (or another backend) did not answer; answered 503, never a silent drop."""

    status = 503


class WebSocketError(WsnodeError):
    """The WebSocket layer refuses: before the 101 with `status` (400, 405, 426...), after it with `close_code`
    (1002 protocol error, 1007 bad UTF-8, 1009 too big), so the caller answers without a table of its own."""

    def __init__(self, reason: str, *, status: int = 400, close_code: int = 1002) -> None:
        super().__init__(reason)
        self.status = status
        self.close_code = close_code
