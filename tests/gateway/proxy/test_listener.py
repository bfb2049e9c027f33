"""The listening sockets' options (gateway/proxy/listener.py), read back from real sockets."""

from __future__ import annotations

import socket

import pytest

from gateway.config.model import ServerSettings
from gateway.proxy.listener import apply_listen_options, kernel_seconds


@pytest.mark.parametrize(("seconds", "kernel"), [(0.0, 0), (0.001, 1), (0.5, 1), (1.0, 1), (2.5, 3), (30.0, 30)])
def test_defer_accept_is_whole_seconds_rounded_up(seconds: float, kernel: int) -> None:
    assert kernel_seconds(seconds) == kernel


# What Linux reads back: the period becomes a count of SYN-ACK retransmissions (1, 2, 4 ... s apart), and reading
# gives the whole time those take, so 2 s reads back as 3.
@pytest.mark.parametrize(("seconds", "read_back"), [(0.0, 0), (1.0, 1), (2.0, 3), (3.0, 3)])
def test_the_listening_socket_takes_defer_accept(seconds: float, read_back: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        apply_listen_options(sock, ServerSettings(defer_accept_s=seconds))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == read_back


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_settings_refuse_a_defer_accept_that_is_not_a_period(seconds: float) -> None:
    with pytest.raises(ValueError, match="defer accept must be >= 0"):
        ServerSettings(defer_accept_s=seconds)
