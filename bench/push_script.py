"""Redis CPU per call of the push store script (wsnode/lua/push.lua), measured alone (issue 19).

Starts a private redis-server, gives one user a session on a live node (so every push is also published), fills the
user's store to --max-count, then runs --pushes one-user stored pushes and reads `usec_per_call` of EVALSHA from
`INFO commandstats`. With --baseline FILE (e.g. the script of an earlier commit, from `git show`), both scripts run
in alternating rounds against the same server and the medians of the rounds are compared.

Both times move with the neighbours' load on a shared machine. With --callgrind, redis-server runs under valgrind
and the instructions it executes per push (reading, running and answering the call; counting is on only during the
rounds) are printed too: the same script and inputs give the same count, so that is the figure to compare.

    python -m bench.push_script --baseline <(git show main:wsnode/lua/push.lua) [--callgrind]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench import callgrind
from wsnode import lua
from wsnode.envelope import message_tail
from wsnode.keys import Keys

USER, NODE = "bench-user", "bench-node"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _args(keys: Keys, n: int, *, max_count: int, max_age_ms: int, data_json: str, dedupe: bool) -> list[str | int]:
    tail = message_tail(module="notice", event="created", data_json=data_json, ts_ms=int(time.time() * 1000))
    return [keys.prefix, tail, "1", "notice", max_count, max_age_ms, f"push-{n}",
            keys.dedupe(f"k{n}") if dedupe else "", USER]


def _cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


class _Counter:
    """Instructions of a redis-server run under callgrind, counted between start() and stop()."""

    def __init__(self, pid: int, out: Path) -> None:
        self._pid, self._out, self._seen = pid, out, set[Path]()

    def start(self) -> None:
        callgrind.control(self._pid, "--zero")
        callgrind.control(self._pid, "--instr=on")

    def stop(self) -> int:
        callgrind.control(self._pid, "--instr=off")
        return callgrind.dump_instructions(self._pid, self._out, self._seen)


def _round(client: redis.Redis, sha: str, keys: Keys, start: int, count: int, counter: _Counter | None = None,
           **kw: object) -> tuple[float, float, float]:
    """usec_per_call of EVALSHA, Redis's CPU time in us per push, and instructions per push (0 without a counter),
    over `count` pushes (numbered from `start`).

    usec_per_call is wall time inside the call, so it grows when the server is descheduled on a busy machine; the
    CPU time (getrusage) does not, but includes reading and answering each call (the same for every script)."""
    client.config_resetstat()
    cpu_before = _cpu_s(client)
    if counter:
        counter.start()
    batch = 64  # pipelined only to spare the client's time; Redis runs each call on its own
    for first in range(start, start + count, batch):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(first + batch, start + count)):
            pipe.evalsha(sha, 0, *_args(keys, n, **kw))  # type: ignore[arg-type]
        for reply in pipe.execute():
            assert int(reply[1]) == 1, reply  # stored once
    instructions = counter.stop() / count if counter else 0.0
    cpu_us = (_cpu_s(client) - cpu_before) * 1e6 / count
    stats = client.info("commandstats")["cmdstat_evalsha"]
    assert int(stats["calls"]) == count, stats
    return float(stats["usec_per_call"]), cpu_us, instructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, help="the script under test (default: wsnode/lua/push.lua)")
    parser.add_argument("--baseline", type=Path, help="a second script to compare with, round by round")
    parser.add_argument("--pushes", type=int, default=20000, help="pushes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-count", type=int, default=1000, help="the store's size (full before measuring)")
    parser.add_argument("--data", default='{"text":"hello \\"world\\"","n":42,"tags":["a","b"],"url":"https://x/y"}',
                        help="the push's data as JSON")
    parser.add_argument("--dedupe", action="store_true", help="give every push an idempotency key")
    parser.add_argument("--callgrind", action="store_true", help="run redis-server under callgrind; count instructions")
    parser.add_argument("--callgrind-dir", type=Path, help="keep callgrind's dumps there (one per round and script)")
    opts = parser.parse_args()
    scripts = {"script": opts.script.read_text() if opts.script else lua.source("push")}
    if opts.baseline:
        scripts["baseline"] = opts.baseline.read_text()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server not found")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        dumps = opts.callgrind_dir or Path(tmp)
        wrap = ([shutil.which("valgrind") or "valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={dumps}/callgrind.out"] if opts.callgrind else [])
        proc = subprocess.Popen([*wrap, server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            counter = _Counter(proc.pid, dumps / "callgrind.out") if opts.callgrind else None
            for _ in range(600):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)  # the server is starting; nothing to wait on but the port
            version = client.info("server")["redis_version"]
            shas = {name: client.script_load(text) for name, text in scripts.items()}
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in scripts}
            kw = {"max_count": opts.max_count, "max_age_ms": 7 * 24 * 3600 * 1000, "data_json": opts.data,
                  "dedupe": opts.dedupe}
            n = 0
            for r in range(opts.rounds + 1):
                for name, sha in shas.items():
                    keys = Keys(prefix=f"{name}:")
                    client.zadd(keys.user_sessions(USER), {f"{NODE}|s1": 1})
                    client.set(keys.node_alive(NODE), "1")
                    if r == 0:  # warm-up round (not counted): fills the store so every push also trims
                        _round(client, sha, keys, n, opts.max_count + 100, **kw)
                        n += opts.max_count + 100
                        continue
                    results[name].append(_round(client, sha, keys, n, opts.pushes, counter, **kw))
                    n += opts.pushes
        finally:
            proc.terminate()
            proc.wait()
    print(f"redis {version}, {opts.pushes} pushes x {opts.rounds} rounds, store full at {opts.max_count}, "
          f"data {len(opts.data)} bytes, dedupe {'on' if opts.dedupe else 'off'}")
    medians: dict[str, tuple[float, ...]] = {}
    for name, rounds in results.items():
        per_call, cpu, instructions = ([r[k] for r in rounds] for k in (0, 1, 2))
        medians[name] = (statistics.median(per_call), statistics.median(cpu), statistics.median(instructions))
        print(f"{name}: EVALSHA usec_per_call median {medians[name][0]:.2f} "
              f"(rounds {', '.join(f'{v:.1f}' for v in per_call)}); "
              f"Redis CPU us per push median {medians[name][1]:.2f} (rounds {', '.join(f'{v:.1f}' for v in cpu)})"
              + (f"; instructions per push {medians[name][2]:,.0f}" if opts.callgrind else ""))
    if opts.baseline:
        ratios = [medians["script"][k] / medians["baseline"][k] for k in range(2 if not opts.callgrind else 3)]
        print(f"script / baseline: usec_per_call {ratios[0]:.3f}, CPU per push {ratios[1]:.3f}"
              + (f", instructions per push {ratios[2]:.3f}" if opts.callgrind else ""))


if __name__ == "__main__":
    main()
