"""The benchmark report: figures against targets from the benchmarks' JSON, RESULTS.md's generated part, PNG plots.

Pure except `write_plots` (matplotlib, imported there) and `machine`/`versions` (read /proc and run `--version`s).
The generated part of RESULTS.md lives between two markers; hand-written sections around it are kept as they are.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FANOUT_SYSTEMS = ("ours", "socketio", "socketio_node")
START = "<!-- bench:generated:start -->"
END = "<!-- bench:generated:end -->"
KIB = 1024


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure and its target; `ok` is None when the benchmark did not produce it."""

    name: str
    value: str
    target: str
    ok: bool | None
    source: str


def _get(data: Mapping[str, Any] | None, *path: str) -> Any:
    """data[path[0]][path[1]]...; None when any step is missing."""
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _figure(name: str, value: float | None, target: str, check: Callable[[float], bool], source: str,
            fmt: str = "{:.2f}") -> Figure:
    if value is None or value != value:  # missing or NaN
        return Figure(name, "not measured", target, None, source)
    return Figure(name, fmt.format(value), target, check(value), source)


def relay_figures(relay: Mapping[str, Any] | None) -> list[Figure]:
    """CPU ratio per size, handshake ratio and idle memory ratio, gateway over nginx."""
    src = "bench.relay"
    out: list[Figure] = []
    ratios = _get(relay, "cpu_ratio")
    if isinstance(ratios, Mapping) and ratios:
        for size in sorted(ratios, key=lambda s: int(s)):
            out.append(_figure(f"relay CPU per message, gateway/nginx, {int(size)} B", _num(ratios[size]),
                               "<= 1.0", lambda v: v <= 1.0, src))
    else:
        out.append(_figure("relay CPU per message, gateway/nginx", None, "<= 1.0", lambda v: v <= 1.0, src))
    hs = _get(relay, "handshakes_per_s")
    hs_ratio = _ratio(_get(hs, "gateway"), _get(hs, "nginx"))
    out.append(_figure("handshakes/s, gateway/nginx", hs_ratio, ">= 0.8", lambda v: v >= 0.8, src))
    idle = _get(relay, "idle_rss_bytes_per_tunnel")
    idle_ratio = _ratio(_get(idle, "gateway"), _get(idle, "nginx"))
    out.append(_figure("RSS per idle tunnel, gateway/nginx", idle_ratio, "<= 0.5", lambda v: v <= 0.5, src))
    return out


