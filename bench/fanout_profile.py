"""Where a node's CPU goes on one-user pushes: py-spy on both wsnode processes while they take paced pushes.

    python -m bench.fanout_profile [--clients 1000] [--push-rate 1500] [--seconds 15] [--no-store] [--top 5]
                                   [--out bench/out/profile]

The setup of bench.fanout (private Redis, two nodes, clients half on each, pushes through the first node to one user
whose session is on the second), a warm-up, then `py-spy record --format raw` on both nodes for --seconds while the
pushes run. Prints, per node, the top frames by self and by inclusive share of the samples in which the node was
busy (py-spy leaves idle samples out), and keeps the raw stacks in --out for flame graphs. Needs py-spy on PATH or
in the interpreter's bin directory (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import fanout, fanout_stats
from harness import ProcessGroup, RedisInfo, delete_prefix, free_port


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def syscalls(pid: int) -> tuple[int, int]:
    """(read, write) system calls of the process so far, all threads (/proc/PID/io: syscr, syscw)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def commandstats(redis_info: RedisInfo) -> dict[str, Any]:
    import redis

    client = redis.Redis(host=redis_info.host, port=redis_info.port)
    try:
        return dict(client.info("commandstats"))
    finally:
        client.close()


async def profile(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> list[Path]:
    prefix = f"wsgate-bench-{uuid.uuid4().hex[:8]}:"
    ports = [free_port(), free_port()]
    procs = fanout.start_system("ours", group, ports, redis_info.url, prefix, "unused", "profile")
    sink = fanout.Stats()
    users = [f"u{i}" for i in range(args.clients)]
    clients = await fanout.connect_clients("ours", ports, users, sink)
    kind = ("store" if args.store else "nostore") + ("-native" if args.native else "")
    outputs = [args.out / f"node-{i}-{kind}.txt" for i in range(len(procs))]
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        async with fanout.pusher_for("ours", ports, args, redis_info.url, "unused") as push:
            await fanout.one_user_pushes(push, sink, users[1], args.warmup_pushes, args, args.store)
            # --native pauses the process per sample (py-spy cannot read C stacks without stopping it)
            native = ["--native"] if args.native else ["--nonblocking"]
            spies = [await asyncio.create_subprocess_exec(
                py_spy(), "record", "--pid", str(p.pid), "--rate", str(args.rate), "--format", "raw", "--function",
                *native, "--duration", str(int(args.seconds) + 1), "--output", str(out),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                for p, out in zip(procs, outputs, strict=True)]
            start, stats0 = time.perf_counter(), commandstats(redis_info)
            calls0 = [syscalls(p.pid) for p in procs]
            await fanout.one_user_pushes(push, sink, users[1], int(args.push_rate * args.seconds), args, args.store)
            calls1 = [syscalls(p.pid) for p in procs]
            print(f"{sink.deliveries} pushes delivered in {time.perf_counter() - start:.1f}s", flush=True)
            for i, ((r0, w0), (r1, w1)) in enumerate(zip(calls0, calls1, strict=True)):
                print(f"node {i}: {(r1 - r0) / max(sink.deliveries, 1):.2f} read and "
                      f"{(w1 - w0) / max(sink.deliveries, 1):.2f} write system calls per push", flush=True)
            print("Redis per push (INFO commandstats; a script's own commands count under evalsha):")
            for name, calls, usec in fanout_stats.commandstats_per_event(stats0, commandstats(redis_info),
                                                                         sink.deliveries)[:args.top]:
                print(f"  {name:12} {calls:6.2f} calls  {usec:7.1f} us", flush=True)
            for spy in spies:
                _, err = await spy.communicate()
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode()[-2000:]}")
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        fanout.stop_quickly(procs)
        delete_prefix(redis_info, prefix)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--push-rate", type=float, default=1500.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup-pushes", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--focus", default="wsnode/", help="inclusive shares only for frames containing this")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (pauses per sample)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/profile"))
    args = parser.parse_args(argv)
    outputs = fanout.run_with_redis(lambda group, redis_info: profile(args, group, redis_info))
    for role, path in zip(("node 0 (takes the HTTP pushes)", "node 1 (holds the session)"), outputs, strict=True):
        total, self_top, incl_top = fanout_stats.top_frames(path.read_text(), args.top, focus=args.focus)
        print(f"{role}: {total} busy samples ({path})")
        for kind, rows in (("self", self_top), ("inclusive", incl_top)):
            for frame, pct in rows:
                print(f"  {kind:9} {pct:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
