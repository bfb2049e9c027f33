"""The native relay thread (gateway._relay) over real loopback TCP connections, without the gateway around it.

Each tunnel joins two TCP connections: the test holds the far ends (`client`, `upstream`) and the relay owns the
near ends. Waiting is done with select() on sockets and on the relay's eventfd, never with sleeps.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.tunnel import native as native_relay
from tests.gateway.rawsock import recv_exactly, recv_until_eof


@pytest.fixture(params=["thread", "sockmap"])
def relay(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The relay thread alone, and with the kernel's sockmap relay (which must load here: this kernel has it)."""
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")
    from gateway import _relay  # type: ignore[attr-defined,unused-ignore]

    r = _relay.Relay(sockmap=request.param == "sockmap")
    if request.param == "sockmap":
        on, why = r.sockmap()
        if not on:
            r.stop()
            pytest.fail(f"the sockmap relay did not load: {why}")
    yield r
    r.stop()


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(far end kept by the test, near end handed to the relay), connected over loopback."""
    far = socket.create_connection(listener.getsockname())
    near, _ = listener.accept()
    near.setblocking(False)
    return far, near


class Tunnel:
    def __init__(self, relay: Any, listener: socket.socket, *, to_client: bytes = b"", to_upstream: bytes = b"",
                 idle_timeout_ms: int = 0) -> None:
        self.client, client_near = tcp_pair(listener)
        self.upstream, upstream_near = tcp_pair(listener)
        self.id = relay.add(client_near.detach(), upstream_near.detach(), to_client, to_upstream,
                            idle_timeout_ms=idle_timeout_ms)

    def close(self) -> None:
        self.client.close()
        self.upstream.close()


def finished(relay: Any) -> list[tuple[int, int, int]]:
    """(id, bytes from the client, bytes from the instance) of each tunnel `reap()` reports finished."""
    from gateway import _relay  # type: ignore[attr-defined,unused-ignore]

    events = relay.reap()
    assert all(kind == _relay.EV_DONE for _, kind, _, _, _ in events), events
    return [(tunnel_id, a, b) for tunnel_id, _, a, b, _ in events]


def wait_done(relay: Any, count: int = 1, *, timeout_s: float = 5.0) -> list[tuple[int, int, int]]:
    deadline = time.monotonic() + timeout_s
    done: list[tuple[int, int, int]] = []
    while len(done) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(done)} of {count} tunnels finished in time")
        readable, _, _ = select.select([relay.fileno()], [], [], left)
        if readable:
            done.extend(finished(relay))
    return done


def test_relay_carries_bytes_both_ways(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        t.client.sendall(b"to the instance")
        assert recv_exactly(t.upstream, 15) == b"to the instance"
        t.upstream.sendall(b"to the client")
        assert recv_exactly(t.client, 13) == b"to the client"
        # With the sockmap the kernel carried both (the thread hands a tunnel over before it reads from it).
        assert relay.stats()["sockmap_entered"] == (1 if relay.sockmap()[0] else 0)
        assert relay.stats()["sockmap_left"] == 0
    finally:
        t.close()


def test_relay_sends_bytes_that_came_with_the_heads_first(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener, to_client=b"early-down", to_upstream=b"early-up")
    try:
        t.client.sendall(b"+later")
        assert recv_exactly(t.upstream, 14) == b"early-up+later"
        assert recv_exactly(t.client, 10) == b"early-down"
    finally:
        t.close()


def test_relay_keeps_every_byte_while_the_reader_is_slow(relay: Any, listener: socket.socket) -> None:
    """16 MiB into a reader that does not read at first: backpressure, then all of it in order."""
    # Fixed small buffers (no autotuning) so that 16 MiB is far more than all the socket buffers together, and
    # than what the sockmap relay lets the kernel queue (4 MiB).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    t = Tunnel(relay, listener)
    payload = os.urandom(16 * 1024 * 1024)
    try:
        t.client.setblocking(False)
        sent = 0
        # Fill until the client's own send buffer is full: the relay must have stopped reading by then.
        while sent < len(payload):
            try:
                sent += t.client.send(payload[sent:sent + 65536])
            except BlockingIOError:
                break
        assert sent < len(payload), "backpressure never reached the sender"
        t.client.setblocking(True)
        received = bytearray()
        t.upstream.settimeout(5)
        while len(received) < len(payload):
            received += t.upstream.recv(1 << 20)
            if sent < len(payload):
                t.client.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sent += t.client.send(payload[sent:sent + 262144])
        assert bytes(received) == payload
        if relay.sockmap()[0]:  # the kernel stopped redirecting once the reader was SM_CREDIT (4 MiB) behind
            assert relay.stats()["sockmap_pauses"] == 1
    finally:
        t.close()


def test_relay_carries_bytes_that_arrived_before_it_took_the_sockets(relay: Any, listener: socket.socket) -> None:
    """Bytes already in the near ends' receive queues when the tunnel starts are relayed, before later ones."""
    client, client_near = tcp_pair(listener)
    upstream, upstream_near = tcp_pair(listener)
    try:
        client.sendall(b"queued-up")
        upstream.sendall(b"queued-down")
        time.sleep(0.05)  # both are in the kernel's receive queues before the relay sees the sockets
        relay.add(client_near.detach(), upstream_near.detach())
        assert recv_exactly(upstream, 9) == b"queued-up"
        assert recv_exactly(client, 11) == b"queued-down"
        client.sendall(b"+then")
        assert recv_exactly(upstream, 5) == b"+then"
    finally:
        client.close()
        upstream.close()