def _ratio(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    if x is None or y is None or y == 0:
        return None
    return x / y


def fanout_figures(fanout: Mapping[str, Any] | None) -> list[Figure]:
    """Broadcast deliveries/s ratio, cross-node p99, RSS per idle session; then issue 19's goals against Node."""
    src = "bench.fanout"
    ratio = _ratio(_get(fanout, "ours", "deliveries_per_s"), _get(fanout, "socketio", "deliveries_per_s"))
    idle = _num(_get(fanout, "ours", "idle_rss_bytes_per_session"))
    return [
        _figure("broadcast deliveries/s, wsnode/python-socketio", ratio, ">= 2", lambda v: v >= 2, src),
        _figure("cross-node one-user push p99 (ms)", _num(_get(fanout, "ours", "p99_ms")), "< 5 ms",
                lambda v: v < 5, src),
        _figure("RSS per idle session (KiB)", None if idle is None else idle / KIB, "<= 16 KiB",
                lambda v: v <= 16, src, "{:.1f}"),
        *node_figures(fanout),
    ]


# Issue 19's goals against Node.js socket.io + @socket.io/redis-adapter: (key, name, target, check).
NODE_GOALS: tuple[tuple[str, str, str, Callable[[float], bool]], ...] = (
    ("deliveries_per_s", "broadcast deliveries/s, wsnode/Node socket.io", ">= 2", lambda v: v >= 2),
    ("cpu_ms_per_1k_pushes", "server CPU per one-user push (ours stored), wsnode/Node socket.io", "<= 0.8",
     lambda v: v <= 0.8),
    ("redis_cpu_us_per_push", "Redis CPU per one-user push, wsnode/Node socket.io", "<= 1", lambda v: v <= 1),
    ("idle_rss_bytes_per_session", "RSS per idle session, wsnode/Node socket.io", "<= 0.5", lambda v: v <= 0.5),
    ("connects_per_s", "connects/s, wsnode/Node socket.io", ">= 1", lambda v: v >= 1),
)


def node_figures(fanout: Mapping[str, Any] | None) -> list[Figure]:
    """wsnode over Node socket.io for each goal of issue 19 that bench.fanout measures (not the reconnect storm)."""
    return [_figure(name, _ratio(_get(fanout, "ours", key), _get(fanout, "socketio_node", key)), target, check,
                    "bench.fanout")
            for key, name, target, check in NODE_GOALS]


_DROP_KEYS = ("drops", "dropped", "lost", "missing", "lost_messages")
_FD_KEYS = (("fds_baseline", "fds_after"), ("fds_baseline", "fds_end"), ("fds_before", "fds_after"),
            ("baseline_fds", "final_fds"))


def soak_figures(soak: Mapping[str, Any] | None) -> list[Figure]:
    """Messages dropped during the soak, and open fds back to the baseline afterwards."""
    src = "bench.soak"
    drops = next((_num(soak[k]) for k in _DROP_KEYS if soak is not None and _num(soak.get(k)) is not None), None)
    fd_delta: float | None = None
    if soak is not None:
        if _num(soak.get("fds_delta")) is not None:
            fd_delta = _num(soak["fds_delta"])
        for before, after in _FD_KEYS:
            a, b = soak.get(before), soak.get(after)
            if isinstance(a, Mapping) and isinstance(b, Mapping) and a and set(a) <= set(b):
                # Per process (gateway, nodes): what is still open beyond each one's own baseline. A node's Redis
                # pool keeps up to its bound of idle connections by design; bench.soak counts them apart.
                pairs = [(_num(a[k]), _num(b[k])) for k in a if not str(k).endswith("redis-pool")]
                if all(x is not None and y is not None for x, y in pairs):
                    fd_delta = float(sum(max(0.0, y - x) for x, y in pairs if x is not None and y is not None))
                    break
            else:
                x, y = _num(a), _num(b)
                if x is not None and y is not None:
                    fd_delta = y - x
                    break
    return [_figure("soak: messages dropped", drops, "0", lambda v: v == 0, src, "{:.0f}"),
            _figure("soak: open fds above baseline after clients left", fd_delta, "<= 0", lambda v: v <= 0, src,
                    "{:+.0f}")]


def scaleout_figures(scaleout: Mapping[str, Any] | None) -> list[Figure]:
    """Messages per one-user push across node counts (constant), per broadcast (= node count)."""
    src = "bench.scaleout"
    steps = _get(scaleout, "steps")
    if not isinstance(steps, list) or not steps:
        return [Figure("scale-out: node messages per one-user push", "not measured", "independent of nodes", None,
                       src)]
    per_push = [float(s["node_messages_per_push"]) for s in steps]
    per_bcast = [float(s["node_messages_per_broadcast"]) for s in steps]
    nodes = [int(s["nodes"]) for s in steps]
    label = "/".join(str(n) for n in nodes)
    return [
        Figure(f"scale-out: node messages per one-user push at {label} nodes",
               ", ".join(f"{v:.2f}" for v in per_push), "independent of nodes", max(per_push) - min(per_push) < 0.01,
               src),
        Figure(f"scale-out: node messages per broadcast at {label} nodes", ", ".join(f"{v:.2f}" for v in per_bcast),
               "= node count (by design)", all(abs(v - n) < 0.01 for v, n in zip(per_bcast, nodes, strict=True)),
               src),
    ]


def scaleout_table(scaleout: Mapping[str, Any] | None) -> str:
    """Per node count: what one one-user push and one broadcast cost (empty when not measured)."""
    steps = _get(scaleout, "steps")
    if not isinstance(steps, list) or not steps:
        return ""
    rows = ["### Scale-out (`python -m bench.scaleout`)", "",
            "| nodes | gateways | node messages / push | Redis commands / push | Redis CPU µs / push "
            "| push p50 / p99 ms | node messages / broadcast |", "|---|---|---|---|---|---|---|"]
    for st in steps:
        cpu = _num(st.get("redis_cpu_us_per_push"))
        rows.append(f"| {st['nodes']} | {st.get('gateways', '?')} | {float(st['node_messages_per_push']):.2f} "
                    f"| {float(st.get('redis_commands_per_push', float('nan'))):.1f} "
                    f"| {'—' if cpu is None else f'{cpu:.0f}'} "
                    f"| {float(st.get('p50_ms', float('nan'))):.1f} / {float(st.get('p99_ms', float('nan'))):.1f} "
                    f"| {float(st['node_messages_per_broadcast']):.2f} |")
    return "\n".join(rows)


def shards_figures(shards: Mapping[str, Any] | None) -> list[Figure]:
    """Redis sharded by user: each shard's share of the push work, and the total per push, across shard counts."""
    src = "bench.shards"
    steps = _get(shards, "steps")
    if not isinstance(steps, list) or not steps:
        return [Figure("shards: busiest shard / mean shard load", "not measured", "<= 1.2 (the load divides)", None,
                       src)]
    counts = "/".join(str(int(st["shards"])) for st in steps)
    ratios = [float(st["max_mean_ratio"]) for st in steps]
    totals = [float(st["push_commands_per_push_total"]) for st in steps]
    return [
        Figure(f"shards: busiest shard / mean shard load (push commands) at {counts} shards",
               ", ".join(f"{v:.2f}" for v in ratios), "<= 1.2 (the load divides)", max(ratios) <= 1.2, src),
        Figure(f"shards: Redis commands per one-user push, all shards together, at {counts} shards",
               ", ".join(f"{v:.2f}" for v in totals), "independent of shards", max(totals) - min(totals) < 0.5,
               src),
    ]


def shards_table(shards: Mapping[str, Any] | None) -> str:
    """Per shard count: users, push commands per push and Redis CPU per push on each shard (empty when not run)."""
    steps = _get(shards, "steps")
    if not isinstance(steps, list) or not steps:
        return ""
    rows = ["### Redis sharded by user (`python -m bench.shards`)", "",
            "| shards | users per shard | push commands per push, per shard | busiest / mean "
            "| Redis CPU µs per push, per shard |", "|---|---|---|---|---|"]
    for st in steps:
        cpu = st.get("redis_cpu_us_per_push_per_shard") or []
        rows.append(f"| {st['shards']} | {' / '.join(str(u) for u in st['users_per_shard'])} "
                    f"| {' / '.join(f'{float(v):.2f}' for v in st['push_commands_per_push_per_shard'])} "
                    f"| {float(st['max_mean_ratio']):.2f} "
                    f"| {' / '.join(f'{float(v):.0f}' for v in cpu) or '—'} |")
    return "\n".join(rows)


def storm_table(storm: Mapping[str, Any] | None) -> str:
    """The reconnect storm after a node is killed (empty when not run)."""
    if not storm:
        return ""
    failures = ", ".join(f"{kind} {count}" for kind, count in sorted((storm.get("failures") or {}).items())) or "none"
    return "\n".join([
        "### Reconnect storm (`python -m bench.storm`)", "",
        "| clients | gateway workers | dropped by the kill | all back after | handshakes/s | attempts "
        "| failed attempts | pushes accepted during the storm | lost |", "|---|---|---|---|---|---|---|---|---|",
        f"| {storm['clients']} | {storm['gateway_workers']} | {storm['dropped']} | {float(storm['reconnect_s']):.2f} s "
        f"| {float(storm['handshakes_per_s']):.0f} | {storm['attempts']} | {failures} | {storm['pushes_accepted']} "
        f"| {storm['pushes_lost']} |",
        "", f"Clients spread their first retry over {storm['jitter_s']} s (uniform jitter), as wsgate.js does."])


def all_figures(results: Mapping[str, Mapping[str, Any] | None]) -> list[Figure]:
    """Every figure of the report, in table order."""
    return (relay_figures(results.get("relay")) + fanout_figures(results.get("fanout"))
            + soak_figures(results.get("soak")) + scaleout_figures(results.get("scaleout"))
            + shards_figures(results.get("shards")))


def figures_table(figures: list[Figure]) -> str:
    """A Markdown table of the figures."""
    marks = {True: "met", False: "**missed**", None: "—"}
    rows = ["| figure | measured | target | verdict | from |", "|---|---|---|---|---|"]
    rows += [f"| {f.name} | {f.value} | {f.target} | {marks[f.ok]} | `{f.source}` |" for f in figures]
    return "\n".join(rows)


def render_generated(figures: list[Figure], *, machine: Mapping[str, str], versions: Mapping[str, str],
                     command: str, date: str, plots: list[str], runs: Mapping[str, str],
                     notes: tuple[str, ...] = (), sections: tuple[str, ...] = ()) -> str:
    """The generated part of RESULTS.md, markers included."""
    lines = [START, "## Summary (generated by `python -m bench`)", "",
             f"Run on {date} with `{command}`. Everything below the end marker is written by hand and kept.", ""]
    lines += [*notes, ""] if notes else []
    lines += [figures_table(figures), ""]
    for section in sections:
        if section:
            lines += [section, ""]
    lines += ["### Benchmarks run", ""]
    lines += [f"- `{name}`: {state}" for name, state in runs.items()]
    lines += ["", "### Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "### Versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions.items()]
    if plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def merge_generated(existing: str, generated: str) -> str:
    """`existing` with its generated part replaced by `generated`, or `generated` put at the top (after a title)."""
    start, end = existing.find(START), existing.find(END)
    if start >= 0 and end > start:
        rest = existing[end + len(END):].lstrip("\n")
        return existing[:start] + generated + ("\n" + rest if rest else "")
    if existing.startswith("# "):
        title, _, rest = existing.partition("\n")
        return f"{title}\n\n{generated}\n{rest.lstrip(chr(10))}" if rest.strip() else f"{title}\n\n{generated}"
    if not existing.strip():
        return f"# wsgate benchmark results\n\n{generated}"
    return f"{generated}\n{existing}"


def machine() -> dict[str, str]:
    """CPU count and model, memory, kernel of this machine."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    return {"nproc": str(os.cpu_count()), "CPU": model, "memory": mem,
            "kernel": f"{platform.system()} {platform.release()}"}


def _command_version(argv: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def versions() -> dict[str, str]:
    """Versions of Python, the libraries and the servers the benchmarks ran."""
    out = {"python": sys.version.split()[0]}
    for dist in ("uvloop", "aiohttp", "redis", "python-socketio"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["redis-server"] = _command_version(["redis-server", "--version"], r"v=(\S+)")
    nginx = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"
    out["nginx"] = _command_version([nginx, "-v"], r"nginx/(\S+)")
    return out


def plot_series(results: Mapping[str, Any]) -> dict[str, Any]:
    """The data each plot draws, pulled out of the results (pure, so it is testable without matplotlib)."""
    relay_rows = _get(results.get("relay"), "rows") or []
    cpu: dict[str, list[tuple[int, float]]] = {}
    for row in relay_rows:
        cpu.setdefault(str(row["relay"]), []).append((int(float(row["size"])), float(row["cpu_us_per_msg"])))
    fanout_points: dict[str, list[tuple[int, float]]] = {}
    for run in results.get("fanout_runs") or ([results["fanout"]] if results.get("fanout") else []):
        for system in FANOUT_SYSTEMS:
            point = _get(run, system)
            if isinstance(point, Mapping):
                fanout_points.setdefault(system, []).append((int(point["clients"]),
                                                             float(point["deliveries_per_s"])))
    latency: dict[str, tuple[float, float]] = {}
    for row in relay_rows:
        latency[f"{row['relay']} {int(float(row['size']))} B rtt"] = (float(row["p50_ms"]), float(row["p99_ms"]))
    for system in FANOUT_SYSTEMS:
        point = _get(results.get("fanout"), system)
        if isinstance(point, Mapping) and _num(point.get("p99_ms")) is not None:
            latency[f"{system} cross-node push"] = (float(point["p50_ms"]), float(point["p99_ms"]))
    return {"cpu": {k: sorted(v) for k, v in cpu.items()},
            "fanout": {k: sorted(v) for k, v in fanout_points.items()}, "latency": latency}


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """PNG plots of the results into `out_dir`; the paths written (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    series = plot_series(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if series["cpu"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in series["cpu"].items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("relay CPU per message (µs)")
        ax.set_ylim(bottom=0)
        ax.set_title("Relay CPU per message: gateway vs nginx")
        ax.legend()
        written.append(_save(fig, out_dir / "relay_cpu_per_message.png"))
    if series["fanout"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = {"ours": "wsnode (2 nodes)", "socketio": "python-socketio (2 servers)",
                  "socketio_node": "Node socket.io (2 servers)"}
        for name, points in series["fanout"].items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=labels.get(name, name))
        ax.set_xlabel("connected clients")
        ax.set_ylabel("broadcast deliveries per second")
        ax.set_title("Fan-out: deliveries/s vs connected clients")
        ax.set_ylim(bottom=0)
        ax.legend()
        written.append(_save(fig, out_dir / "fanout_deliveries.png"))
    if series["latency"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(series["latency"])
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [series["latency"][n][0] for n in names], width=0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [series["latency"][n][1] for n in names], width=0.4, label="p99")
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")  # relay round trips are ~1 ms, an overloaded push path hundreds
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("Latency percentiles")
        ax.legend()
        written.append(_save(fig, out_dir / "latency_percentiles.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
