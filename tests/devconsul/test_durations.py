"""Go duration strings as Consul reads and prints them."""

from __future__ import annotations

import pytest

from devconsul.durations import format_duration, parse_duration_ns
from devconsul.errors import BadRequest

MS = 1_000_000
S = 1_000 * MS


@pytest.mark.parametrize(("text", "ns"), [
    ("0", 0), ("0s", 0), ("5s", 5 * S), ("500ms", 500 * MS), ("1m30s", 90 * S), ("1.5s", 1500 * MS),
    ("1h", 3600 * S), ("250us", 250_000), ("250µs", 250_000), ("10ns", 10), ("-2s", -2 * S), (".5s", 500 * MS),
])
def test_parse_duration_accepts_go_syntax(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize(("text", "message"), [
    ("", 'time: invalid duration ""'),
    ("5", 'time: missing unit in duration "5"'),
    ("5x", 'time: unknown unit "x" in duration "5x"'),
    ("abc", 'time: invalid duration "abc"'),
    ("s", 'time: invalid duration "s"'),
])
def test_parse_duration_rejects_bad_input_with_go_message(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_duration_ns(text)
    assert info.value.reason == message


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (500 * MS, "500ms"), (10 * S, "10s"), (90 * S, "1m30s"), (60 * S, "1m0s"), (3600 * S, "1h0m0s"),
    (1500 * MS, "1.5s"), (1500, "1.5µs"), (7, "7ns"), (-2 * S, "-2s"),
])
def test_format_duration_matches_go(ns: int, text: str) -> None:
    assert format_duration(ns) == text
