"""Table tests of the log filter (pure): what never reaches a node's log line."""

from __future__ import annotations

import logging

import pytest

from wsnode.logsafe import RedactingFilter, redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(("line", "expected"), [
    ("GET /websocket?token=abc&since=1 200", "GET /websocket?<redacted> 200"),
    ("url http://node:8080/ws?access_token=x done", "url http://node:8080/ws?<redacted> done"),
    (f"bad token {JWT} refused", "bad token <redacted> refused"),
    ("Authorization: Bearer key-one", "Authorization: Bearer <redacted>"),
    ("b'Authorization: bearer key-one\\x01'", "b'Authorization: bearer <redacted>'"),
    ("basic dXNlcjpwYXNz", "basic <redacted>"),
    ("the key is s3cret-key inside", "the key is <redacted> inside"),
    ("why? nothing to hide", "why? nothing to hide"),
    ("session open session=ab12 user=bob since=17", "session open session=ab12 user=bob since=17"),
])
def test_redact_removes_tokens_keys_and_query_strings(line: str, expected: str) -> None:
    assert redact(line, ["s3cret-key"]) == expected


def test_the_filter_rewrites_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "refused %s with %s", (JWT, "api-key-1"), None)
    try:
        raise ValueError(f"header Authorization: Bearer api-key-1 on /ws?token={JWT}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter(["api-key-1"]).filter(record)
    assert record.getMessage() == "refused <redacted> with <redacted>"
    assert record.exc_text is not None
    assert "api-key-1" not in record.exc_text and JWT not in record.exc_text and "ValueError" in record.exc_text
