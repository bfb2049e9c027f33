"""bench/http.py's reading of wrk's `--latency` output: units, error counts, and refusing what it cannot read."""

from __future__ import annotations

import pytest

from bench.http import parse_wrk

WRK_OK = """Running 3s test @ http://127.0.0.1:1/api/item
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.51ms    1.02ms  20.00ms   90.00%
  Latency Distribution
     50%  {p50}
     75%    3.90ms
     90%    4.50ms
     99%  {p99}
  26697 requests in 3.00s, 3.21MB read
{extra}Requests/sec:   8899.00
Transfer/sec:      1.07MB
"""


@pytest.mark.parametrize(("p50", "p99", "extra", "want"), [
    ("3.51ms", "6.08ms", "", {"p50_ms": 3.51, "p99_ms": 6.08, "non2xx": 0.0, "socket_errors": 0.0}),
    ("420.00us", "1.20s", "", {"p50_ms": 0.42, "p99_ms": 1200.0}),
    ("3.51ms", "6.08ms", "  Non-2xx or 3xx responses: 17\n", {"non2xx": 17.0}),
    ("3.51ms", "6.08ms", "  Socket errors: connect 1, read 2, write 0, timeout 4\n", {"socket_errors": 7.0}),
])
def test_parse_wrk(p50: str, p99: str, extra: str, want: dict[str, float]) -> None:
    row = parse_wrk(WRK_OK.format(p50=p50, p99=p99, extra=extra))
    assert row["requests"] == 26697
    assert row["rps"] == 8899.0
    for key, value in want.items():
        assert row[key] == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "unable to connect to 127.0.0.1:1 Connection refused\n",
                                  WRK_OK.format(p50="3.51ms", p99="", extra="")])
def test_parse_wrk_refuses_output_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        parse_wrk(text)
