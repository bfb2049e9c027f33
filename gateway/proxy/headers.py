"""Header handling on the way through: hop-by-hop removal and X-Forwarded-* (pure).

Bodies are relayed with their framing as received, so `Transfer-Encoding` passes through unchanged (the proxy
never re-chunks). For a WebSocket upgrade `Upgrade` and `Connection: Upgrade` are kept; every other header named
in `Connection` goes, as RFC 9110 section 7.6.1 asks. X-Forwarded-* values are appended to what the client sent,
like Spring Cloud Gateway's XForwardedHeadersFilter with its default `append` settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.model import Headers

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_DROP = HOP_BY_HOP - {"transfer-encoding"}
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
_FORWARDED_NAMES = frozenset({
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix",
})


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lower-cased options named in every `Connection` header."""
    return frozenset(
        token.strip().lower()
        for key, value in headers if key.lower() == "connection"
        for token in value.split(",") if token.strip()
    )


def strip_hop_by_hop(headers: Headers, *, upgrade: bool = False) -> Headers:
    """`headers` without hop-by-hop ones; an upgrade keeps `Upgrade` and gets `Connection: Upgrade`."""
    named = connection_tokens(headers)
    drop = (HOP_BY_HOP | named) - {"transfer-encoding"}
    kept = tuple((k, v) for k, v in headers if k.lower() not in drop)
    if not upgrade:
        return kept
    upgrades = tuple((k, v) for k, v in headers if k.lower() == "upgrade")
    return (*kept, *upgrades, ("Connection", "Upgrade"))


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:] if end >= 0 else ""
        return host[: end + 1], int(rest[1:]) if rest.startswith(":") and _PORT.fullmatch(rest[1:]) else None
    name, sep, port = host.rpartition(":")
    if sep and _PORT.fullmatch(port) and ":" not in name:
        return name, int(port)
    return host, None


def forwarded_port(host: str, proto: str) -> int:
    """The port the client addressed: the one in `Host`, else the scheme's default."""
    _, port = _split_host(host)
    return port if port is not None else _DEFAULT_PORTS.get(proto, 80)


def add_forwarded(headers: Headers, *, client_addr: str, proto: str, host: str, prefix: str = "") -> Headers:
    """`headers` plus X-Forwarded-For/-Proto/-Host/-Port, and -Prefix when a filter stripped one."""
    result = list(headers)
    positions = {key.lower(): index for index, (key, _) in reversed(list(enumerate(result)))}
    _merge_forwarded(result, positions, _forwarded_fields(client_addr, proto, host, prefix))
    return tuple(result)


def _forwarded_fields(client_addr: str, proto: str, host: str, prefix: str) -> list[tuple[str, str]]:
    added = [("X-Forwarded-For", client_addr), ("X-Forwarded-Proto", proto)]
    if host:
        added.append(("X-Forwarded-Host", host))
    added.append(("X-Forwarded-Port", str(forwarded_port(host, proto))))
    if prefix:
        added.append(("X-Forwarded-Prefix", prefix))
    return added


def _merge_forwarded(fields: list[tuple[str, str]], positions: dict[str, int], added: list[tuple[str, str]]) -> None:
    """Append each of `added`, or extend the value the client already sent (`positions`: lower name -> index)."""
    for name, value in added:
        index = positions.get(name.lower())
        if index is None:
            fields.append((name, value))
        else:
            key, old = fields[index]
            fields[index] = (key, f"{old}, {value}" if old else value)


def authority(host: str, port: int, scheme: str) -> str:
    """The `Host` value for dialing host:port with `scheme` (the port left out when it is the default)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return shown if _DEFAULT_PORTS.get(scheme) == port else f"{shown}:{port}"


def set_host(headers: Headers, value: str) -> Headers:
    """`headers` with a single `Host: value`, first."""
    return (("Host", value), *((k, v) for k, v in headers if k.lower() != "host"))


def upstream_request_headers(headers: Headers, *, upgrade: bool, client_addr: str, proto: str,
                             prefix: str, preserve_host: bool, upstream_authority: str) -> Headers:
    """A client's (filtered) request headers as sent to an instance.

    One pass does what `strip_hop_by_hop`, `add_forwarded` and `set_host` do (this runs for every request and
    handshake): keys are lower-cased once, and the X-Forwarded-* a client already sent are noted on the way.
    """
    lowered = [key.lower() for key, _ in headers]
    drop = _DROP
    if "connection" in lowered:
        named = connection_tokens(headers)
        if not named <= _DROP:  # usually it is: "Upgrade", "keep-alive"
            drop = (_DROP | named) - {"transfer-encoding"}
    kept: list[tuple[str, str]] = []
    upgrades: list[tuple[str, str]] = []
    forwarded: dict[str, int] | None = None  # lower-cased X-Forwarded-* name -> its first index in `kept`
    original_host = ""
    seen_host = False
    for field, lkey in zip(headers, lowered, strict=True):
        if lkey in drop:
            if lkey == "upgrade":
                upgrades.append(field)
            continue
        if lkey == "host":
            if seen_host:
                continue  # a second Host is dropped (RFC 9112 section 3.2 forbids it)
            seen_host = True
            original_host = field[1]
            if not preserve_host or not original_host:
                continue  # an empty Host cannot be preserved: the instance's authority replaces it
        elif lkey in _FORWARDED_NAMES:
            if forwarded is None:
                forwarded = {}
            forwarded.setdefault(lkey, len(kept))
        kept.append(field)
    if upgrade:
        kept.extend(upgrades)
        kept.append(("Connection", "Upgrade"))
    added = _forwarded_fields(client_addr, proto, original_host, prefix)
    if forwarded is None:
        kept.extend(added)
    else:
        _merge_forwarded(kept, forwarded, added)
    if preserve_host and original_host:
        return tuple(kept)
    return (("Host", upstream_authority), *kept)