def test_relay_eof_from_one_side_closes_the_other_after_flushing(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        t.upstream.sendall(b"last words")
        t.upstream.shutdown(socket.SHUT_WR)
        assert recv_until_eof(t.client) == b"last words"
        t.client.close()  # the lingering close waits for the client's EOF
        [(tunnel_id, from_client, from_upstream)] = wait_done(relay)
        assert tunnel_id == t.id
        # TCP_INFO counts sequence numbers: the FIN may add one.
        assert from_client == 0 and from_upstream in (10, 11)
    finally:
        t.close()


def test_relay_reset_from_one_side_closes_the_other(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        t.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        t.client.close()  # linger 0: RST
        assert recv_until_eof(t.upstream) == b""
        t.upstream.close()
        assert [d[0] for d in wait_done(relay)] == [t.id]
    finally:
        t.close()


def test_relay_counts_the_bytes_each_side_sent(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        t.client.sendall(b"x" * 1000)
        assert recv_exactly(t.upstream, 1000) == b"x" * 1000
        t.upstream.sendall(b"y" * 300)
        assert recv_exactly(t.client, 300) == b"y" * 300
        relay.close(t.id)
        assert recv_until_eof(t.client) == b""
        assert recv_until_eof(t.upstream) == b""
        t.close()
        [(_, from_client, from_upstream)] = wait_done(relay)
        assert (from_client, from_upstream) == (1000, 300)
    finally:
        t.close()


def test_relay_abort_closes_both_at_once(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        relay.abort(t.id)
        wait_done(relay)
        assert recv_until_eof(t.client) == b""
        assert recv_until_eof(t.upstream) == b""
    finally:
        t.close()


def test_relay_idle_timeout_closes_only_quiet_tunnels(relay: Any, listener: socket.socket) -> None:
    quiet = Tunnel(relay, listener, idle_timeout_ms=100)
    busy = Tunnel(relay, listener, idle_timeout_ms=100)
    try:
        started = time.monotonic()
        done: list[tuple[int, int, int]] = []
        while not done:
            busy.client.sendall(b"tick")
            assert recv_exactly(busy.upstream, 4) == b"tick"
            watched = [relay.fileno()] + ([quiet.client] if quiet.client.fileno() >= 0 else [])
            readable, _, _ = select.select(watched, [], [], 0.02)
            if quiet.client in readable:  # the idle timeout shut the quiet tunnel's write sides down
                assert recv_until_eof(quiet.client) == b""
                quiet.close()
            if relay.fileno() in readable:
                done = finished(relay)
            assert time.monotonic() - started < 5, "the quiet tunnel was never closed"
        assert [d[0] for d in done] == [quiet.id]
        assert time.monotonic() - started >= 0.1
    finally:
        quiet.close()
        busy.close()


def test_relay_carries_many_tunnels_independently(relay: Any, listener: socket.socket) -> None:
    tunnels = [Tunnel(relay, listener) for _ in range(50)]
    try:
        for i, t in enumerate(tunnels):
            t.client.sendall(f"m{i}".encode())
        for i, t in enumerate(tunnels):
            expected = f"m{i}".encode()
            assert recv_exactly(t.upstream, len(expected)) == expected
        for t in tunnels[:25]:
            relay.close(t.id)
        for t in tunnels[:25]:
            assert recv_until_eof(t.client) == b""
            t.close()
        assert sorted(d[0] for d in wait_done(relay, 25)) == sorted(t.id for t in tunnels[:25])
        tunnels[30].upstream.sendall(b"still here")
        assert recv_exactly(tunnels[30].client, 10) == b"still here"
    finally:
        for t in tunnels:
            t.close()


def test_relay_stop_closes_every_tunnel_and_refuses_new_ones(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        relay.stop()
        assert recv_until_eof(t.client) == b""
        assert recv_until_eof(t.upstream) == b""
        assert [d[0] for d in finished(relay)] == [t.id]
        fds = (os.dup(t.client.fileno()), os.dup(t.upstream.fileno()))
        with pytest.raises(RuntimeError, match="stopped"):
            relay.add(*fds)
        for fd in fds:
            os.close(fd)
        relay.stop()  # idempotent
    finally:
        t.close()


def test_relay_refuses_the_same_descriptor_twice(relay: Any) -> None:
    with pytest.raises(ValueError, match="distinct"):
        relay.add(5, 5)


def test_relay_gives_up_flushing_to_a_peer_that_never_reads(listener: socket.socket) -> None:
    """A closing tunnel waits for its last bytes to be taken, but not forever (flush_timeout_ms)."""
    from gateway import _relay

    relay = _relay.Relay(flush_timeout_ms=200)
    t = Tunnel(relay, listener)
    try:
        # The client never reads: fill everything until the relay holds bytes for it and stops reading upstream.
        t.upstream.setblocking(False)
        chunk = b"z" * 65536
        while True:
            try:
                t.upstream.send(chunk)
                continue
            except BlockingIOError:
                pass
            _, writable, _ = select.select([], [t.upstream], [], 0.5)
            if not writable:
                break
        started = time.monotonic()
        relay.close(t.id)
        assert [d[0] for d in wait_done(relay)] == [t.id]
        assert time.monotonic() - started >= 0.2
    finally:
        relay.stop()
        t.close()


def test_relay_delivers_the_last_bytes_of_an_instance_that_resets_while_the_client_sends(
        relay: Any, listener: socket.socket) -> None:
    """The instance answers and resets while the client is still sending: the answer, then EOF, no reset."""
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    t = Tunnel(relay, listener)
    try:
        t.client.setblocking(False)
        chunk = b"c" * 65536
        with contextlib.suppress(BlockingIOError):
            while True:  # until every buffer on the way to the instance is full
                t.client.send(chunk)
        t.upstream.sendall(b"close frame")
        t.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        t.upstream.close()  # unread input and linger 0: RST
        received = bytearray()
        deadline = time.monotonic() + 5
        while True:  # keep sending, as a client in the middle of a frame does, and read what comes
            assert time.monotonic() < deadline, f"no EOF after {received!r}"
            readable, writable, _ = select.select([t.client], [t.client], [], 1)
            if writable:
                with contextlib.suppress(BlockingIOError):
                    t.client.send(chunk)
            if readable:
                data = t.client.recv(65536)  # a reset here raises ConnectionResetError
                if not data:
                    break
                received += data
        assert bytes(received) == b"close frame"
        t.client.close()
        assert [d[0] for d in wait_done(relay)] == [t.id]
    finally:
        t.close()


def test_relay_lingers_at_most_linger_ms_for_a_peer_that_never_closes(listener: socket.socket) -> None:
    from gateway import _relay

    relay = _relay.Relay(linger_ms=150)
    t = Tunnel(relay, listener)
    try:
        t.upstream.close()
        assert recv_until_eof(t.client) == b""  # the write side is shut down at once
        started = time.monotonic()
        assert [d[0] for d in wait_done(relay)] == [t.id]  # then the client is waited for, but not forever
        assert time.monotonic() - started >= 0.1
    finally:
        relay.stop()
        t.close()


def test_relay_finds_a_tunnel_by_id_in_constant_time(relay: Any) -> None:
    """Closing N tunnels looks each one up in O(1) (a list walk made a drain cost O(N^2))."""
    count = 2000
    far: list[socket.socket] = []
    try:
        ids = []
        for _ in range(count):
            client, client_near = socket.socketpair()
            upstream, upstream_near = socket.socketpair()
            far += [client, upstream]
            for near in (client_near, upstream_near):
                near.setblocking(False)
            ids.append(relay.add(client_near.detach(), upstream_near.detach()))
        for tunnel_id in ids:
            relay.abort(tunnel_id)
        assert sorted(d[0] for d in wait_done(relay, count, timeout_s=30)) == sorted(ids)
        stats = relay.stats()
        assert stats["live"] == 0
        assert stats["lookups"] >= count
        assert stats["probes"] <= 3 * stats["lookups"], stats
    finally:
        for sock in far:
            sock.close()


FALLBACK_SCRIPT = """
import socket, sys
from gateway import _relay
relay = _relay.Relay(sockmap=True)
print(relay.sockmap())
listener = socket.create_server(("127.0.0.1", 0))
def pair():
    far = socket.create_connection(listener.getsockname())
    near, _ = listener.accept()
    near.setblocking(False)
    return far, near
client, client_near = pair()
upstream, upstream_near = pair()
relay.add(client_near.detach(), upstream_near.detach())
client.sendall(b"ping")
print(upstream.recv(4), relay.stats()["sockmap_entered"])
relay.stop()
"""


def test_relay_without_the_bpf_privilege_relays_on_the_thread() -> None:
    """Asked for the sockmap without the privilege (here: as nobody), the relay says why and relays itself."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the privilege")
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")
    root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, timeout=30,
                         cwd="/", env={**os.environ, "PYTHONPATH": root}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["(False, 'bpf map (hash): Operation not permitted')", "b'ping' 0"]


def relay_thread_wakeups() -> int:
    """How often the relay thread ("wsgate-relay") of this process went to sleep and was woken (its voluntary
    context switches: each is one epoll_wait that blocked)."""
    for task in Path("/proc/self/task").iterdir():
        if (task / "comm").read_text().strip() == "wsgate-relay":
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    raise AssertionError("no wsgate-relay thread in this process")


def test_sockmap_relay_messages_do_not_wake_the_thread(listener: socket.socket) -> None:
    """While the kernel relays a tunnel its messages cost the thread nothing: it wakes for its sweeps (every 50 ms
    while the tunnel moves) and timeouts, not per message (it did, about once per message, before the redirected
    ends were watched for EPOLLRDHUP instead of EPOLLIN)."""
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")
    from gateway import _relay  # type: ignore[attr-defined,unused-ignore]

    relay = _relay.Relay(sockmap=True)
    on, why = relay.sockmap()
    if not on:
        relay.stop()
        pytest.fail(f"the sockmap relay did not load: {why}")
    t = Tunnel(relay, listener)
    try:
        t.client.sendall(b"warm")
        assert recv_exactly(t.upstream, 4) == b"warm"
        before, started = relay_thread_wakeups(), time.monotonic()
        for _ in range(2000):
            t.client.sendall(b"ping")
            assert recv_exactly(t.upstream, 4) == b"ping"
            t.upstream.sendall(b"pong")
            assert recv_exactly(t.client, 4) == b"pong"
        wakeups, seconds = relay_thread_wakeups() - before, time.monotonic() - started
        assert relay.stats()["sockmap_entered"] == 1 and relay.stats()["sockmap_left"] == 0
        assert wakeups <= seconds / 0.05 + 10, f"{wakeups} wake-ups for 4000 messages in {seconds:.3f} s"
        t.client.sendall(b"after")  # the tunnel still closes as ever: EOF wakes the thread
        assert recv_exactly(t.upstream, 5) == b"after"
        t.client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(t.upstream) == b""
        t.upstream.close()
        assert len(wait_done(relay)) == 1
    finally:
        t.close()
        relay.stop()
