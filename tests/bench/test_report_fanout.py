"""The three-system fan-out report: the Markdown table, the plot's data, and the plot itself."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench import report_fanout
from bench.fanout_stats import ROWS

NAN = float("nan")
FANOUT: dict[str, Any] = {
    "ours": {"deliveries_per_s": 100_000.0, "cpu_ms_per_1k_pushes": 400.0, "idle_rss_kib_per_session": 15.0,
             "p99_ms": 2.0, "connects_per_s": NAN},
    "socketio": {"deliveries_per_s": 25_000.0, "cpu_ms_per_1k_pushes": 200.0, "p99_ms": 8.0},
    "socketio_node": {"deliveries_per_s": 50_000.0, "cpu_ms_per_1k_pushes": 500.0, "idle_rss_kib_per_session": 30.0,
                      "p99_ms": 4.0, "connects_per_s": 1500.0},
    "runs": [{}, {}, {}],
}


def rows(table: str) -> dict[str, list[str]]:
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


@pytest.mark.parametrize(("label", "cells"), [
    ("broadcast deliveries/s", ["100,000", "25,000", "50,000", "4.00", "2.00"]),
    ("server CPU ms per 1,000 one-user pushes", ["400", "200", "500", "2.00", "0.80"]),
    ("RSS KiB per idle session", ["15.0", "-", "30.0", "-", "0.50"]),
    ("connects/s (auth + room/session per connect)", ["-", "-", "1,500", "-", "-"]),
    ("Redis CPU us per one-user push", ["-", "-", "-", "-", "-"]),
])
def test_systems_table_rows(label: str, cells: list[str]) -> None:
    table = report_fanout.systems_table(FANOUT)
    assert table.splitlines()[0] == ("| figure | wsnode | python-socketio | Node socket.io | wsnode / python-socketio "
                                     "| wsnode / Node socket.io |")
    assert rows(table)[label] == cells


def test_systems_table_without_a_peer_has_no_column_for_it() -> None:
    table = report_fanout.systems_table({"ours": FANOUT["ours"], "socketio_node": FANOUT["socketio_node"]})
    assert table.splitlines()[0] == "| figure | wsnode | Node socket.io | wsnode / Node socket.io |"
    assert len(rows(table)) == len(ROWS)


@pytest.mark.parametrize(("fanout", "expected"), [
    (FANOUT, {"ours": 2.0, "socketio": 0.5, "socketio_node": 1.0}),
    ({"ours": FANOUT["ours"]}, {}),  # nothing to be relative to
])
def test_systems_series_is_relative_to_node(fanout: dict[str, Any], expected: dict[str, float]) -> None:
    series = report_fanout.systems_series(fanout)
    assert {s: v[0] for s, v in series.items()} == expected  # ROWS[0] is deliveries/s
    if series:
        assert all(len(v) == len(ROWS) for v in series.values())
        assert math.isnan(series["ours"][[k for k, _, _ in ROWS].index("redis_cpu_us_per_push")])


def test_write_systems_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    path = report_fanout.write_systems_plot(FANOUT, tmp_path)
    assert path is not None and path.name == "fanout_systems.png"
    assert path.read_bytes().startswith(b"\x89PNG")
    assert report_fanout.write_systems_plot({"ours": FANOUT["ours"]}, tmp_path / "none") is None
