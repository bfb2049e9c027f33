"""A log filter that keeps secrets out of every log line of the node, whoever logs it (aiohttp, redis-py, ours).

Our own lines never include a token, a key or a query string; this is the second line of defence for the lines of
libraries (an aiohttp parser error quoting a request line, an exception quoting a header): configured keys and
secrets, anything shaped like a JWT, bearer credentials and query strings are replaced before a line is written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",]+")
_QUERY = re.compile(r"(/[^\s?'\"]*)\?[^\s'\"]+")
REDACTED = "<redacted>"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secrets, JWT-shaped strings, bearer credentials or query strings."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _QUERY.sub(lambda m: f"{m.group(1)}?{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and its traceback text) through `redact`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a key that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install(secrets: Iterable[str]) -> None:
    """Put the filter on every handler of the root logger (where every logger's lines end up)."""
    log_filter = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
