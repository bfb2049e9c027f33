"""Options of the gateway's listening sockets, whichever path accepts on them (the native lane or asyncio's server)."""

from __future__ import annotations

import math
import socket
from typing import Protocol

from gateway.config.model import ServerSettings


class _Options(Protocol):
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


def kernel_seconds(defer_accept_s: float) -> int:
    """TCP_DEFER_ACCEPT's value for `wsgate.defer-accept`: whole seconds, rounded up (0: off)."""
    return math.ceil(defer_accept_s) if defer_accept_s > 0 else 0


def apply_listen_options(sock: _Options, settings: ServerSettings) -> None:
    """Set what `wsgate:` asks of a listening socket (before or after `listen`).

    TCP_DEFER_ACCEPT: the kernel keeps a new connection until its first bytes come (at most the period, after which
    it is handed over anyway). A client speaks first in HTTP, so the accepting thread wakes once per connection with
    the head already there; without it a connection typically woke the worker twice, for the connect and then for
    the head, and cost an epoll registration in between (about a tenth of an upgrade's CPU, bench/RESULTS.md).
    Where the platform has no such option, nothing changes.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, kernel_seconds(settings.defer_accept_s))
