"""`python -m bench [--quick] [--only relay,fanout,scaleout,shards,storm,soak]`: run every benchmark, then write
the report.

Each benchmark runs as its own subprocess (`python -m bench.<name> --json bench/out/<name>.json`, plus `--quick`),
with its output in bench/out/<name>.log and a time budget after which it is stopped. A progress bar on stderr shows
where the run is. Then the JSON of every benchmark (this run's, or an earlier run's for those left out with --only)
becomes the generated part of bench/RESULTS.md (between its markers; hand-written sections are kept) and PNG plots
in bench/plots/. `--quick` passes --quick to every benchmark and finishes in under two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from bench import procstat, report

ROOT = Path(__file__).resolve().parent.parent
# Run order: the soak, the longest and least predictable, last.
NAMES = ("relay", "fanout", "scaleout", "shards", "storm", "soak")
QUICK_NOTE = ("`--quick`: short runs with few connections; CPU and latency figures are noisy (the load generators "
              "share the machine's cores), good for spotting regressions, not for quoting.",)
QUICK_TOTAL_S = 120.0  # --quick stops a benchmark early rather than run past this (the target is about two minutes)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One benchmark subprocess: what to run, where its JSON goes, how long it is expected to take and may take."""

    name: str
    argv: tuple[str, ...]
    json_path: Path
    expected_s: float
    budget_s: float


def soak_flags(python: str) -> set[str]:
    """The flags bench.soak accepts (read from its --help); empty when it does not exist."""
    if not (ROOT / "bench" / "soak.py").exists():
        return set()
    try:
        done = subprocess.run([python, "-m", "bench.soak", "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if done.returncode != 0:
        return set()
    return {word.rstrip(",=") for word in done.stdout.split() if word.startswith("--")}


def plan(args: argparse.Namespace, out_dir: Path) -> tuple[list[Job], dict[str, str]]:
    """The jobs to run, and why the others are not run."""
    python = sys.executable
    quick = ["--quick"] if args.quick else []
    jobs: list[Job] = []
    skipped: dict[str, str] = {}
    # (expected, budget) seconds; quick budgets add up to under two minutes on an idle 2-core machine.
    times = {"relay": (22, 35), "fanout": (16, 30), "scaleout": (14, 30), "shards": (8, 20), "storm": (15, 30),
             "soak": (40, 60)} \
        if args.quick else {"relay": (130, 400), "fanout": (90, 400), "soak": (120, 600), "scaleout": (40, 300),
                            "shards": (20, 120), "storm": (60, 200)}
    for name in NAMES:
        if name not in args.only:
            continue
        expected, budget = times[name]
        json_path = out_dir / f"{name}.json"
        if name == "soak":
            flags = soak_flags(python)
            if not flags:
                skipped[name] = "not run: bench/soak.py is missing or does not answer --help"
                continue
            extra = [f for f in quick if f in flags]
            if args.quick and "--duration-s" in flags:
                extra += ["--duration-s", "10"]  # its --quick soaks 15 s; the whole quick run must stay under 2 min
            if "--json" in flags:
                extra += ["--json", str(json_path)]
            jobs.append(Job(name, (python, "-m", "bench.soak", *extra), json_path, expected, budget))
            continue
        # The full relay run takes medians of three pinned runs: single runs of either relay move by +-10 %.
        extra = ["--repeat", "3", "--pin"] if name == "relay" and not args.quick else []
        jobs.append(Job(name, (python, "-m", f"bench.{name}", *quick, *extra, "--json", str(json_path)), json_path,
                        expected, budget))
        if name == "fanout" and not args.quick:
            for clients in args.fanout_points:
                path = out_dir / f"fanout-{clients}.json"
                jobs.append(Job(f"fanout-{clients}", (python, "-m", "bench.fanout", "--clients", str(clients),
                                                      "--json", str(path)), path, expected, budget))
    return jobs, skipped


class Progress:
    """A one-line progress bar on stderr, weighted by each job's expected time (plain lines when not a terminal)."""

    def __init__(self, jobs: list[Job], stream: TextIO = sys.stderr, *, width: int = 30) -> None:
        self.total_s = sum(j.expected_s for j in jobs) or 1.0
        self.done_s = 0.0
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0

    def show(self, job: Job, index: int, count: int, job_elapsed_s: float) -> None:
        fraction = min(1.0, (self.done_s + min(job_elapsed_s, job.expected_s * 0.95)) / self.total_s)
        filled = int(fraction * self.width)
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:3.0f}%  {index}/{count} {job.name} "
                f"{job_elapsed_s:4.0f}s  total {time.monotonic() - self.started:4.0f}s")
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self.stream.flush()
        elif time.monotonic() - self._last_line >= 10:
            self._last_line = time.monotonic()
            print(text, file=self.stream, flush=True)

    def finish(self, job: Job, state: str) -> None:
        self.done_s += job.expected_s
        if self.tty:
            self.stream.write("\r\033[K")
        print(f"{job.name}: {state}", file=self.stream, flush=True)


