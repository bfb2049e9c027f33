"""`Relay.dial` (gateway/_relay_dial.c) over real loopback sockets: the socket is connected and the request sent,
then the relay thread reads the response head and either forwards a 101 and relays or hands the head back to Python.

Why: this path runs without Python in the loop, so each way a dial can end (101, another head, refused, connect or
response timeout, EOF, abort, stop) must report exactly one outcome through `reap()` and must leave every
descriptor with exactly one owner. The "client" is a TCP pair: the test keeps the far end and detaches the near
end into `dial`, so the relay holds its only descriptor and the far end sees EOF whenever the relay closes it. The
"instance" is a listening socket the test accepts on. Waiting is select() on sockets and on `relay.fileno()`.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from gateway import _relay
from gateway.tunnel import native as native_relay
from tests.gateway.rawsock import recv_exactly, recv_until_eof

Event = tuple[int, int, int, int, bytes | None]

REQUEST = b"GET /ws HTTP/1.1\r\nHost: instance\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
UPGRADE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied"


@pytest.fixture(params=["thread", "sockmap"])
def relay(request: pytest.FixtureRequest) -> Iterator[_relay.Relay]:
    """The relay thread alone, and with the kernel's sockmap relay once a dial has upgraded (it must load here)."""
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")
    r = _relay.Relay(sockmap=request.param == "sockmap")
    if request.param == "sockmap" and not r.sockmap()[0]:
        r.stop()
        pytest.fail(f"the sockmap relay did not load: {r.sockmap()[1]}")
    yield r
    r.stop()


