"""The master process of `--workers N`: starts N worker processes that share the port, and relays signals.

Workers are `python -m gateway ... --worker` processes; each binds the port itself with SO_REUSEPORT (the kernel
spreads connections) and runs its own uvloop loop. The master watches the file's mtime, checks a changed file
and sends SIGHUP to every worker only when it loads (a bad file is logged once, here); SIGHUP to the master is
forwarded as is. SIGTERM/SIGINT are forwarded and the master waits for the workers to drain. A worker that dies
on its own is restarted. Metrics: workers share a temporary directory (`WSGATE_METRICS_DIR`) of snapshots that
`/actuator/prometheus` in any worker sums.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from types import FrameType

from gateway.config import environment
from gateway.config.loader import load_config
from gateway.errors import ConfigError

log = logging.getLogger("gateway.supervisor")

FILE_POLL_S = 1.0
RESTART_DELAY_S = 0.5


class Supervisor:
    """Runs and watches the worker processes."""

    def __init__(self, config_path: str, worker_args: Sequence[str], workers: int, *, drain_timeout_s: float) -> None:
        self.config_path = config_path
        self.worker_args = list(worker_args)
        self.count = workers
        self.drain_timeout_s = drain_timeout_s
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()
        self.metrics_dir = tempfile.mkdtemp(prefix="wsgate-metrics-")
        self._mtime = self._file_mtime()

    def _file_mtime(self) -> int | None:
        try:
            return os.stat(self.config_path).st_mtime_ns
        except OSError:
            return None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = environment.for_child(**{environment.METRICS_DIR: self.metrics_dir})
        argv = [sys.executable, "-m", "gateway", *self.worker_args, "--worker"]
        # A reload forwarded to a worker that is still starting would kill it (SIGHUP's default action), and a stop
        # arriving during the restart left the new worker running: the worker starts with SIGHUP ignored until its
        # event loop installs the reload handler, and then reloads if the file changed since it started.
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, preexec_fn=_ignore_sighup)

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()
        self._signal_all(signum)

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        self._signal_all(signal.SIGHUP)

    def _check_file(self) -> None:
        mtime = self._file_mtime()
        if mtime is None or mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            load_config(self.config_path)
        except ConfigError as error:
            log.error("reload refused, keeping the previous routes: %s", error)
            return
        log.info("%s changed: reloading every worker", self.config_path)
        self._signal_all(signal.SIGHUP)

    def run(self) -> int:
        """Start the workers and supervise them until they have all exited after a stop signal."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self.children = [self._spawn() for _ in range(self.count)]
            log.info("master %d started %d worker(s)", os.getpid(), self.count)
            while not self.stopping.is_set():
                self.stopping.wait(FILE_POLL_S)
                if self.stopping.is_set():
                    break
                self._check_file()
                for index, child in enumerate(self.children):
                    if child.poll() is not None and not self.stopping.is_set():
                        log.error("worker %d exited with %s; restarting it", child.pid, child.returncode)
                        if self.stopping.wait(RESTART_DELAY_S):
                            break  # a stop during the delay: a worker spawned now would never hear of it
                        self.children[index] = self._spawn()
            status = 0
            for child in self.children:
                try:
                    child.wait(timeout=self.drain_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    status = 1
            return status
        finally:
            for child in self.children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
