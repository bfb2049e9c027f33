"""The benchmark report's pure parts: figures against targets, the generated section and its merge, plot data."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.report import END, START, Figure

RELAY: dict[str, Any] = {
    "rows": [
        {"relay": "gateway", "size": 100, "cpu_us_per_msg": 9.0, "p50_ms": 0.5, "p99_ms": 1.5},
        {"relay": "nginx", "size": 100, "cpu_us_per_msg": 10.0, "p50_ms": 0.4, "p99_ms": 1.0},
        {"relay": "gateway", "size": 4096.0, "cpu_us_per_msg": 14.0, "p50_ms": 0.6, "p99_ms": 1.6},
        {"relay": "nginx", "size": 4096, "cpu_us_per_msg": 12.0, "p50_ms": 0.5, "p99_ms": 1.1},
    ],
    "cpu_ratio": {"4096": 14 / 12, "100": 0.9},  # JSON turns the int keys into strings
    "handshakes_per_s": {"gateway": 900.0, "nginx": 1000.0},
    "idle_rss_bytes_per_tunnel": {"gateway": 3000.0, "nginx": 10000.0},
}
FANOUT: dict[str, Any] = {
    "ours": {"clients": 1000, "deliveries_per_s": 50000.0, "p50_ms": 1.0, "p99_ms": 4.0,
             "idle_rss_bytes_per_session": 20 * 1024},
    "socketio": {"clients": 1000, "deliveries_per_s": 20000.0, "p50_ms": 3.0, "p99_ms": 9.0},
}
SCALEOUT: dict[str, Any] = {"steps": [
    {"nodes": n, "node_messages_per_push": 1.0, "node_messages_per_broadcast": float(n)} for n in (1, 2, 3, 4)]}


def by_name(figures: list[Figure]) -> dict[str, Figure]:
    return {f.name: f for f in figures}


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("relay CPU per message, gateway/nginx, 100 B", "0.90", True),
    ("relay CPU per message, gateway/nginx, 4096 B", "1.17", False),
    ("handshakes/s, gateway/nginx", "0.90", True),
    ("RSS per idle tunnel, gateway/nginx", "0.30", True),
])
def test_relay_figures_compare_gateway_to_nginx(name: str, value: str, ok: bool) -> None:
    figure = by_name(report.relay_figures(RELAY))[name]
    assert (figure.value, figure.ok) == (value, ok)


def test_relay_figures_order_sizes_numerically() -> None:
    names = [f.name for f in report.relay_figures(RELAY)][:2]
    assert names == ["relay CPU per message, gateway/nginx, 100 B", "relay CPU per message, gateway/nginx, 4096 B"]


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("broadcast deliveries/s, wsnode/python-socketio", "2.50", True),
    ("cross-node one-user push p99 (ms)", "4.00", True),
    ("RSS per idle session (KiB)", "20.0", False),
])
def test_fanout_figures_against_targets(name: str, value: str, ok: bool) -> None:
    figure = by_name(report.fanout_figures(FANOUT))[name]
    assert (figure.value, figure.ok) == (value, ok)


NODE_FANOUT: dict[str, Any] = {
    "ours": {"deliveries_per_s": 100_000.0, "cpu_ms_per_1k_pushes": 400.0, "redis_cpu_us_per_push": 60.0,
             "idle_rss_bytes_per_session": 15 * 1024, "connects_per_s": 1000.0},
    "socketio_node": {"deliveries_per_s": 50_000.0, "cpu_ms_per_1k_pushes": 265.0, "redis_cpu_us_per_push": 30.0,
                      "idle_rss_bytes_per_session": 14.3 * 1024, "connects_per_s": 1000.0},
}


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("broadcast deliveries/s, wsnode/Node socket.io", "2.00", True),
    ("server CPU per one-user push (ours stored), wsnode/Node socket.io", "1.51", False),
    ("Redis CPU per one-user push, wsnode/Node socket.io", "2.00", False),
    ("RSS per idle session, wsnode/Node socket.io", "1.05", False),
    ("connects/s, wsnode/Node socket.io", "1.00", True),
])
def test_node_figures_against_issue_19_goals(name: str, value: str, ok: bool) -> None:
    figure = by_name(report.fanout_figures(NODE_FANOUT))[name]
    assert (figure.value, figure.ok) == (value, ok)


def test_node_figures_without_node_are_not_measured() -> None:
    assert all(f.ok is None for f in report.node_figures(FANOUT)) and len(report.node_figures(FANOUT)) == 5


@pytest.mark.parametrize("results", [{}, {"relay": None}, {"relay": {"cpu_ratio": {}}},
                                     {"fanout": {"ours": {"p99_ms": float("nan")}}}, {"soak": {"fds_end": 3}}])
def test_all_figures_missing_data_is_not_measured_not_a_crash(results: dict[str, Any]) -> None:
    figures = report.all_figures(results)
    assert figures and all(f.ok is None and f.value == "not measured" for f in figures)


@pytest.mark.parametrize(("soak", "drops", "fds"), [
    ({"drops": 0, "fds_baseline": 40, "fds_end": 40}, True, True),
    ({"lost": 3, "fds_before": 40, "fds_after": 45}, False, False),
    ({"dropped": 0, "fds_delta": -1}, True, True),
    ({"drops": 0, "fds_baseline": {"gateway": 30, "node-0": 20}, "fds_after": {"gateway": 30, "node-0": 19}}, True,
     True),
    ({"drops": 0, "fds_baseline": {"gateway": 30, "node-0": 20}, "fds_after": {"gateway": 31, "node-0": 19}}, True,
     False),
    ({"drops": 0, "fds_baseline": {"node-0": 20, "node-0-redis-pool": 3},
      "fds_after": {"node-0": 20, "node-0-redis-pool": 64}}, True, True),
])
def test_soak_figures_read_the_usual_key_names(soak: dict[str, Any], drops: bool, fds: bool) -> None:
    assert [f.ok for f in report.soak_figures(soak)] == [drops, fds]


@pytest.mark.parametrize(("per_push", "ok"), [((1.0, 1.0, 1.0, 1.0), True), ((1.0, 2.0, 3.0, 4.0), False)])
def test_scaleout_figure_wants_messages_per_push_independent_of_nodes(per_push: tuple[float, ...], ok: bool) -> None:
    steps = [{"nodes": i + 1, "node_messages_per_push": v, "node_messages_per_broadcast": float(i + 1)}
             for i, v in enumerate(per_push)]
    push, broadcast = report.scaleout_figures({"steps": steps})
    assert (push.ok, broadcast.ok) == (ok, True)
    assert "1/2/3/4 nodes" in push.name


def generated(tag: str = "x") -> str:
    return report.render_generated([Figure("f", "1", "t", True, "bench.x")], machine={"nproc": "2"},
                                   versions={"python": "3"}, command=f"python -m bench {tag}", date="d", plots=[],
                                   runs={"relay": "ran"})


def test_render_generated_is_wrapped_in_markers_with_command_and_table() -> None:
    text = generated()
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "`python -m bench x`" in text and "| f | 1 | t | met | `bench.x` |" in text


HAND = "## Relay (gateway vs nginx)\n\nwritten by hand\n\n## Soak\n\nalso by hand\n"


@pytest.mark.parametrize(("existing", "head"), [
    ("", "# wsgate benchmark results\n\n"),
    (HAND, ""),
    ("# wsgate benchmark results\n\n" + HAND, "# wsgate benchmark results\n\n"),
    ("# Title\n\n" + START + "\nold generated\n" + END + "\n\n" + HAND, "# Title\n\n"),
    (START + "\nold generated\n" + END + "\n" + HAND, ""),
])
def test_merge_generated_keeps_hand_written_sections(existing: str, head: str) -> None:
    new = generated("new")
    tail = "\n" + HAND if HAND in existing else ""
    assert report.merge_generated(existing, new) == head + new + tail


def test_merge_generated_twice_is_stable() -> None:
    once = report.merge_generated("# T\n\n" + HAND, generated())
    assert report.merge_generated(once, generated()) == once
    assert once.startswith("# T\n\n" + START)


def test_plot_series_groups_relay_rows_and_fanout_points() -> None:
    results = {"relay": RELAY, "fanout": FANOUT,
               "fanout_runs": [FANOUT, {"ours": {**FANOUT["ours"], "clients": 500, "deliveries_per_s": 1.0}}]}
    series = report.plot_series(results)
    assert series["cpu"]["gateway"] == [(100, 9.0), (4096, 14.0)]
    assert series["fanout"]["ours"] == [(500, 1.0), (1000, 50000.0)]
    assert series["fanout"]["socketio"] == [(1000, 20000.0)]
    assert "socketio_node" not in series["fanout"]
    assert series["latency"]["ours cross-node push"] == (1.0, 4.0)
    assert series["latency"]["gateway 4096 B rtt"] == (0.6, 1.6)


def test_plot_series_takes_node_socketio_as_a_third_system() -> None:
    node = {"clients": 1000, "deliveries_per_s": 40000.0, "p50_ms": 0.7, "p99_ms": 7.0}
    series = report.plot_series({"fanout": {**FANOUT, "socketio_node": node}})
    assert series["fanout"]["socketio_node"] == [(1000, 40000.0)]
    assert series["latency"]["socketio_node cross-node push"] == (0.7, 7.0)


def test_write_plots_writes_pngs(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    paths = report.write_plots({"relay": RELAY, "fanout": FANOUT}, tmp_path)
    assert [p.name for p in paths] == ["relay_cpu_per_message.png", "fanout_deliveries.png",
                                       "latency_percentiles.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_scaleout_table_has_a_row_per_node_count() -> None:
    steps = [{**step, "gateways": 2, "redis_commands_per_push": 15.0, "redis_cpu_us_per_push": 90.0, "p50_ms": 1.0,
              "p99_ms": 3.0} for step in SCALEOUT["steps"]]
    table = report.scaleout_table({"steps": steps}).splitlines()
    assert table[-1] == "| 4 | 2 | 1.00 | 15.0 | 90 | 1.0 / 3.0 | 4.00 |"
    assert len(table) == 4 + 4
    assert report.scaleout_table(None) == ""


def shard_steps(ratios: tuple[float, ...], totals: tuple[float, ...]) -> list[dict[str, Any]]:
    pairs = enumerate(zip(ratios, totals, strict=True))
    return [{"shards": 2 ** i, "users_per_shard": [10] * 2 ** i, "max_mean_ratio": r,
             "push_commands_per_push_total": t, "push_commands_per_push_per_shard": [t / 2 ** i] * 2 ** i,
             "redis_cpu_us_per_push_per_shard": [20.0] * 2 ** i} for i, (r, t) in pairs]


@pytest.mark.parametrize(("ratios", "totals", "ok"), [
    ((1.0, 1.03, 1.05), (16.0, 16.0, 16.0), (True, True)),
    ((1.0, 1.5, 1.9), (16.0, 16.0, 16.0), (False, True)),
    ((1.0, 1.03, 1.05), (16.0, 24.0, 32.0), (True, False)),
])
def test_shards_figures_want_an_even_split_and_a_constant_total(ratios: tuple[float, ...], totals: tuple[float, ...],
                                                                 ok: tuple[bool, bool]) -> None:
    split, total = report.shards_figures({"steps": shard_steps(ratios, totals)})
    assert (split.ok, total.ok) == ok
    assert "1/2/4 shards" in split.name
    assert report.shards_figures(None)[0].ok is None


def test_shards_table_has_a_row_per_shard_count() -> None:
    table = report.shards_table({"steps": shard_steps((1.0, 1.03), (16.0, 16.0))}).splitlines()
    assert table[-1] == "| 2 | 10 / 10 | 8.00 / 8.00 | 1.03 | 20 / 20 |"
    assert len(table) == 4 + 2
    assert report.shards_table(None) == ""
