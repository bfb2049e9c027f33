"""Real processes on loopback ports for the tests, the benchmarks and the demo: free ports, readiness polling,
logs on failure, clean stop.

Nothing here sleeps for a fixed time to synchronise: readiness is polled on an endpoint with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLL_INTERVAL_S = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on `host` (the caller binds it soon after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_status(url: str, *, timeout_s: float = 1.0, headers: Mapping[str, str] | None = None) -> int | None:
    """The status of a GET to `url`, or None when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def redis_answers(host: str, port: int, *, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class ProcessFailed(RuntimeError):
    """A managed process exited or never became ready."""


@dataclass
class ManagedProcess:
    """One child process with its log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str]
    popen: subprocess.Popen[bytes] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(self.argv), cwd=ROOT, env=dict(self.env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            raise ProcessFailed(f"{self.name} exited with {code}; log:\n{self.log()[-4000:]}")

    def wait_http_ready(self, url: str, *, timeout_s: float = 15.0, expect: Sequence[int] = (200,)) -> None:
        """Poll `url` until it answers one of `expect`; fail early if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if http_status(url, timeout_s=0.5) in expect:
                return
            time.sleep(POLL_INTERVAL_S)
        raise ProcessFailed(f"{self.name} not ready at {url} after {timeout_s}s; log:\n{self.log()[-4000:]}")

    async def wait_http_ready_async(self, url: str, *, timeout_s: float = 15.0, expect: Sequence[int] = (200,)) -> None:
        """The same as wait_http_ready, without blocking the test's event loop."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            status = await asyncio.to_thread(http_status, url, timeout_s=0.5)
            if status in expect:
                return
            await asyncio.sleep(POLL_INTERVAL_S)
        raise ProcessFailed(f"{self.name} not ready at {url} after {timeout_s}s; log:\n{self.log()[-4000:]}")

    def wait_port_ready(self, host: str, port: int, *, timeout_s: float = 15.0) -> None:
        """Poll until a TCP connect to host:port succeeds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
                return
            time.sleep(POLL_INTERVAL_S)
        raise ProcessFailed(f"{self.name} not listening on {host}:{port}; log:\n{self.log()[-4000:]}")

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signum)

    def wait_exit(self, *, timeout_s: float = 10.0) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout_s)

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL of the whole process group when it lingers."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=5)


class ProcessGroup:
    """Every process a test started; stopped in reverse order at the end of the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> ManagedProcess:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        proc = ManagedProcess(name=name, argv=argv, log_path=self.log_dir / f"{name}.log", env=full_env).start()
        self.processes.append(proc)
        return proc

    def python(self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None) -> ManagedProcess:
        """Start `python -m module args...` with the interpreter running the tests."""
        return self.start(name, [sys.executable, "-m", module, *args], env=env)

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.popen.pid if p.popen else '-'}) -----\n{p.log()[-6000:]}"
                         for p in self.processes)


@contextlib.contextmanager
def scratch_group(prefix: str) -> Iterator[tuple[Path, ProcessGroup]]:
    """A temporary directory and a ProcessGroup logging into it, for a benchmark run: when the run fails the logs' tail
    goes to stderr; the processes are stopped and the directory removed either way."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    group = ProcessGroup(workdir / "logs")
    try:
        yield workdir, group
    except BaseException:
        print(group.logs()[-8000:], file=sys.stderr)
        raise
    finally:
        group.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class RedisInfo:
    """Where the tests' Redis answers."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def redis_server_binary() -> str:
    """The redis-server executable; a missing one is a broken setup (CI installs it), so ProcessFailed, no skip."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ProcessFailed("redis-server is not installed (run scripts/ensure-redis-server)")
    return binary


def _parse_redis_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@contextlib.contextmanager
def provide_redis(log_dir: Path) -> Iterator[tuple[RedisInfo, ManagedProcess | None]]:
    """The Redis at $REDIS_URL or 127.0.0.1:6379 when it answers; otherwise a new redis-server on a free port."""
    host, port = _parse_redis_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    if redis_answers(host, port):
        yield RedisInfo(host, port), None
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ProcessFailed("no Redis answers and redis-server is not installed (run scripts/ensure-redis-server)")
    group = ProcessGroup(log_dir)
    port = free_port()
    proc = group.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", str(log_dir)])
    try:
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", port):
            proc._check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(f"redis-server did not answer on {port}:\n{proc.log()}")
            time.sleep(POLL_INTERVAL_S)
        yield RedisInfo("127.0.0.1", port), proc
    finally:
        group.stop_all()


def unique_prefix(tag: str = "t") -> str:
    """A Redis key prefix no other test uses."""
    return f"wsgate-test-{tag}-{uuid.uuid4().hex[:10]}:"


def delete_prefix(info: RedisInfo, prefix: str) -> None:
    """Delete every key under `prefix` (synchronously, with redis-py)."""
    import redis

    client = redis.Redis(host=info.host, port=info.port)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()
