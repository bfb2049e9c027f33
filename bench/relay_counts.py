"""Wake-ups and CPU of the relay thread per relayed message, the thread relay against the sockmap relay (issue 20).

    python -m bench.relay_counts [--tunnels 32] [--rounds 500] [--size 100] [--repeat 3]

Runs `gateway._relay.Relay` in this process, without a gateway around it: `--tunnels` loopback tunnels, each a
client and an upstream socket kept here, and `--rounds` rounds in which every client sends one `--size` message
that its upstream echoes back (two relayed messages per tunnel and round). For the relay thread ("wsgate-relay")
it reads, before and after, its voluntary context switches (each one an epoll_wait that slept and was woken) and
its on-CPU time (`/proc/self/task/<tid>/schedstat`, nanoseconds), and divides by the relayed messages. Instruction
counts and system calls are not needed here: the point is what wakes the thread, and how often.

With the sockmap the kernel moves the bytes in softirq context, charged to whoever sends (here, this process's main
thread, and the kernel's psock work items), so the relay thread's CPU is what the gateway's own process still spends
per message; `bench.relay` measures the whole.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from typing import Any

from bench.procstat import thread_wakeups_and_cpu_ns

RELAYS = ("thread", "sockmap")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the relay closed a tunnel during the run")
        data += chunk
    return bytes(data)


def pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    far = socket.create_connection(listener.getsockname())
    near, _ = listener.accept()
    far.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    near.setblocking(False)
    return far, near


def run_once(kind: str, tunnels: int, rounds: int, size: int) -> dict[str, float]:
    from gateway import _relay  # type: ignore[attr-defined,unused-ignore]

    relay: Any = _relay.Relay(sockmap=kind == "sockmap")
    if kind == "sockmap" and not relay.sockmap()[0]:
        relay.stop()
        raise SystemExit(f"the sockmap relay did not load: {relay.sockmap()[1]}")
    listener = socket.create_server(("127.0.0.1", 0), backlog=2 * tunnels)
    ends: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(tunnels):
            client, client_near = pair(listener)
            upstream, upstream_near = pair(listener)
            relay.add(client_near.detach(), upstream_near.detach())
            ends.append((client, upstream))
        message = b"m" * size
        for client, upstream in ends:  # every tunnel carries bytes (and, with the sockmap, is the kernel's)
            client.sendall(message)
            upstream.sendall(recv_exactly(upstream, size))
            recv_exactly(client, size)
        switches, cpu_ns = thread_wakeups_and_cpu_ns(os.getpid(), "wsgate-relay")
        started = time.monotonic()
        for _ in range(rounds):
            for client, _upstream in ends:
                client.sendall(message)
            for _client, upstream in ends:
                upstream.sendall(recv_exactly(upstream, size))
            for client, _upstream in ends:
                recv_exactly(client, size)
        seconds = time.monotonic() - started
        after_switches, after_ns = thread_wakeups_and_cpu_ns(os.getpid(), "wsgate-relay")
        messages = 2 * tunnels * rounds
        stats = relay.stats()
        return {"wakeups_per_message": (after_switches - switches) / messages,
                "thread_us_per_message": (after_ns - cpu_ns) / 1000 / messages,
                "messages_per_second": messages / seconds,
                "sockmap_entered": float(stats.get("sockmap_entered", 0)),
                "sockmap_left": float(stats.get("sockmap_left", 0))}
    finally:
        for client, upstream in ends:
            client.close()
            upstream.close()
        listener.close()
        relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    parser.add_argument("--repeat", type=int, default=3, help="runs per relay, alternating; medians are reported")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in RELAYS}
    for _ in range(args.repeat):
        for kind in RELAYS:
            runs[kind].append(run_once(kind, args.tunnels, args.rounds, args.size))
    print(f"{args.tunnels} tunnels x {args.rounds} rounds, {args.size} B messages, medians of {args.repeat} runs")
    print(f"{'relay':8} {'wake-ups/msg':>13} {'thread us/msg':>14} {'msgs/s':>9} {'range of wake-ups/msg':>24}")
    for kind in RELAYS:
        rows = runs[kind]
        wakeups = [row["wakeups_per_message"] for row in rows]
        print(f"{kind:8} {statistics.median(wakeups):13.4f} "
              f"{statistics.median(row['thread_us_per_message'] for row in rows):14.3f} "
              f"{statistics.median(row['messages_per_second'] for row in rows):9.0f} "
              f"{min(wakeups):11.4f} - {max(wakeups):.4f}")
        if kind == "sockmap" and any(row["sockmap_entered"] != args.tunnels or row["sockmap_left"] for row in rows):
            raise SystemExit(f"not every tunnel stayed with the kernel: {rows}")


if __name__ == "__main__":
    main()
