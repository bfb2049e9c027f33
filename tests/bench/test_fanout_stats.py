"""The fan-out benchmark's arithmetic: per-phase figures, medians over runs, ratios and the summary table."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import fanout_stats
from bench.fanout_stats import median_runs, per_event_us, per_thousand_ms, phase_figures, ratio, summary_lines

NAN = float("nan")


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@pytest.mark.parametrize(("cpu_s", "count", "ms", "us"), [
    (0.4, 1000, 400.0, 400.0),
    (1.2, 100_000, 12.0, 12.0),
    (0.0, 10, 0.0, 0.0),
    (0.5, 0, NAN, NAN),
])
def test_per_thousand_and_per_event(cpu_s: float, count: int, ms: float, us: float) -> None:
    assert same(per_thousand_ms(cpu_s, count), ms)
    assert same(per_event_us(cpu_s, count), us)


BASE: dict[str, Any] = {"clients": 5000, "connect_s": 4.0, "idle_rss_bytes": 5000 * 15 * 1024,
                        "deliveries": 100_000, "broadcast_s": 1.25, "broadcast_cpu_s": 1.2, "pushes": 6000,
                        "push_cpu_s": 2.4, "push_redis_cpu_s": 0.3}


@pytest.mark.parametrize(("change", "key", "expected"), [
    ({}, "connects_per_s", 1250.0),
    ({}, "idle_rss_kib_per_session", 15.0),
    ({}, "idle_rss_bytes_per_session", 15 * 1024.0),
    ({}, "deliveries_per_s", 80_000.0),
    ({}, "cpu_ms_per_1k_deliveries", 12.0),
    ({}, "cpu_ms_per_1k_pushes", 400.0),
    ({}, "redis_cpu_us_per_push", 50.0),
    ({"connect_s": 0.0}, "connects_per_s", NAN),
    ({"clients": 0}, "idle_rss_kib_per_session", NAN),
    ({"broadcast_s": 0.0}, "deliveries_per_s", NAN),
    ({"deliveries": 0}, "cpu_ms_per_1k_deliveries", NAN),
    ({"pushes": 0}, "cpu_ms_per_1k_pushes", NAN),
    ({"pushes": 0}, "redis_cpu_us_per_push", NAN),
])
def test_phase_figures(change: dict[str, Any], key: str, expected: float) -> None:
    assert same(phase_figures(**{**BASE, **change})[key], expected)


@pytest.mark.parametrize(("runs", "expected"), [
    # the median of three, whatever their order
    ([{"d": 3.0}, {"d": 1.0}, {"d": 2.0}], {"d": 2.0, "runs": 3}),
    # an even count averages the middle two
    ([{"d": 1.0}, {"d": 4.0}], {"d": 2.5, "runs": 2}),
    # NaN (a phase that measured nothing) is left out of the median, even in the first run
    ([{"d": NAN}, {"d": 5.0}, {"d": 7.0}], {"d": 6.0, "runs": 3}),
    ([{"d": NAN}, {"d": NAN}], {"d": NAN, "runs": 2}),
    # a key one run lacks takes the median of the runs that have it
    ([{"d": 1.0, "e": 9}, {"d": 3.0}], {"d": 2.0, "e": 9, "runs": 2}),
    # integers stay counts; strings and booleans come from the first run
    ([{"clients": 5000, "system": "ours", "stored": True}, {"clients": 4998, "system": "ours", "stored": True},
      {"clients": 5000, "system": "ours", "stored": True}], {"clients": 5000, "system": "ours", "stored": True,
                                                             "runs": 3}),
])
def test_median_runs(runs: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    got = median_runs(runs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert same(got[key], value) if isinstance(value, float) else got[key] == value


@pytest.mark.parametrize(("a", "b", "expected"), [
    (76_000.0, 96_000.0, 76 / 96),
    (10, 4, 2.5),
    (1.0, 0.0, NAN),
    (None, 2.0, NAN),
    (2.0, None, NAN),
    (NAN, 2.0, NAN),
    (True, 1.0, NAN),
])
def test_ratio(a: Any, b: Any, expected: float) -> None:
    assert same(ratio(a, b), expected)


def test_summary_lines_one_row_per_figure_and_a_column_per_present_system() -> None:
    medians = {
        "ours": {"runs": 3, "deliveries_per_s": 76_543.2, "p99_ms": 2.846, "idle_rss_kib_per_session": NAN},
        "socketio_node": {"runs": 3, "deliveries_per_s": 96_000.0, "p99_ms": 3.1},
    }
    lines = summary_lines(medians, ("ours", "socketio", "socketio_node"))
    assert len(lines) == 1 + len(fanout_stats.ROWS)
    assert lines[0].startswith("medians of 3 runs")
    assert lines[0].split() [-2:] == ["ours", "socketio_node"]
    rows = {line[:45].strip(): line[45:].split() for line in lines[1:]}
    assert rows["broadcast deliveries/s"] == ["76,543", "96,000"]
    assert rows["one-user push p99 ms"] == ["2.85", "3.10"]
    assert rows["RSS KiB per idle session"] == ["-", "-"]  # NaN in one, absent in the other


COLLAPSED = """<module> (wsnode/__main__.py:10);run (app.py:5);push (push_api.py:40);evalsha (store.py:12) 30
<module> (wsnode/__main__.py:10);run (app.py:5);push (push_api.py:40) 10
<module> (wsnode/__main__.py:10);run (app.py:5);send (sessions.py:7) 40
<module> (wsnode/__main__.py:10);run (app.py:5);f (r.py:1);f (r.py:1) 20
not a sample line
"""


def test_top_frames_self_and_inclusive_shares() -> None:
    total, self_top, incl_top = fanout_stats.top_frames(COLLAPSED, 3)
    assert total == 100
    assert self_top == [("send (sessions.py:7)", 40.0), ("evalsha (store.py:12)", 30.0), ("f (r.py:1)", 20.0)]
    # the root frames are on every stack; the recursive f counts once per stack, not twice
    assert incl_top == [("run (app.py:5)", 100.0), ("push (push_api.py:40)", 40.0), ("send (sessions.py:7)", 40.0)]


@pytest.mark.parametrize(("focus", "skip", "expected"), [
    ("", "", [("<module> (wsnode/__main__.py:10)", 100.0), ("run (app.py:5)", 100.0)]),
    ("r.py", "__main__", [("f (r.py:1)", 20.0)]),
    ("push", "__main__", [("push (push_api.py:40)", 40.0)]),
    ("push", "push_api", []),
])
def test_top_frames_inclusive_focus(focus: str, skip: str, expected: list[tuple[str, float]]) -> None:
    assert fanout_stats.top_frames(COLLAPSED, 2, focus=focus, skip=skip)[2] == expected


@pytest.mark.parametrize("text", ["", "garbage\n", "a;b notanumber\n"])
def test_top_frames_of_nothing(text: str) -> None:
    assert fanout_stats.top_frames(text, 5) == (0, [], [])


BEFORE = {"cmdstat_evalsha": {"calls": 100, "usec": 5000}, "cmdstat_publish": {"calls": 10, "usec": 30},
          "cmdstat_info": {"calls": 3, "usec": 90}}
AFTER = {"cmdstat_evalsha": {"calls": 1100, "usec": 45000}, "cmdstat_publish": {"calls": 1010, "usec": 4030},
         "cmdstat_info": {"calls": 3, "usec": 90}, "cmdstat_hset": {"calls": 500, "usec": 1500}}


@pytest.mark.parametrize(("events", "expected"), [
    # info did not run in between; hset is new since the first snapshot
    (1000, [("evalsha", 1.0, 40.0), ("publish", 1.0, 4.0), ("hset", 0.5, 1.5)]),
    (0, []),
])
def test_commandstats_per_event(events: int, expected: list[tuple[str, float, float]]) -> None:
    assert fanout_stats.commandstats_per_event(BEFORE, AFTER, events) == expected


@pytest.mark.parametrize(("systems", "run", "order"), [
    (["ours", "socketio", "socketio_node"], 0, ["ours", "socketio", "socketio_node"]),
    (["ours", "socketio", "socketio_node"], 1, ["socketio", "socketio_node", "ours"]),
    (["ours", "socketio", "socketio_node"], 2, ["socketio_node", "ours", "socketio"]),
    (["ours", "socketio", "socketio_node"], 3, ["ours", "socketio", "socketio_node"]),
    (["ours"], 5, ["ours"]),
    ([], 1, []),
])
def test_each_system_goes_first_in_turn(systems: list[str], run: int, order: list[str]) -> None:
    assert fanout_stats.run_order(systems, run) == order
