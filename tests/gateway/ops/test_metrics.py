"""Metrics: Prometheus text and aggregation over workers through the shared directory."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.ops.metrics import Metrics


def test_metrics_render_prometheus_text_with_labels() -> None:
    metrics = Metrics()
    metrics.add("wsgate_requests_total", route="ws", status="101")
    metrics.add("wsgate_requests_total", route="ws", status="101")
    metrics.add("wsgate_active_tunnels", 1, route='we"ird')
    text = metrics.render()
    assert "# TYPE wsgate_requests_total counter" in text
    assert 'wsgate_requests_total{route="ws",status="101"} 2' in text
    assert 'wsgate_active_tunnels{route="we\\"ird"} 1' in text
    assert "# TYPE wsgate_upstream_errors_total counter" in text


def test_metrics_gauges_go_down() -> None:
    metrics = Metrics()
    metrics.add("wsgate_active_tunnels", 1, route="a")
    metrics.add("wsgate_active_tunnels", -1, route="a")
    assert metrics.value("wsgate_active_tunnels", route="a") == 0


def test_metrics_sum_other_workers_snapshots(tmp_path: Path) -> None:
    mine = Metrics(shared_dir=str(tmp_path))
    mine.add("wsgate_upgrades_total", 3, route="r", instance="i")
    (tmp_path / "999999.json").write_text(json.dumps([["wsgate_upgrades_total", [["instance", "i"], ["route", "r"]],
                                                       4]]))
    (tmp_path / "bad.json").write_text("{not json")
    assert 'wsgate_upgrades_total{instance="i",route="r"} 7' in mine.render()


def test_metrics_publish_is_read_by_another_worker(tmp_path: Path) -> None:
    first, second = Metrics(shared_dir=str(tmp_path)), Metrics(shared_dir=str(tmp_path))
    first.add("wsgate_requests_total", 5, route="x", status="200")
    first.publish()
    key = ("wsgate_requests_total", (("route", "x"), ("status", "200")))
    # Same pid: a worker never counts its own snapshot on top of its live values.
    assert key not in second.totals()
    (snapshot,) = tmp_path.glob("*.json")
    snapshot.rename(tmp_path / "4242.json")  # as if another worker had written it
    assert second.totals()[key] == 5


def test_metrics_without_shared_dir_publish_nothing(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.add("wsgate_requests_total", route="x", status="200")
    metrics.publish()
    assert metrics.totals() == {("wsgate_requests_total", (("route", "x"), ("status", "200"))): 1}
