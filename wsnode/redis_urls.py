"""What `--redis` names (pure): one server, a comma-separated shard list, or a Sentinel-watched master.

CONTRACT section 7. A Sentinel URL lists its sentinels with commas too
(`redis+sentinel://s1:26379,s2:26379/mymaster/0`), so a list item that has no scheme of its own continues the item
before it instead of starting a new shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
DEFAULT_SENTINEL_PORT = 26379


class RedisUrlError(ValueError):
    """A `--redis` value that names no Redis deployment; the message says which part is wrong."""


@dataclass(frozen=True)
class SentinelTarget:
    """A master that sentinels watch: where to ask, which master, and how to log in to it."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def split_redis_urls(value: str) -> tuple[str, ...]:
    """The shard URLs of `--redis`, in order; sentinel host lists stay inside their URL."""
    items: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if items and items[-1].startswith(SENTINEL_SCHEMES) and "/" not in _after_scheme(items[-1]) \
                and not item.startswith((*PLAIN_SCHEMES, *SENTINEL_SCHEMES)):
            items[-1] = f"{items[-1]},{item}"
            continue
        items.append(item)
    for item in items:
        if item.startswith(SENTINEL_SCHEMES):
            parse_sentinel_url(item)
        elif not item.startswith(PLAIN_SCHEMES) or len(item) <= len("unix://"):
            raise RedisUrlError(f"--redis takes redis://, rediss://, unix:// or redis+sentinel:// URLs separated by "
                                f"commas; {item!r} is not one (in {value!r})")
    seen: set[str] = set()
    for item in items:
        if item in seen:
            # Two shard indexes on one server would still work, but a typo here silently halves the capacity.
            raise RedisUrlError(f"--redis names {item!r} twice; each shard must be its own Redis")
        seen.add(item)
    return tuple(items)


def _after_scheme(url: str) -> str:
    return url.split("://", 1)[1]


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master>[/<db>]`."""
    tls = url.startswith("rediss+")
    rest = _after_scheme(url)
    hosts_part, _, path = rest.partition("/")
    username = password = None
    if "@" in hosts_part:
        credentials, _, hosts_part = hosts_part.rpartition("@")
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = tuple(_host_port(entry, url) for entry in hosts_part.split(","))
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise RedisUrlError(f"{url!r} names no master: redis+sentinel://host:26379[,host:26379]/<master>[/<db>]")
    if len(segments) > 2:
        raise RedisUrlError(f"{url!r}: after the master name only a database number may follow")
    db = 0
    if len(segments) == 2:
        if not (segments[1].isascii() and segments[1].isdigit()):
            raise RedisUrlError(f"{url!r}: the database must be a number, not {segments[1]!r}")
        db = int(segments[1])
    return SentinelTarget(sentinels=sentinels, master=unquote(segments[0]), db=db, username=username,
                          password=password, tls=tls)


def _host_port(entry: str, url: str) -> tuple[str, int]:
    entry = entry.strip()
    if entry.startswith("["):  # [::1]:26379
        host, _, tail = entry[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = entry.partition(":")
    if not host:
        raise RedisUrlError(f"{url!r}: a sentinel address has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"{url!r}: {port_text!r} is not a port")
    return host, int(port_text)
