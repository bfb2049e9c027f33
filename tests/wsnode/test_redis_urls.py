"""`--redis` values (CONTRACT section 7): shard lists, Sentinel URLs with their comma-separated sentinels."""

from __future__ import annotations

import pytest

from wsnode.redis_urls import RedisUrlError, SentinelTarget, parse_sentinel_url, split_redis_urls


@pytest.mark.parametrize(("value", "urls"), [
    ("redis://127.0.0.1:6379/0", ("redis://127.0.0.1:6379/0",)),
    ("redis://a:1/0, redis://b:2/0", ("redis://a:1/0", "redis://b:2/0")),
    ("redis+sentinel://s1:26379,s2:26379,s3/mymaster",
     ("redis+sentinel://s1:26379,s2:26379,s3/mymaster",)),
    ("redis+sentinel://s1,s2/m1,redis+sentinel://s3,s4/m2",
     ("redis+sentinel://s1,s2/m1", "redis+sentinel://s3,s4/m2")),
    ("redis://a:1/0,redis+sentinel://s1:1,s2:2/m/3", ("redis://a:1/0", "redis+sentinel://s1:1,s2:2/m/3")),
    ("unix:///run/redis.sock", ("unix:///run/redis.sock",)),
])
def test_split_keeps_sentinel_host_lists_inside_their_url(value: str, urls: tuple[str, ...]) -> None:
    assert split_redis_urls(value) == urls


@pytest.mark.parametrize(("value", "message"), [
    ("localhost:6379", "is not one"),
    ("redis://a:1/0,b:2", "'b:2' is not one"),
    ("redis+sentinel://s1,s2/m,s3", "'s3' is not one"),
    ("redis://a:1/0,redis://a:1/0", "twice"),
    ("redis+sentinel://s1:26379", "names no master"),
    ("redis+sentinel://s1:26379/m/x", "database must be a number"),
    ("redis+sentinel://s1:26379/m/0/9", "only a database number"),
    ("redis+sentinel://s1:http/m", "is not a port"),
    ("redis+sentinel://s1:²/m", "is not a port"),
    ("redis+sentinel://:1/m", "has no host"),
])
def test_bad_values_name_the_wrong_part(value: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        split_redis_urls(value)


@pytest.mark.parametrize(("url", "target"), [
    ("redis+sentinel://127.0.0.1:26379/mymaster",
     SentinelTarget(sentinels=(("127.0.0.1", 26379),), master="mymaster")),
    ("redis+sentinel://s1,s2:26380/mymaster/2",
     SentinelTarget(sentinels=(("s1", 26379), ("s2", 26380)), master="mymaster", db=2)),
    ("rediss+sentinel://app:p%40ss@[::1]:5000/m",
     SentinelTarget(sentinels=(("::1", 5000),), master="m", username="app", password="p@ss", tls=True)),
    ("redis+sentinel://:secret@s1/m", SentinelTarget(sentinels=(("s1", 26379),), master="m", password="secret")),
])
def test_sentinel_url_parts(url: str, target: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == target
