"""Node.js socket.io 4.8 with @socket.io/redis-adapter for the fan-out benchmark: install once, start servers.

The servers live in bench/socketio-node (server.js, package.json, package-lock.json); `npm ci` installs the locked
versions when node_modules is missing, so a fresh checkout needs only Node 20 and npm.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness import ManagedProcess, ProcessGroup

NODE_DIR = Path(__file__).resolve().parent / "socketio-node"


class NodeSetupError(RuntimeError):
    """Node or npm is missing, or `npm ci` failed."""


def ensure_installed(node_dir: Path = NODE_DIR) -> str:
    """The node executable, after `npm ci` when node_modules is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeSetupError("node and npm are needed for the socket.io (Node) system; install Node.js 20")
    if not (node_dir / "node_modules").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=node_dir, capture_output=True, text=True,
                              timeout=600, check=False)
        if done.returncode != 0:
            raise NodeSetupError(f"npm ci failed in {node_dir}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return node


def start_servers(group: ProcessGroup, ports: list[int], *, redis_url: str, key: str, jwt_secret: str,
                  api_key: str, tag: str) -> list[ManagedProcess]:
    """One server.js per port, sharing the adapter key `key` on `redis_url`."""
    node = ensure_installed()
    return [group.start(f"sionode-{tag}-{i}", [node, str(NODE_DIR / "server.js"), "--port", str(port),
                                              "--redis", redis_url, "--key", key, "--jwt-secret", jwt_secret,
                                              "--api-key", api_key])
            for i, port in enumerate(ports)]
