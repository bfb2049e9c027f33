"""Reconnect storm: a node is SIGKILLed and all of its clients come back through one gateway to the other node.

    python -m bench.storm [--quick] [--clients 10000] [--json bench/out/storm.json]

Two nodes registered in the dev Consul agent, one gateway with two workers in front (`lb:ws://`), N clients through it,
spread over a few client processes (bench/storm_client.py; each holds at most --per-process sockets, well under the
20,000 open files a process may have). One node is SIGKILLed; its clients reconnect the way wsgate.js does: the n-th
attempt after a loss waits a uniform random time in [0, min(15 s, 0.5 s * 2^n)] (full jitter), an attempt fails after 10
s without a welcome, and each resumes with `since=` its last id. During the storm a backend pushes one stored message to
each dropped user through the surviving node. Reported: the time from the kill until every dropped client is back, the
handshake rate, failed attempts by kind (each must be retried), whether every push answered 202 reached its user exactly
once after dedupe by id, the CPU each process used during the storm, the deepest accept queues and the kernel's listen-
overflow count. Last line: `storm_reconnect_s=<seconds>`. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp

from bench import procstat
from bench.scaleout import GATEWAY_ROUTES, run_with_own_redis
from harness import ManagedProcess, ProcessGroup, RedisInfo, delete_prefix, free_port

SECRET = "bench-secret-0123456789abcdef0123456789"
API_KEY = "bench-key"
SERVICE = "storm-ws"
# wsgate.js DEFAULTS: backoffBaseMs, backoffMaxMs, connectTimeoutMs.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 15.0
CONNECT_TIMEOUT_S = 10.0
OK = ""  # the kind of a successful attempt
LINE_LIMIT = 1 << 24  # the JSON lines between the orchestrator and its client processes list thousands of users


def backoff_delay_s(attempt: int, u: float, *, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> float:
    """wsgate.js backoffDelayMs: attempt `attempt` (0-based) waits u * min(max, base * 2^attempt), u in [0, 1)."""
    return u * min(max_s, base_s * 2.0 ** min(attempt, 30))


@dataclass
class Trace:
    """One loss of one client and the attempts that followed: (time the attempt ended, OK or the failure's kind)."""

    user: str
    lost_at: float
    attempts: list[tuple[float, str]] = field(default_factory=list)

    @property
    def back_at(self) -> float | None:
        return self.attempts[-1][0] if self.attempts and self.attempts[-1][1] == OK else None


def summarize(traces: Sequence[Trace], killed_at: float) -> dict[str, Any]:
    """The storm's figures from every client's trace; times are seconds after the kill."""
    back = sorted(b for t in traces if (b := t.back_at) is not None)
    failures = Counter(kind for t in traces for _, kind in t.attempts if kind != OK)
    # A failed attempt is retried when the same loss has a later attempt; the last one failing means given up.
    unretried = sum(1 for t in traces if t.attempts and t.attempts[-1][1] != OK)
    never_tried = sum(1 for t in traces if not t.attempts)
    span_s = back[-1] - killed_at if back else 0.0
    per_second = Counter(int(b - killed_at) for b in back)
    return {
        "dropped": len(traces), "back": len(back), "all_back": len(back) == len(traces),
        "reconnect_s": round(span_s, 3),
        "first_back_s": round(back[0] - killed_at, 3) if back else None,
        "median_back_s": round(back[len(back) // 2] - killed_at, 3) if back else None,
        "handshakes_per_s": round(len(back) / span_s, 1) if span_s > 0 else 0.0,
        "peak_handshakes_per_s": max(per_second.values(), default=0),
        "handshakes_per_second": [per_second.get(s, 0) for s in range(int(span_s) + 1)] if back else [],
        "attempts": sum(len(t.attempts) for t in traces),
        "failures": dict(sorted(failures.items())),
        "failed_retried": sum(failures.values()) - unretried,
        "failed_unretried": unretried, "never_tried": never_tried,
    }


def check_delivery(expected: Mapping[str, str], seen: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each expected id must be among its user's received ids; after dedupe by id, nothing else may be there."""
    missing = sum(1 for user, id_ in expected.items() if id_ not in seen.get(user, ()))
    unexpected = sum(1 for user, ids in seen.items() for id_ in set(ids) if expected.get(user) != id_)
    duplicates = sum(len(ids) - len(set(ids)) for ids in seen.values())
    return {"pushes_lost": missing, "unexpected_ids": unexpected, "duplicates_dropped": duplicates}


def split_range(count: int, parts: int) -> list[tuple[int, int]]:
    """[first, count) slices of `count` users over `parts` processes, sizes differing by at most one."""
    size, extra = divmod(count, parts)
    out, first = [], 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return [s for s in out if s[1] > 0]


# ---- orchestrator ----

async def push_all(node_port: int, users: list[str], batch: int) -> dict[str, str]:
    """One stored push per user through the surviving node, `batch` users per request; the ids answered 202."""
    accepted: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for start in range(0, len(users), batch):
            names = users[start:start + batch]
            body = {"to": {"users": names}, "module": "storm", "data": {"batch": start}}
            for _ in range(3):  # a backend retries on 503 (the node sheds while it is busy)
                async with http.post(f"http://127.0.0.1:{node_port}/api/v1/push", json=body,
                                     headers=headers) as response:
                    if response.status == 202:
                        ids = (await response.json())["ids"]
                        accepted.update({n: str(ids[n]) for n in names})
                        break
    return accepted


def cpu_sample(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process tree, of this process, and of the whole machine (busy, all cores)."""
    out = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    out["orchestrator (pushes)"] = time.process_time()
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    out["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    return out


async def cpu_timeline(pids: Mapping[str, int], step_s: float, stop: asyncio.Event) -> dict[str, list[float]]:
    """Cores each process used in each `step_s` interval until `stop` (where the storm's time went)."""
    samples = [(time.monotonic(), cpu_sample(pids))]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), step_s)
        samples.append((time.monotonic(), cpu_sample(pids)))
    return {name: [round((b[name] - a[name]) / (tb - ta), 2) for (ta, a), (tb, b) in itertools.pairwise(samples)]
            for name in samples[0][1]}


async def node_counters(port: int) -> dict[str, float]:
    """The node's session counters (Prometheus text): sessions opened, upgrades refused, sessions closed."""
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        text = await response.text()
    wanted = ("wsnode_connects_total", "wsnode_handshakes_refused_total", "wsnode_closes_total")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(wanted)}


def tcp_counters() -> dict[str, int]:
    """The kernel's listen-queue counters (TcpExt, whole machine): SYNs dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in ("ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDrop")}
    return {}


async def accept_queues(ports: Mapping[str, int], step_s: float, stop: asyncio.Event) -> dict[str, dict[str, int]]:
    """The deepest accept queue seen on each listener (ss's Recv-Q) and its limit (Send-Q), sampled until `stop`."""
    deepest = {name: {"max_queued": 0, "limit": 0} for name in ports}
    while not stop.is_set():
        proc = await asyncio.create_subprocess_exec("ss", "-Hltn", stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        for line in out.decode().splitlines():
            fields = line.split()  # State Recv-Q Send-Q Local:Port Peer
            for name, port in ports.items():
                if len(fields) >= 4 and fields[3].endswith(f":{port}"):
                    queue = deepest[name]
                    queue["max_queued"] = max(queue["max_queued"], int(fields[1]))
                    queue["limit"] = int(fields[2])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), step_s)
    return deepest


async def read_event(proc: asyncio.subprocess.Process, name: str, timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    if not line:
        raise RuntimeError(f"client process {proc.pid} exited (rc {await proc.wait()}) before '{name}'")
    event = json.loads(line)
    if event.get("event") != name:
        raise RuntimeError(f"client process {proc.pid}: expected '{name}', got {event.get('event')}")
    return cast(dict[str, Any], event)


def send(proc: asyncio.subprocess.Process, command: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(command) + "\n").encode())


async def run(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> dict[str, Any]:
    prefix = f"wsgate-storm-{uuid.uuid4().hex[:8]}:"
    consul_port = free_port()
    consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
    consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
    nodes = {}
    for node_id in ("storm-a", "storm-b"):
        port = free_port()
        node = group.python(node_id, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
                            "--redis", redis_info.url, "--redis-prefix", prefix, "--jwt-secret", SECRET,
                            "--api-key", API_KEY, "--consul", f"127.0.0.1:{consul_port}", "--service-name", SERVICE,
                            "--consul-check-interval", "1", "--send-queue-max", "10000",
                            env={"WSNODE_LOG_LEVEL": "WARNING"})
        node.wait_http_ready(f"http://127.0.0.1:{port}/health")
        nodes[node_id] = (node, port)
    gateway_port = free_port()
    config = group.log_dir.parent / "storm-gateway.yaml"
    config.write_text(GATEWAY_ROUTES.format(port=gateway_port, consul_port=consul_port, service=SERVICE))
    gateway = group.python("gateway", "gateway", "--config", str(config), "--workers", str(args.workers),
                           "--log-level", "WARNING")
    gateway.wait_http_ready(f"http://127.0.0.1:{gateway_port}/actuator/health")

    deadline = time.monotonic() + args.timeout_s
    slices = split_range(args.clients, max(1, math.ceil(args.clients / args.per_process)))
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.storm_client", "--gateway-port", str(gateway_port),
        "--first", str(first), "--clients", str(count), "--deadline", repr(deadline),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT) for first, count in slices]
    try:
        cluster = Cluster(group, nodes, gateway_port, {"gateway": gateway.pid, "devconsul": consul.pid})
        return await storm(args, cluster, procs, slices, deadline)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        delete_prefix(redis_info, prefix)


@dataclass
class Cluster:
    """What the storm runs against: the processes, the nodes with their ports, the gateway's port."""

    group: ProcessGroup
    nodes: dict[str, tuple[ManagedProcess, int]]
    gateway_port: int
    pids: dict[str, int]  # the processes whose CPU is measured, by name


async def storm(args: argparse.Namespace, cluster: Cluster, procs: list[asyncio.subprocess.Process],
                slices: list[tuple[int, int]], deadline: float) -> dict[str, Any]:
    nodes, pids = cluster.nodes, cluster.pids
    placed_by: dict[str, str] = {}
    for proc in procs:
        placed_by.update((await read_event(proc, "ready", deadline - time.monotonic()))["placed"])
    placed = dict(sorted(Counter(placed_by.values()).items()))
    print(f"{args.clients} clients through the gateway ({len(procs)} client processes): {placed}", flush=True)
    if len(placed_by) != args.clients:
        raise RuntimeError(f"only {len(placed_by)} of {args.clients} clients connected before the storm")
    victim, survivor = "storm-a", "storm-b"
    dropped = sorted(u for u, n in placed_by.items() if n == victim)
    pids |= {f"node {survivor} (survivor)": nodes[survivor][0].pid}
    pids |= {p.name: p.pid for p in cluster.group.processes if p.name == "redis"}
    pids |= {f"client process {i}": p.pid for i, p in enumerate(procs)}
    for proc in procs:
        send(proc, {"victim": victim})
    await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
    stop_timeline = asyncio.Event()
    listeners = {"gateway": cluster.gateway_port, f"node {survivor}": nodes[survivor][1]}
    queues = asyncio.create_task(accept_queues(listeners, 0.1, stop_timeline))
    counters_before = tcp_counters()
    node_before = await node_counters(nodes[survivor][1])
    cpu_before = cpu_sample(pids)
    timeline = asyncio.create_task(cpu_timeline(pids, 0.5, stop_timeline))
    killed_at = time.monotonic()
    nodes[victim][0].kill()
    pushes = asyncio.create_task(push_all(nodes[survivor][1], dropped, args.push_batch))
    pushed_at: list[float] = []
    pushes.add_done_callback(lambda _: pushed_at.append(time.monotonic()))
    backs = await asyncio.gather(*(read_event(p, "all_back", deadline - time.monotonic()) for p in procs),
                                 return_exceptions=True)
    cpu_after = cpu_sample(pids)
    window_s = time.monotonic() - killed_at
    counters = {k: v - counters_before.get(k, 0) for k, v in tcp_counters().items()}
    stop_timeline.set()
    node_after = await node_counters(nodes[survivor][1])
    accepted = await pushes
    for proc, (first, count) in zip(procs, slices, strict=True):
        mine = {u: i for u, i in accepted.items() if first <= int(u.removeprefix("storm")) < first + count}
        send(proc, {"expect": mine, "settle_s": args.settle_s})
    reports = [await read_event(p, "report", max(1.0, deadline - time.monotonic()) + args.settle_s) for p in procs]
    traces = [Trace(t["user"], t["lost_at"], [(a, k) for a, k in t["attempts"]]) for r in reports for t in r["traces"]]
    seen = {u: ids for r in reports for u, ids in r["seen"].items()}
    summary = summarize(traces, killed_at)
    delivery = check_delivery(accepted, {u: seen.get(u, []) for u in set(seen) | set(accepted)})
    cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before}
    return {"clients": args.clients, "gateway_workers": args.workers, "client_processes": len(procs),
            "placed": placed, **summary, "expected_drops": len(dropped),
            "others_dropped": sum(1 for t in traces if placed_by.get(t.user) != victim),
            "all_back_events": sum(1 for b in backs if isinstance(b, dict)),
            "within_10s": summary["all_back"] and summary["reconnect_s"] <= 10.0,
            "jitter_s": BACKOFF_BASE_S, "backoff": f"full jitter, base {BACKOFF_BASE_S} s, max {BACKOFF_MAX_S} s",
            "pushes_accepted": len(accepted), "pushes_refused": len(dropped) - len(accepted),
            "pushes_done_s": round(pushed_at[0] - killed_at, 3), **delivery,
            "cpu_window_s": round(window_s, 2), "cpu_s": cpu,
            "cpu_cores": {name: round(s / window_s, 2) for name, s in cpu.items()},
            "cpu_cores_per_half_s": await timeline,
            "accept_queues": await queues, "tcp_counters_during_storm": counters,
            "survivor_counters_during_storm": {k: v - node_before.get(k, 0.0) for k, v in node_after.items()
                                               if v != node_before.get(k, 0.0)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 clients (development)")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--per-process", type=int, default=4000, help="client sockets per client process at most")
    parser.add_argument("--push-batch", type=int, default=50, help="users per push request during the storm")
    parser.add_argument("--settle-s", type=float, default=10.0, help="how long pushes may take to arrive after")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # Children inherit the raised soft limit: the client side and each process hold thousands of sockets.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.quick:
        args.clients = min(args.clients, 1000)
    if args.clients < 2 or args.workers < 1 or args.per_process < 1 or args.push_batch < 1:
        parser.error("--clients must be at least 2; --workers, --per-process and --push-batch at least 1")
    result = run_with_own_redis("wsgate-storm-", lambda group, redis_info: run(args, group, redis_info))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(f"storm_reconnect_s={result['reconnect_s']}")
    ok = (result["all_back"] and result["failed_unretried"] == 0 and result["never_tried"] == 0
          and result["pushes_lost"] == 0 and result["unexpected_ids"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