def run_job(job: Job, index: int, count: int, progress: Progress, log_path: Path) -> str:
    """Run one benchmark within its budget; a one-line state for the report."""
    job.json_path.unlink(missing_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(job.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                progress.show(job, index, count, elapsed)
                if elapsed > job.budget_s:
                    # The benchmark's own cleanup runs on SIGTERM; its process group is killed if it lingers.
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        # Its servers run in sessions of their own: kill the whole tree, not just the group.
                        for pid in reversed(procstat.descendants(proc.pid)):
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                        proc.wait()
                    return f"stopped after its {job.budget_s:.0f} s budget (log {log_path})"
    elapsed = time.monotonic() - started
    if code != 0:
        return f"failed with exit code {code} after {elapsed:.0f} s (log {log_path})"
    return f"ran in {elapsed:.0f} s (`{shlex.join(_relative(job.argv))}`)"


def _relative(argv: tuple[str, ...]) -> list[str]:
    out = ["python" if a == sys.executable else a for a in argv]
    return [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT) + "/") else a for a in out]


def load_results(out_dir: Path) -> dict[str, Any]:
    """Every benchmark's JSON in `out_dir` (missing or unreadable ones are None)."""
    results: dict[str, Any] = {}
    for name in NAMES:
        try:
            results[name] = json.loads((out_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            results[name] = None
    runs: list[Any] = []
    for path in sorted(out_dir.glob("fanout*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    results["fanout_runs"] = runs
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs of every benchmark (under two minutes)")
    parser.add_argument("--only", default=",".join(NAMES),
                        help=f"comma-separated subset of {','.join(NAMES)} (run in this order)")
    parser.add_argument("--fanout-points", default="1000,2500",
                        help="extra fan-out client counts for the deliveries plot (full run only; '' for none)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; rewrite the report and plots from the JSON already in --out-dir")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out", help="JSON and logs")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--plots", type=Path, default=ROOT / "bench" / "plots")
    args = parser.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(args.only) - set(NAMES)
    if unknown or not args.only:
        parser.error(f"--only takes names from {', '.join(NAMES)}; unknown: {', '.join(sorted(unknown)) or 'none'}")
    try:
        args.fanout_points = [int(n) for n in args.fanout_points.split(",") if n.strip()]
    except ValueError:
        parser.error("--fanout-points takes comma-separated client counts")
    command = "python -m bench" + (f" {shlex.join(argv)}" if argv is not None else
                                   (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""))
    args.out_dir.mkdir(parents=True, exist_ok=True)

    jobs, states = ([], {}) if args.report_only else plan(args, args.out_dir)
    progress = Progress(jobs)
    started = time.monotonic()
    for index, job in enumerate(jobs, 1):
        if args.quick:
            # Leave the jobs still to come their expected time; this one gets the rest, up to its own budget.
            left_s = QUICK_TOTAL_S - (time.monotonic() - started) - sum(j.expected_s for j in jobs[index:])
            job = dataclasses.replace(job, budget_s=max(job.expected_s / 2, min(job.budget_s, left_s)))
        states[job.name] = run_job(job, index, len(jobs), progress, args.out_dir / f"{job.name}.log")
        progress.finish(job, states[job.name])
    wall_s = time.monotonic() - started

    results = load_results(args.out_dir)
    for name in NAMES:
        if name not in states and results.get(name) is not None:
            mtime = datetime.datetime.fromtimestamp((args.out_dir / f"{name}.json").stat().st_mtime, datetime.UTC)
            states[name] = f"not run now; figures from an earlier run ({mtime:%Y-%m-%d %H:%M} UTC)"
        states.setdefault(name, "not run")
    plots = report.write_plots(results, args.plots)
    rel_plots = [os.path.relpath(p, args.results.parent) for p in plots]
    generated = report.render_generated(
        report.all_figures(results), machine=report.machine(), versions=report.versions(),
        command=command, date=f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} "
        + ("(report only: figures of the runs listed below)" if args.report_only else f"(wall time {wall_s:.0f} s)"),
        plots=rel_plots, notes=QUICK_NOTE if args.quick else (),
        sections=(report.scaleout_table(results.get("scaleout")), report.shards_table(results.get("shards")),
                  report.storm_table(results.get("storm"))),
        runs={n: states[n] for n in sorted(states, key=lambda n: (n.split("-")[0] not in NAMES, n))})
    existing = args.results.read_text() if args.results.exists() else ""
    # Read just before writing: other tools append hand-written sections to this file.
    args.results.write_text(report.merge_generated(existing, generated))
    print(report.figures_table(report.all_figures(results)))
    print(f"wrote {args.results} and {len(plots)} plots in {args.plots}; wall time {wall_s:.0f} s")
    return 0 if all(s.startswith(("ran", "not run")) for s in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
