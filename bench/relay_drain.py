"""How long the native relay thread takes to end N tunnels on N commands (a drain), for a few N.

    python -m bench.relay_drain [--sizes 2000,4000,8000] [--repeat 3]

Each tunnel joins the two ends of one socketpair (two descriptors a tunnel, so that 8,000 fit in the usual
descriptor limit; nothing is sent, so nothing loops). The clock runs from the first `abort` command to the
last finished tunnel reaped; `abort` is used rather than `close` so that no lingering (which waits for the far ends)
is in the figure: both commands find their tunnel the same way. A lookup that walks the live list makes this grow as
N^2; the id index keeps it linear. Prints one line per N, the best of `--repeat` runs:
`n=<N> drain_ms=<ms> per_tunnel_us=<us>`.
"""

from __future__ import annotations

import argparse
import select
import socket
import time

from gateway import _relay


def drain_ms(count: int) -> float:
    """Milliseconds to abort `count` tunnels and reap them all."""
    relay = _relay.Relay()
    try:
        ids = []
        for _ in range(count):
            one, other = socket.socketpair()
            for sock in (one, other):
                sock.setblocking(False)
            ids.append(relay.add(one.detach(), other.detach()))
        started = time.perf_counter()
        for tunnel_id in ids:
            relay.abort(tunnel_id)
        done = 0
        while done < count:
            select.select([relay.fileno()], [], [], 10)
            done += len(relay.reap())
        return (time.perf_counter() - started) * 1000
    finally:
        relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,4000,8000", help="comma-separated tunnel counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per count (the best is printed)")
    args = parser.parse_args()
    for count in (int(n) for n in args.sizes.split(",")):
        elapsed = min(drain_ms(count) for _ in range(args.repeat))
        print(f"n={count} drain_ms={elapsed:.1f} per_tunnel_us={elapsed * 1000 / count:.2f}", flush=True)


if __name__ == "__main__":
    main()
