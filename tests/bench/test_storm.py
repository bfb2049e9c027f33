"""The reconnect storm's pure parts: wsgate.js's backoff schedule, the figures from the clients' traces, the loss
check, and how clients are split over processes."""

from __future__ import annotations

from typing import Any

import pytest

from bench.storm import OK, Trace, backoff_delay_s, check_delivery, split_range, summarize


@pytest.mark.parametrize(("attempt", "u", "expected"), [
    (0, 0.0, 0.0),        # full jitter: the first retry may come at once
    (0, 0.5, 0.25),       # attempt 0: uniform over [0, 0.5 s)
    (1, 0.5, 0.5),        # then the window doubles
    (3, 1.0, 4.0),
    (5, 1.0, 15.0),       # 16 s capped at backoffMaxMs
    (40, 0.5, 7.5),       # the exponent is capped at 30, the window at 15 s
])
def test_backoff_delay_follows_wsgate_js(attempt: int, u: float, expected: float) -> None:
    assert backoff_delay_s(attempt, u) == pytest.approx(expected)


def test_backoff_delay_takes_other_bases() -> None:
    assert backoff_delay_s(2, 1.0, base_s=0.1, max_s=0.3) == pytest.approx(0.3)


SUMMARY_CASES: list[tuple[str, list[Trace], dict[str, Any]]] = [
    ("all back at the first attempt",
     [Trace("u1", 100.0, [(100.5, OK)]), Trace("u2", 100.0, [(101.0, OK)])],
     {"dropped": 2, "back": 2, "all_back": True, "reconnect_s": 1.0, "attempts": 2, "failures": {},
      "failed_retried": 0, "failed_unretried": 0, "never_tried": 0, "handshakes_per_s": 2.0,
      "handshakes_per_second": [1, 1], "peak_handshakes_per_s": 1}),
    ("failures retried, then back",
     [Trace("u1", 100.0, [(100.2, "http 502"), (100.9, "refused"), (102.5, OK)]),
      Trace("u2", 100.0, [(100.4, OK)])],
     {"back": 2, "all_back": True, "reconnect_s": 2.5, "attempts": 4, "failures": {"http 502": 1, "refused": 1},
      "failed_retried": 2, "failed_unretried": 0, "handshakes_per_second": [1, 0, 1], "first_back_s": 0.4}),
    ("one gave up after a failure, one never tried",
     [Trace("u1", 100.0, [(100.2, "http 502")]), Trace("u2", 100.0, []), Trace("u3", 100.0, [(100.3, OK)])],
     {"dropped": 3, "back": 1, "all_back": False, "attempts": 2, "failures": {"http 502": 1},
      "failed_retried": 0, "failed_unretried": 1, "never_tried": 1, "reconnect_s": 0.3}),
    ("a second loss of the same user is its own trace",
     [Trace("u1", 100.0, [(100.1, OK)]), Trace("u1", 100.5, [(100.6, "reset"), (101.2, OK)])],
     {"dropped": 2, "back": 2, "attempts": 3, "failed_retried": 1, "failed_unretried": 0, "reconnect_s": 1.2}),
    ("nothing dropped",
     [],
     {"dropped": 0, "back": 0, "all_back": True, "reconnect_s": 0.0, "handshakes_per_s": 0.0,
      "peak_handshakes_per_s": 0, "handshakes_per_second": [], "first_back_s": None}),
]


@pytest.mark.parametrize(("traces", "expected"), [c[1:] for c in SUMMARY_CASES], ids=[c[0] for c in SUMMARY_CASES])
def test_summarize(traces: list[Trace], expected: dict[str, Any]) -> None:
    summary = summarize(traces, killed_at=100.0)
    assert {k: summary[k] for k in expected} == expected


DELIVERY_CASES: list[tuple[str, dict[str, str], dict[str, list[str]], dict[str, int]]] = [
    ("each once", {"u1": "1", "u2": "1"}, {"u1": ["1"], "u2": ["1"]},
     {"pushes_lost": 0, "unexpected_ids": 0, "duplicates_dropped": 0}),
    ("replayed and live: one after dedupe", {"u1": "1"}, {"u1": ["1", "1"]},
     {"pushes_lost": 0, "unexpected_ids": 0, "duplicates_dropped": 1}),
    ("lost", {"u1": "1", "u2": "1"}, {"u1": ["1"]},
     {"pushes_lost": 1, "unexpected_ids": 0, "duplicates_dropped": 0}),
    ("another id than the one answered", {"u1": "2"}, {"u1": ["1"]},
     {"pushes_lost": 1, "unexpected_ids": 1, "duplicates_dropped": 0}),
    ("an id for a user nobody pushed to", {}, {"u9": ["4", "4"]},
     {"pushes_lost": 0, "unexpected_ids": 1, "duplicates_dropped": 1}),
]


@pytest.mark.parametrize(("expected", "seen", "verdict"), [c[1:] for c in DELIVERY_CASES],
                         ids=[c[0] for c in DELIVERY_CASES])
def test_check_delivery(expected: dict[str, str], seen: dict[str, list[str]], verdict: dict[str, int]) -> None:
    assert check_delivery(expected, seen) == verdict


@pytest.mark.parametrize(("count", "parts", "slices"), [
    (10, 1, [(0, 10)]),
    (10, 3, [(0, 4), (4, 3), (7, 3)]),
    (10_000, 3, [(0, 3334), (3334, 3333), (6667, 3333)]),
    (2, 3, [(0, 1), (1, 1)]),  # no empty process
])
def test_split_range(count: int, parts: int, slices: list[tuple[int, int]]) -> None:
    assert split_range(count, parts) == slices
    assert sum(n for _, n in slices) == count