def listening(host: str = "127.0.0.1", backlog: int = 64) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Where client pairs are made."""
    with listening() as sock:
        yield sock


@pytest.fixture
def instance() -> Iterator[socket.socket]:
    """The instance the relay dials."""
    with listening() as sock:
        yield sock


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody else can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def client_pair(listener: socket.socket) -> tuple[socket.socket, int]:
    """(far end kept by the test, detached non-blocking near end for the relay)."""
    far = socket.create_connection(listener.getsockname()[:2], timeout=5)
    near, _ = listener.accept()
    near.setblocking(False)
    return far, near.detach()


def accept(server: socket.socket, *, timeout_s: float = 5.0) -> socket.socket:
    readable, _, _ = select.select([server], [], [], timeout_s)
    assert readable, "the relay never connected"
    conn, _ = server.accept()
    conn.settimeout(timeout_s)
    return conn


def wait_events(relay: _relay.Relay, count: int = 1, *, timeout_s: float = 5.0) -> list[Event]:
    deadline = time.monotonic() + timeout_s
    events: list[Event] = []
    while len(events) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {events} of {count} events came in time"
        readable, _, _ = select.select([relay.fileno()], [], [], left)
        if readable:
            events.extend(relay.reap())
    return events


def failed(tunnel_id: int, reason: int, err: int = 0) -> list[Event]:
    return [(tunnel_id, _relay.EV_FAILED, reason, err, None)]


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class Bench:
    """Starts dials and closes every socket the test owns at the end."""

    def __init__(self, relay: _relay.Relay, listener: socket.socket, instance: socket.socket) -> None:
        self.relay, self.listener, self.instance = relay, listener, instance
        self.owned: list[socket.socket] = []

    def own(self, sock: socket.socket) -> socket.socket:
        self.owned.append(sock)
        return sock

    def dial(self, request: bytes = REQUEST, *, port: int | None = None, connect_timeout_ms: int = 2000,
             response_timeout_ms: int = 0, idle_timeout_ms: int = 0,
             forward_101: bool = True) -> tuple[socket.socket, int]:
        """(client far end, tunnel id) of a dial to the instance (or to `port`)."""
        far, near = client_pair(self.listener)
        self.own(far)
        try:
            tunnel_id = self.relay.dial(near, "127.0.0.1", port or self.instance.getsockname()[1], request,
                                        connect_timeout_ms=connect_timeout_ms,
                                        response_timeout_ms=response_timeout_ms, idle_timeout_ms=idle_timeout_ms,
                                        forward_101=forward_101)
        except Exception:
            os.close(near)  # refused at once (or refused outright): the descriptor stayed ours
            raise
        return far, tunnel_id

    def answered(self, request: bytes = REQUEST, *, response_timeout_ms: int = 0,
                 forward_101: bool = True) -> tuple[socket.socket, int, socket.socket]:
        """A dial whose request the instance has read in full: (client far end, id, instance's connection)."""
        client, tunnel_id = self.dial(request, response_timeout_ms=response_timeout_ms, forward_101=forward_101)
        up = self.own(accept(self.instance))
        assert recv_exactly(up, len(request)) == request
        return client, tunnel_id, up

    def handed_back(self, fd: int) -> socket.socket:
        sock = self.own(socket.socket(fileno=fd))
        sock.settimeout(5)
        return sock

    def close(self) -> None:
        for sock in self.owned:
            sock.close()
        self.owned.clear()


@pytest.fixture
def bench(relay: _relay.Relay, listener: socket.socket, instance: socket.socket) -> Iterator[Bench]:
    b = Bench(relay, listener, instance)
    yield b
    b.close()


def test_dial_forwards_a_101_and_relays_both_ways(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered(response_timeout_ms=2000)
    up.sendall(UPGRADE + b"early frame")
    assert recv_exactly(client, len(UPGRADE) + 11) == UPGRADE + b"early frame"
    assert wait_events(bench.relay) == [(tunnel_id, _relay.EV_UPGRADED, 0, 0, None)]
    client.sendall(b"ping")
    assert recv_exactly(up, 4) == b"ping"  # nothing between the request and the relayed bytes
    up.sendall(b"pong!")
    assert recv_exactly(client, 5) == b"pong!"
    client.shutdown(socket.SHUT_WR)
    assert recv_until_eof(up) == b""
    assert recv_until_eof(client) == b""
    up.shutdown(socket.SHUT_WR)  # the lingering close waits for the instance's EOF
    [(done_id, kind, from_client, from_instance, data)] = wait_events(bench.relay)
    assert (done_id, kind, data) == (tunnel_id, _relay.EV_DONE, None)
    # TCP_INFO counts sequence numbers (a FIN may add one); the instance's count includes the 101 head.
    assert from_client in (4, 5)
    assert from_instance in (len(UPGRADE) + 16, len(UPGRADE) + 17)


def test_dial_finds_a_head_end_split_across_reads(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered()
    up.sendall(UPGRADE[:-3])  # "...\r" now, "\n\r\n" later
    readable, _, _ = select.select([bench.relay.fileno(), client.fileno()], [], [], 0.1)
    assert readable == [], "the relay acted on an incomplete head"
    up.sendall(UPGRADE[-3:] + b"tail")
    assert recv_exactly(client, len(UPGRADE) + 4) == UPGRADE + b"tail"
    assert wait_events(bench.relay) == [(tunnel_id, _relay.EV_UPGRADED, 0, 0, None)]


def test_dial_idle_timeout_applies_once_relaying(bench: Bench) -> None:
    """The idle timeout does not cut the dial itself short, and closes the tunnel once it relays and is quiet."""
    client, tunnel_id = bench.dial(response_timeout_ms=2000, idle_timeout_ms=100)
    bench.relay.close(tunnel_id + 1000)  # an unknown id is ignored
    up = bench.own(accept(bench.instance))
    assert recv_exactly(up, len(REQUEST)) == REQUEST
    readable, _, _ = select.select([bench.relay.fileno()], [], [], 0.3)
    assert readable == [], "the idle timeout ended a dial still waiting for its head"
    upgraded_at = time.monotonic()
    up.sendall(UPGRADE)
    assert recv_exactly(client, len(UPGRADE)) == UPGRADE
    assert recv_until_eof(client) == b""
    assert recv_until_eof(up) == b""
    assert time.monotonic() - upgraded_at >= 0.09  # the relay's clock counts whole milliseconds
    client.shutdown(socket.SHUT_WR)  # the lingering close waits for both EOFs
    up.shutdown(socket.SHUT_WR)
    assert [e[:2] for e in wait_events(bench.relay, 2)] == [(tunnel_id, _relay.EV_UPGRADED),
                                                            (tunnel_id, _relay.EV_DONE)]


def test_dial_hands_back_a_non_101_head_with_the_bytes_after_it(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered()
    up.sendall(FORBIDDEN)
    [(event_id, kind, fd, b, data)] = wait_events(bench.relay)
    assert (event_id, kind, b, data) == (tunnel_id, _relay.EV_HEAD, 0, FORBIDDEN)
    back = bench.handed_back(fd)
    assert back.getpeername() == up.getsockname()
    back.sendall(b"next request")
    assert recv_exactly(up, 12) == b"next request"
    up.sendall(b"more")
    assert recv_exactly(back, 4) == b"more"
    # The relay closed the only client descriptor, after sending it nothing.
    assert recv_until_eof(client) == b""


def test_dial_hands_back_a_101_when_not_forwarding(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered(forward_101=False)
    up.sendall(UPGRADE + b"frame")
    [(event_id, kind, fd, _, data)] = wait_events(bench.relay)
    assert (event_id, kind, data) == (tunnel_id, _relay.EV_HEAD, UPGRADE + b"frame")
    back = bench.handed_back(fd)
    up.sendall(b"x")
    assert recv_exactly(back, 1) == b"x"
    assert recv_until_eof(client) == b""


def test_dial_refused_raises_or_reports_a_connect_failure(bench: Bench, closed_port: int) -> None:
    far, near = client_pair(bench.listener)
    bench.own(far)
    try:
        tunnel_id = bench.relay.dial(near, "127.0.0.1", closed_port, REQUEST, connect_timeout_ms=2000)
    except OSError as e:
        assert e.errno == errno.ECONNREFUSED
        assert is_open(near), "the caller keeps the client descriptor when dial raises"
        with socket.socket(fileno=near) as kept:
            kept.settimeout(5)
            far.sendall(b"still mine")
            assert recv_exactly(kept, 10) == b"still mine"
        return
    assert wait_events(bench.relay) == failed(tunnel_id, _relay.FAIL_CONNECT, errno.ECONNREFUSED)
    assert recv_until_eof(far) == b""


def test_dial_connect_timeout_when_syns_are_dropped(bench: Bench) -> None:
    # listen(0): one connection fills the accept queue; Linux then drops further SYNs (the first retry is 1 s away).
    with listening(backlog=0) as full:
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                assert filler.connect_ex(full.getsockname()) in (0, errno.EINPROGRESS)
            started = time.monotonic()
            client, tunnel_id = bench.dial(port=full.getsockname()[1], connect_timeout_ms=200)
            assert wait_events(bench.relay, timeout_s=2) == failed(tunnel_id, _relay.FAIL_CONNECT_TIMEOUT)
            assert 0.2 <= time.monotonic() - started < 2
            assert recv_until_eof(client) == b""
        finally:
            for filler in fillers:
                filler.close()


def test_dial_response_timeout_closes_both_sides(bench: Bench) -> None:
    started = time.monotonic()
    client, tunnel_id, up = bench.answered(response_timeout_ms=200)
    assert wait_events(bench.relay, timeout_s=3) == failed(tunnel_id, _relay.FAIL_RESPONSE_TIMEOUT)
    assert time.monotonic() - started >= 0.2
    assert recv_until_eof(up) == b""
    assert recv_until_eof(client) == b""


def test_dial_instance_closing_without_an_answer_fails_closed(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered()
    up.close()  # the request was read in full: a FIN, not a reset
    assert wait_events(bench.relay) == failed(tunnel_id, _relay.FAIL_CLOSED)
    assert recv_until_eof(client) == b""


def test_dial_partial_head_then_close_is_handed_back(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered()
    up.sendall(b"HTTP/1.1 502 Bad Gate")
    up.shutdown(socket.SHUT_WR)
    [(event_id, kind, fd, _, data)] = wait_events(bench.relay)
    assert (event_id, kind, data) == (tunnel_id, _relay.EV_HEAD, b"HTTP/1.1 502 Bad Gate")
    assert recv_until_eof(bench.handed_back(fd)) == b""
    assert recv_until_eof(client) == b""


def test_dial_head_over_64_kib_without_an_end_is_handed_back(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered()
    line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    sent = b"HTTP/1.1 200 OK\r\n" + line * 96  # ~96 KiB, never a blank line; the instance keeps the connection open
    up.sendall(sent)
    [(event_id, kind, fd, _, data)] = wait_events(bench.relay)
    assert (event_id, kind) == (tunnel_id, _relay.EV_HEAD)
    assert data is not None and 65536 < len(data) < len(sent)
    assert data == sent[:len(data)]
    back = bench.handed_back(fd)
    assert recv_exactly(back, len(sent) - len(data)) == sent[len(data):]  # the rest waits on the handed-back fd
    assert recv_until_eof(client) == b""


@pytest.mark.parametrize("how", ["abort", "close"])
def test_dial_abort_while_waiting_for_the_head(bench: Bench, how: str) -> None:
    client, tunnel_id, up = bench.answered()
    getattr(bench.relay, how)(tunnel_id)
    assert wait_events(bench.relay) == failed(tunnel_id, _relay.FAIL_ABORTED)
    assert recv_until_eof(up) == b""
    assert recv_until_eof(client) == b""


def test_dial_stop_aborts_a_pending_dial(bench: Bench) -> None:
    client, tunnel_id, up = bench.answered()
    bench.relay.stop()  # joins the thread: what it reported is there to reap
    assert bench.relay.reap() == failed(tunnel_id, _relay.FAIL_ABORTED)
    assert recv_until_eof(up) == b""
    assert recv_until_eof(client) == b""
    with pytest.raises(RuntimeError, match="stopped"):
        bench.dial()


@pytest.mark.parametrize("host", ["localhost", "", "127.0.0.1.5", "::g"])
def test_dial_refuses_a_host_that_is_not_an_ip_literal(bench: Bench, host: str) -> None:
    far, near = client_pair(bench.listener)
    bench.own(far)
    with socket.socket(fileno=near) as kept:
        with pytest.raises(ValueError, match="not an IP address"):
            bench.relay.dial(near, host, 80, REQUEST, connect_timeout_ms=1000)
        kept.settimeout(5)
        far.sendall(b"untouched")
        assert recv_exactly(kept, 9) == b"untouched"
    assert bench.relay.reap() == []


def test_dial_delivers_a_request_larger_than_the_socket_buffers(bench: Bench) -> None:
    """The request outgrows what the kernel takes at once, so the thread must finish sending it across writable
    events; the instance reads it in full before it answers 101."""
    bench.instance.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # inherited by the accepted connection
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    size = max(4 << 20, wmem_max + (1 << 20))
    request = b"GET /ws HTTP/1.1\r\nX-Big: " + os.urandom(size // 2).hex().encode() + b"\r\n\r\n"
    client, tunnel_id = bench.dial(request)
    up = bench.own(accept(bench.instance))
    received = bytearray()
    while len(received) < len(request):
        chunk = up.recv(65536)
        assert chunk, "the instance saw EOF before the whole request"
        received += chunk
    assert bytes(received) == request
    up.sendall(UPGRADE)
    assert recv_exactly(client, len(UPGRADE)) == UPGRADE
    assert wait_events(bench.relay) == [(tunnel_id, _relay.EV_UPGRADED, 0, 0, None)]
    client.sendall(b"after")
    assert recv_exactly(up, 5) == b"after"


def test_dial_over_ipv6_loopback(relay: _relay.Relay, listener: socket.socket) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        server = listening("::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here ({e})")
    with server:
        client, near = client_pair(listener)
        with client:
            tunnel_id = relay.dial(near, "::1", server.getsockname()[1], REQUEST, connect_timeout_ms=2000)
            with accept(server) as up:
                assert recv_exactly(up, len(REQUEST)) == REQUEST
                up.sendall(UPGRADE)
                assert recv_exactly(client, len(UPGRADE)) == UPGRADE
                assert wait_events(relay) == [(tunnel_id, _relay.EV_UPGRADED, 0, 0, None)]
                up.sendall(b"v6")
                assert recv_exactly(client, 2) == b"v6"
                relay.close(tunnel_id)
                assert recv_until_eof(up) == b""
                up.shutdown(socket.SHUT_WR)  # the lingering close waits for both EOFs
                client.shutdown(socket.SHUT_WR)
                assert [e[:2] for e in wait_events(relay)] == [(tunnel_id, _relay.EV_DONE)]


def test_dial_leaks_no_descriptors(bench: Bench, closed_port: int) -> None:
    """Twenty dials of mixed outcomes; once the test closed what it owns and the thread stopped, the count is back."""
    relay = bench.relay
    before = len(os.listdir("/proc/self/fd"))
    for round_ in range(4):
        client, tunnel_id, up = bench.answered()  # 101, relayed, then closed by the client
        up.sendall(UPGRADE)
        assert recv_exactly(client, len(UPGRADE)) == UPGRADE
        client.close()
        assert recv_until_eof(up) == b""
        up.shutdown(socket.SHUT_WR)  # the lingering close waits for the instance's EOF
        assert [e[:2] for e in wait_events(relay, 2)] == [(tunnel_id, _relay.EV_UPGRADED),
                                                          (tunnel_id, _relay.EV_DONE)]
        client, tunnel_id, up = bench.answered()  # handed back
        up.sendall(FORBIDDEN)
        [(_, kind, fd, _, _)] = wait_events(relay)
        assert kind == _relay.EV_HEAD
        os.close(fd)
        try:  # refused
            tunnel_id = bench.dial(port=closed_port)[1]
            assert wait_events(relay) == failed(tunnel_id, _relay.FAIL_CONNECT, errno.ECONNREFUSED)
        except ConnectionRefusedError:
            pass
        client, tunnel_id, up = bench.answered(response_timeout_ms=50 if round_ % 2 else 0)
        if round_ % 2:  # response timeout
            assert wait_events(relay) == failed(tunnel_id, _relay.FAIL_RESPONSE_TIMEOUT)
        else:  # closed without an answer
            up.close()
            assert wait_events(relay) == failed(tunnel_id, _relay.FAIL_CLOSED)
        client, tunnel_id, up = bench.answered()  # aborted
        relay.abort(tunnel_id)
        assert wait_events(relay) == failed(tunnel_id, _relay.FAIL_ABORTED)
    relay.stop()  # joins the thread, so every close it does has happened
    assert relay.reap() == []
    bench.close()
    assert len(os.listdir("/proc/self/fd")) == before
