"""How every tunnel relay ends a tunnel: the lingering close (pure; `tunnel.py` and `_relay_thread.c` follow it).

When one side ends (EOF, a reset or an error) or the tunnel is closed (drain, idle timeout), relaying stops, and
each side still open:

1. gets what is pending for it; a side that said EOF then closes;
2. otherwise has its write side shut down (it reads EOF right after the last bytes) and is read until its EOF,
   dropping what comes, for at most `linger_s` after that; then it is closed;
3. a side that has not taken its pending bytes `flush_timeout_s` after the close began gets the whole tunnel
   dropped, so that a peer that stopped reading cannot hold two descriptors forever.

Why: closing a socket with unread input makes the kernel send a reset instead of a FIN, and a reset can overtake
the last bytes on their way and destroy them. A client still sending a frame too big when the instance closes
1009 would lose that close frame. nginx's lingering close exists for the same reason.

A new relay passes `tests/gateway/tunnel/test_tunnel.py` by being added to `tunnels.RELAY_KINDS`, which every case there
runs against (the close-code case included).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

LINGER_S = 5.0  # nginx's lingering_timeout
FLUSH_TIMEOUT_S = 30.0  # half of nginx's send_timeout (60 s)


class Verdict(enum.Enum):
    """What a relay does with one side of a closing tunnel when it looks at it."""

    WAIT = "wait"
    CLOSE_SIDE = "close-side"
    ABORT_TUNNEL = "abort-tunnel"


@dataclass(frozen=True, slots=True)
class CloseTimeouts:
    """The two bounds of a tunnel's close; 0 for `linger_s` closes each side as soon as it is flushed."""

    flush_timeout_s: float = FLUSH_TIMEOUT_S
    linger_s: float = LINGER_S

    def __post_init__(self) -> None:
        if self.flush_timeout_s <= 0:
            raise ValueError(f"flush timeout must be > 0, not {self.flush_timeout_s}")
        if self.linger_s < 0:
            raise ValueError(f"linger time must be >= 0, not {self.linger_s}")

    @property
    def check_interval_s(self) -> float:
        """How often a closing tunnel is looked at: a quarter of the shorter bound, within 5 ms to 1 s."""
        shorter = min(self.flush_timeout_s, self.linger_s) if self.linger_s else self.flush_timeout_s
        return min(1.0, max(0.005, shorter / 4))

    def native_ms(self) -> dict[str, int]:
        """The keyword arguments of `gateway._relay.Relay` for these bounds."""
        return {"flush_timeout_ms": max(1, round(self.flush_timeout_s * 1000)),
                "linger_ms": round(self.linger_s * 1000)}


DEFAULT_TIMEOUTS = CloseTimeouts()


def verdict(timeouts: CloseTimeouts, *, now_s: float, closing_since_s: float, flushed_since_s: float | None) -> Verdict:
    """The rule for one side still open in a closing tunnel; `flushed_since_s` is None while bytes wait for it."""
    if flushed_since_s is None:
        return Verdict.ABORT_TUNNEL if now_s - closing_since_s >= timeouts.flush_timeout_s else Verdict.WAIT
    return Verdict.CLOSE_SIDE if now_s - flushed_since_s >= timeouts.linger_s else Verdict.WAIT
