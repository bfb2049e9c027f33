"""CPU time and resident memory of a process and its descendants, read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    out = [pid]
    i = 0
    while i < len(out):
        for task in Path(f"/proc/{out[i]}/task").glob("*"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the tree rooted at `pid`."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def thread_cpu_seconds(pid: int, name: str) -> float:
    """User + system CPU seconds of the threads named `name` (their comm) in `pid` and its descendants."""
    total = 0
    for p in descendants(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                if (task / "comm").read_text().strip() != name:
                    continue
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def thread_wakeups_and_cpu_ns(pid: int, name: str) -> tuple[int, int]:
    """(voluntary context switches, on-CPU nanoseconds from schedstat) of the thread named `name` in `pid`: each
    voluntary switch is one sleep the thread was woken from, and schedstat counts finer than the clock ticks."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        if (task / "comm").read_text().strip() != name:
            continue
        switches = next(int(line.split()[1]) for line in (task / "status").read_text().splitlines()
                        if line.startswith("voluntary_ctxt_switches:"))
        return switches, int((task / "schedstat").read_text().split()[0])
    raise LookupError(f"no thread named {name} in process {pid}")


def kernel_threads_cpu_seconds() -> float:
    """CPU seconds of the kernel's worker threads (kworker, ksoftirqd): where the sockmap relay's sends run (the
    psock's work item), which no process's own CPU time includes."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1].startswith(("kworker", "ksoftirqd")):
            fields = tail.split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat: everything but idle and iowait), softirqs included."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of the tree rooted at `pid`."""
    total = 0
    for p in descendants(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def open_fds(pid: int) -> int:
    """Open file descriptors of the tree rooted at `pid`."""
    total = 0
    for p in descendants(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return total
