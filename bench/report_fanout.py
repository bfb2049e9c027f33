"""The three-system fan-out report (issue 19): a Markdown table for RESULTS.md and a plot, from bench.fanout's JSON.

    python -m bench.report_fanout bench/out/fanout.json [--plots bench/plots]

Pure except `write_systems_plot` (matplotlib, imported there) and `main` (reads the JSON, writes the PNG).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.fanout_stats import ROWS, ratio

SYSTEMS = ("ours", "socketio", "socketio_node")
LABELS = {"ours": "wsnode", "socketio": "python-socketio", "socketio_node": "Node socket.io"}


def _cell(fmt: str, value: Any) -> str:
    return "-" if not isinstance(value, int | float) or value != value else fmt.format(value)


def systems_table(fanout: Mapping[str, Any]) -> str:
    """One row per figure: each system's median, then wsnode over each peer."""
    present = [s for s in SYSTEMS if isinstance(fanout.get(s), Mapping)]
    peers = [s for s in present if s != "ours"] if "ours" in present else []
    head = ["figure", *(LABELS[s] for s in present), *(f"wsnode / {LABELS[p]}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt in ROWS:
        cells = [_cell(fmt, fanout[s].get(key)) for s in present]
        cells += [_cell("{:.2f}", ratio(fanout["ours"].get(key), fanout[p].get(key))) for p in peers]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def systems_series(fanout: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per system, each figure of ROWS relative to Node socket.io's (1.0 = level with Node; NaN when unmeasured)."""
    base = fanout.get("socketio_node")
    if not isinstance(base, Mapping):
        return {}
    return {s: [ratio(fanout[s].get(key), base.get(key)) for key, _, _ in ROWS]
            for s in SYSTEMS if isinstance(fanout.get(s), Mapping)}


def write_systems_plot(fanout: Mapping[str, Any], out_dir: Path) -> Path | None:
    """fanout_systems.png: grouped bars, every figure relative to Node socket.io; None without matplotlib or Node."""
    series = systems_series(fanout)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not series:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(series)
    for i, (system, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(ROWS))]
        ax.bar(xs, [v if v == v else 0.0 for v in values], width=width, label=LABELS[system])
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(range(len(ROWS))), [label for _, label, _ in ROWS], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("relative to Node socket.io (= 1)")
    ax.set_title("Fan-out, medians: higher is better for deliveries/s and connects/s, lower for the rest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "fanout_systems.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="bench.fanout --json output")
    parser.add_argument("--plots", type=Path, help="directory for fanout_systems.png")
    args = parser.parse_args(argv)
    fanout = json.loads(args.json.read_text())
    print(systems_table(fanout))
    if args.plots is not None:
        path = write_systems_plot(fanout, args.plots)
        print(f"plot: {path}" if path else "plot: not written (no matplotlib, or no Node socket.io figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
