"""Counters and gauges in Prometheus text format, aggregated over worker processes.

Each worker counts in plain dicts (cheap on the data path) and, when a shared directory is configured
(`WSGATE_METRICS_DIR`, set by the master for its workers), writes a JSON snapshot of its values there every
second and at exit. `/actuator/prometheus` in any worker sums its own live values with the other workers'
snapshots, so the figures are the whole gateway's, at most a second old for the other workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from math import copysign
from pathlib import Path

Labels = tuple[tuple[str, str], ...]


class SeriesKey:
    """One series' running value in this worker, for a caller that keeps it (`Metrics.series`): adding is
    `key.value += n`, no lookup (a tuple of tuples would be hashed afresh at every dict lookup: about 45
    instructions a nested tuple, four per key, and a handshake added to six series)."""

    __slots__ = ("labels", "name", "value")

    def __init__(self, name: str, labels: Labels) -> None:
        self.name = name
        self.labels = labels
        # -0.0 until something is added (adding any int, 0 included, leaves another value): a series nothing was
        # added to stays out of `render`, as with `add`.
        self.value = -0.0


_HELP: dict[str, tuple[str, str]] = {
    "wsgate_requests_total": ("counter", "Requests answered, by route and status."),
    "wsgate_upgrades_total": ("counter", "WebSocket upgrades relayed (101), by route and instance."),
    "wsgate_active_tunnels": ("gauge", "WebSocket tunnels open now, by route."),
    "wsgate_tunnel_bytes_total": ("counter", "Bytes relayed through closed tunnels, by route and direction."),
    "wsgate_http_bytes_total": ("counter", "HTTP body bytes relayed, by route and direction."),
    "wsgate_upstream_errors_total": ("counter", "Failed dials or bad answers, by route, instance and reason."),
    "wsgate_open_connections": ("gauge", "Client connections open now."),
    "wsgate_instance_tunnels": ("gauge", "WebSocket tunnels open now, by instance."),
}


def _untouched(value: float) -> bool:
    """Whether a `SeriesKey` was never added to: its value is still -0.0 (a negative one was added to)."""
    return value == 0 and copysign(1.0, value) < 0


class Metrics:
    """A worker's counters and gauges; `render` produces the gateway-wide Prometheus text."""

    def __init__(self, *, shared_dir: str | None = None) -> None:
        self._values: dict[tuple[str, Labels], float] = {}
        self._series: dict[tuple[str, Labels], SeriesKey] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._labelled: dict[str, tuple[str, Callable[[], Mapping[str, float]]]] = {}
        self._shared_dir = Path(shared_dir) if shared_dir else None
        self._pid = os.getpid()

    def add(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add `value` to the series `name{labels}` (negative values for gauges going down)."""
        # Labels are kept in call order here (no sorting on the hot path); `_own` normalises them.
        key = (name, tuple(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + value

    def series(self, name: str, **labels: str) -> SeriesKey:
        """The series `add(name, **labels)` adds to, for a caller that keeps it and adds with `key.value += n` (the
        same object for the same labels in the same order, so the keys stay as few as the series)."""
        ident = (name, tuple(labels.items()))
        key = self._series.get(ident)
        if key is None:
            key = self._series[ident] = SeriesKey(name, ident[1])
        return key

    @staticmethod
    def add_series(key: SeriesKey, value: float = 1.0) -> None:
        """`add` for a series the caller keeps (`series`)."""
        key.value += value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A label-less gauge whose value is read when rendering (nothing to update on the hot path)."""
        self._gauges[name] = read

    def gauge_by(self, name: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """A gauge with one label whose values ({label value: value}) are read when rendering."""
        self._labelled[name] = (label, read)

    def _own(self) -> dict[tuple[str, Labels], float]:
        merged: dict[tuple[str, Labels], float] = {(name, ()): read() for name, read in self._gauges.items()}
        for name, (label, read_all) in self._labelled.items():
            for label_value, value in read_all().items():
                merged[(name, ((label, label_value),))] = float(value)
        rows = [*((name, labels, value) for (name, labels), value in self._values.items()),
                *((key.name, key.labels, key.value) for key in self._series.values() if not _untouched(key.value))]
        for name, labels, value in rows:
            key = (name, tuple(sorted(labels)))
            merged[key] = merged.get(key, 0.0) + value
        return merged

    def value(self, name: str, **labels: str) -> float:
        """This worker's current value of one series."""
        return self._own().get((name, tuple(sorted(labels.items()))), 0.0)

    def publish(self) -> None:
        """Write this worker's snapshot for the others (no-op without a shared directory); OSError when it cannot."""
        if self._shared_dir is None:
            return
        data = [[name, list(labels), value] for (name, labels), value in self._own().items()]
        tmp = self._shared_dir / f".{self._pid}.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self._shared_dir / f"{self._pid}.json")

    def _others(self) -> Iterable[tuple[tuple[str, Labels], float]]:
        if self._shared_dir is None:
            return
        for path in self._shared_dir.glob("*.json"):
            if path.stem == str(self._pid):
                continue
            try:
                rows = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for name, labels, value in rows:
                yield (str(name), tuple(sorted((str(k), str(v)) for k, v in labels))), float(value)

    def totals(self) -> dict[tuple[str, Labels], float]:
        """Every series summed over this worker and the others' latest snapshots."""
        merged = self._own()
        for key, value in self._others():
            merged[key] = merged.get(key, 0.0) + value
        return merged

    def render(self) -> str:
        """Prometheus text exposition (format 0.0.4) of `totals`."""
        merged = self.totals()
        lines: list[str] = []
        for name in sorted({name for name, _ in merged} | set(_HELP)):
            kind, help_text = _HELP.get(name, ("untyped", name))
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for (series, labels), value in sorted(merged.items()):
                if series != name:
                    continue
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                number = str(int(value)) if value == int(value) else repr(value)
                lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
