"""The tunnel registry's reads take the relay's quiet reports first (gateway/tunnel/registry.py, `Tunnels._sync`)."""

from __future__ import annotations

from gateway.ops.metrics import Metrics
from gateway.routing.balancer import Balancer
from gateway.tunnel.registry import Tunnels


class QuietRelay:
    """Stands in for `NativeRelay`: each `reap` takes one waiting report, which opens one tunnel."""

    closed = False

    def __init__(self, tunnels: Tunnels, reports: list[object]) -> None:
        self.tunnels = tunnels
        self.reports = reports

    def pending(self) -> bool:
        return bool(self.reports)

    def reap(self) -> None:
        self.tunnels.live.add(self.reports.pop(0))  # type: ignore[arg-type]


def registry_with(reports: list[object]) -> Tunnels:
    tunnels = Tunnels(metrics=Metrics(), balancer=Balancer())
    tunnels._relay = QuietRelay(tunnels, reports)  # type: ignore[assignment]
    return tunnels


def test_reading_the_registry_takes_waiting_reports_first() -> None:
    first, second = object(), object()
    assert len(registry_with([first])) == 1
    assert list(registry_with([first])) == [first]
    assert registry_with([second])  # truth is its length


def test_a_report_taken_while_iterating_does_not_break_the_iteration() -> None:
    # `list()` asks `__iter__` (a sync) and then `__len__` (another) before it reads the iterator.
    first, second = object(), object()
    tunnels = registry_with([first, second])
    assert list(tunnels) == [first]
    assert set(tunnels) == {first, second}
