"""The fan-out benchmark's arithmetic (pure): per-phase figures from raw counters, medians over runs, the summary.

`phase_figures` turns what one run of one system counted (deliveries, pushes, CPU seconds of the servers and of Redis,
clients and their connect time) into the figures issue 19 asks for; `median_runs` takes the median of each figure over
the runs of a system; `summary_lines` prints them side by side, one row per figure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

NAN = float("nan")

# (key, label, format): the summary rows, in print order. Absent or NaN figures print as "-".
ROWS: tuple[tuple[str, str, str], ...] = (
    ("deliveries_per_s", "broadcast deliveries/s", "{:,.0f}"),
    ("cpu_ms_per_1k_deliveries", "server CPU ms per 1,000 broadcast deliveries", "{:.1f}"),
    ("cpu_ms_per_1k_pushes", "server CPU ms per 1,000 one-user pushes", "{:.0f}"),
    ("redis_cpu_us_per_push", "Redis CPU us per one-user push", "{:.1f}"),
    ("idle_rss_kib_per_session", "RSS KiB per idle session", "{:.1f}"),
    ("connects_per_s", "connects/s (auth + room/session per connect)", "{:,.0f}"),
    ("p50_ms", "one-user push p50 ms", "{:.2f}"),
    ("p99_ms", "one-user push p99 ms", "{:.2f}"),
)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def per_thousand_ms(cpu_s: float, count: int) -> float:
    """CPU milliseconds per 1,000 events; NaN when nothing happened."""
    return 1e6 * cpu_s / count if count > 0 else NAN


def per_event_us(cpu_s: float, count: int) -> float:
    """CPU microseconds per event; NaN when nothing happened."""
    return 1e6 * cpu_s / count if count > 0 else NAN


def phase_figures(*, clients: int, connect_s: float, idle_rss_bytes: float, deliveries: int, broadcast_s: float,
                  broadcast_cpu_s: float, pushes: int, push_cpu_s: float, push_redis_cpu_s: float) -> dict[str, float]:
    """The figures of one run of one system, from what it counted."""
    return {
        "connects_per_s": clients / connect_s if connect_s > 0 else NAN,
        "idle_rss_bytes_per_session": idle_rss_bytes / clients if clients > 0 else NAN,
        "idle_rss_kib_per_session": idle_rss_bytes / clients / 1024 if clients > 0 else NAN,
        "deliveries_per_s": deliveries / broadcast_s if broadcast_s > 0 else NAN,
        "cpu_ms_per_1k_deliveries": per_thousand_ms(broadcast_cpu_s, deliveries),
        "cpu_ms_per_1k_pushes": per_thousand_ms(push_cpu_s, pushes),
        "redis_cpu_us_per_push": per_event_us(push_redis_cpu_s, pushes),
    }


def median_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per key, the median of the finite numbers the runs hold (NaN when none); other values from the first run."""
    out: dict[str, Any] = {}
    for run in runs:
        for key, value in run.items():
            if key in out:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                numbers = [v for r in runs if (v := _finite(r.get(key))) is not None]
                out[key] = statistics.median(numbers) if numbers else NAN
            else:
                out[key] = value
    out["runs"] = len(runs)
    return out


def ratio(a: Any, b: Any) -> float:
    """a / b, NaN when either is missing or b is zero."""
    x, y = _finite(a), _finite(b)
    return x / y if x is not None and y is not None and y != 0 else NAN


def summary_lines(medians: Mapping[str, Mapping[str, Any]], systems: Sequence[str]) -> list[str]:
    """A fixed-width table: one row per figure, one column per system present in `medians`."""
    present = [s for s in systems if s in medians]
    label_w = max(len(label) for _, label, _ in ROWS)
    widths = [max(12, len(s)) for s in present]
    runs = {int(medians[s].get("runs", 1)) for s in present}
    title = f"medians of {runs.pop()} runs" if len(runs) == 1 else "medians"
    lines = [f"{title:<{label_w}}  " + "  ".join(f"{s:>{w}}" for s, w in zip(present, widths, strict=True))]
    for key, label, fmt in ROWS:
        cells = []
        for system, width in zip(present, widths, strict=True):
            value = _finite(medians[system].get(key))
            cells.append(f"{'-' if value is None else fmt.format(value):>{width}}")
        lines.append(f"{label:<{label_w}}  " + "  ".join(cells))
    return lines


def top_frames(collapsed: str, n: int, *, focus: str = "",
               skip: str = "__main__") -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw (collapsed) stacks, "root;...;leaf COUNT" a line: the sample total, then the `n` frames
    with the most samples as the leaf (self %) and the `n` on the most stacks at all (inclusive %), largest first.
    The inclusive ranking takes only frames containing `focus` and not `skip` (the roots are on every stack)."""
    total = 0
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):  # a recursive frame counts once per stack
            if focus in frame and not (skip and skip in frame):
                incl_counts[frame] = incl_counts.get(frame, 0) + count

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(frame, 100 * c / total) for frame, c in ranked]

    return total, top(self_counts), top(incl_counts)


def commandstats_per_event(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                           events: int) -> list[tuple[str, float, float]]:
    """From two Redis INFO commandstats snapshots: (command, calls per event, Redis usec per event) for each command
    that ran in between, most Redis time first. Time inside a script counts under EVALSHA, not its commands."""
    if events <= 0:
        return []
    rows = []
    for name, stats in after.items():
        prior = before.get(name, {})
        calls = int(stats.get("calls", 0)) - int(prior.get("calls", 0))
        usec = float(stats.get("usec", 0)) - float(prior.get("usec", 0))
        if calls > 0:
            rows.append((name.removeprefix("cmdstat_"), calls / events, usec / events))
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def run_order(systems: list[str], run: int) -> list[str]:
    """The systems of run number `run` (from 0), rotated by one per run.

    The first system of a run meets a machine that has been idle for a while; in fixed order that advantage always
    went to wsnode (its first run was its fastest in both full runs of 2026-12-05), so each system goes first in turn.
    """
    k = run % len(systems) if systems else 0
    return systems[k:] + systems[:k]
