"""bench.consul_load's request counting: the HTTP requests in what a client sent, whole or in pieces."""

from __future__ import annotations

import pytest

from bench.consul_load import requests_in

WATCH = b"GET /v1/health/service/ws?index=7&wait=30s HTTP/1.1\r\nHost: a\r\n\r\n"
PUT = b"PUT /v1/agent/check/pass/c1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize(("data", "paths", "left"), [
    (WATCH, ["GET /v1/health/service/ws"], b""),
    (WATCH + PUT, ["GET /v1/health/service/ws", "PUT /v1/agent/check/pass/c1"], b""),
    (WATCH[:20], [], WATCH[:20]),  # an unfinished head waits for the rest
    (PUT[:-2], [], PUT[:-2]),  # so does an unfinished body
    (WATCH + WATCH[:10], ["GET /v1/health/service/ws"], WATCH[:10]),
])
def test_requests_in_counts_whole_requests_only(data: bytes, paths: list[str], left: bytes) -> None:
    buffer = bytearray(data)
    assert requests_in(buffer) == paths
    assert bytes(buffer) == left


def test_requests_in_split_anywhere_counts_each_once() -> None:
    data = WATCH + PUT + WATCH
    for cut in range(1, len(data)):
        buffer = bytearray(data[:cut])
        found = requests_in(buffer)
        buffer += data[cut:]
        found += requests_in(buffer)
        assert len(found) == 3 and not buffer, cut
