"""The lingering close's rule (gateway.tunnel.linger), as a table: what a relay does with one side of a closing
tunnel."""

from __future__ import annotations

import pytest

from gateway.tunnel.linger import CloseTimeouts, Verdict, verdict

T = CloseTimeouts(flush_timeout_s=30.0, linger_s=5.0)


@pytest.mark.parametrize(("now_s", "flushed_since_s", "expected"), [
    (100.0, None, Verdict.WAIT),            # bytes still wait for the side, within the flush timeout
    (129.9, None, Verdict.WAIT),
    (130.0, None, Verdict.ABORT_TUNNEL),    # a peer that stopped reading cannot hold the tunnel
    (104.9, 100.0, Verdict.WAIT),           # flushed and shut down: still dropping what it sends
    (105.0, 100.0, Verdict.CLOSE_SIDE),     # lingered long enough
    (124.0, 120.0, Verdict.WAIT),           # the linger counts from the flush, not from the close
    (125.0, 120.0, Verdict.CLOSE_SIDE),
])
def test_verdict_for_a_side_of_a_closing_tunnel(now_s: float, flushed_since_s: float | None,
                                              expected: Verdict) -> None:
    assert verdict(T, now_s=now_s, closing_since_s=100.0, flushed_since_s=flushed_since_s) == expected


def test_no_linger_closes_a_side_once_flushed() -> None:
    assert verdict(CloseTimeouts(linger_s=0), now_s=1.0, closing_since_s=1.0, flushed_since_s=1.0) is Verdict.CLOSE_SIDE


@pytest.mark.parametrize(("timeouts", "interval_s"), [
    (CloseTimeouts(), 1.0),
    (CloseTimeouts(flush_timeout_s=0.2, linger_s=5), 0.05),
    (CloseTimeouts(flush_timeout_s=30, linger_s=0.1), 0.025),
    (CloseTimeouts(flush_timeout_s=0.001, linger_s=0), 0.005),
])
def test_closing_tunnels_are_checked_often_enough(timeouts: CloseTimeouts, interval_s: float) -> None:
    assert timeouts.check_interval_s == pytest.approx(interval_s)


def test_native_relay_gets_the_same_bounds_in_milliseconds() -> None:
    assert CloseTimeouts(flush_timeout_s=0.2, linger_s=1.5).native_ms() == {"flush_timeout_ms": 200, "linger_ms": 1500}


@pytest.mark.parametrize("kwargs", [{"flush_timeout_s": 0}, {"linger_s": -1}])
def test_invalid_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CloseTimeouts(**kwargs)
