"""What the native lane is given to run RequestRateLimiter itself: the Redis it may speak to, and the command."""

from __future__ import annotations

import pytest

from gateway.model import RateLimit
from gateway.ratelimit.bucket import lane_script_call, resp_command
from gateway.ratelimit.redis import TOKEN_BUCKET_SHA, lane_address


@pytest.mark.parametrize(("url", "address"), [
    ("redis://127.0.0.1:6380/0", ("127.0.0.1", 6380)),
    ("redis://127.0.0.1", ("127.0.0.1", 6379)),
    ("redis://127.0.0.1:6379/", ("127.0.0.1", 6379)),
    ("redis://127.0.0.1:6379/1", None),  # SELECT
    ("redis://:secret@127.0.0.1:6379/0", None),  # AUTH
    ("redis://user:secret@127.0.0.1:6379/0", None),
    ("rediss://127.0.0.1:6379/0", None),  # TLS
    ("unix:///run/redis.sock", None),
    ("redis://localhost:6379/0", None),  # a host name: resolved by redis-py, not by the lane
    ("redis://[::1]:6379/0", None),
    ("redis://127.0.0.1:6379/0?socket_timeout=1", None),
])
def test_lane_speaks_to_plain_ipv4_redis_only(url: str, address: tuple[str, int] | None) -> None:
    assert lane_address(url) == address


def test_lane_script_call_is_evalsha_with_now_left_out() -> None:
    limit = RateLimit(replenish_rate=10, burst_capacity=20, requested_tokens=3)
    before, after = lane_script_call(TOKEN_BUCKET_SHA, ("k.tokens", "k.timestamp"), limit)
    now = b"$10\r\n1700000000\r\n"
    assert before + now + after == resp_command("EVALSHA", TOKEN_BUCKET_SHA, 2, "k.tokens", "k.timestamp", 10, 20,
                                                1700000000, 3)
    assert resp_command("GET", "x") == b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n"
