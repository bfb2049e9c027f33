"""The npm package clients/js: its own tests (`node --test`, against a real node and the test Redis) and its
`npm pack` contents. Skipped only where Node.js is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import ROOT, RedisInfo

PACKAGE = ROOT / "clients" / "js"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Node.js (node and npm) is not installed")
    return npm


def _run(*argv: str, env: dict[str, str] | None = None, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=PACKAGE, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def npm_installed() -> str:
    """npm with the package's dev dependencies installed (`npm ci`: exactly the lock file)."""
    npm = _npm()
    done = _run(npm, "ci", "--no-audit", "--no-fund")
    assert done.returncode == 0, done.stdout + done.stderr
    return npm


@pytest.mark.timeout(300)
def test_js_package_tests_pass_against_a_real_node(npm_installed: str, redis_server: RedisInfo,
                                                   redis_prefix: str) -> None:
    done = _run(npm_installed, "test", env={"WSGATE_PYTHON": sys.executable, "REDIS_URL": redis_server.url,
                                            "WSGATE_REDIS_PREFIX": redis_prefix})
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 5" in done.stdout


@pytest.mark.timeout(300)
def test_npm_pack_ships_esm_commonjs_and_types_without_runtime_dependencies(npm_installed: str) -> None:
    done = _run(npm_installed, "pack", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    (packed,) = json.loads(done.stdout)
    files = {item["path"] for item in packed["files"]}
    assert {"dist/wsgate.mjs", "dist/wsgate.cjs", "index.d.ts", "package.json", "README.md"} <= files
    assert not any(path.startswith(("test/", "node_modules/")) for path in files)
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest.get("dependencies", {}) == {}
    assert manifest["exports"]["."] == {"types": "./index.d.ts", "import": "./dist/wsgate.mjs",
                                        "require": "./dist/wsgate.cjs"}
    source = (ROOT / "wsnode" / "static" / "wsgate.js").read_text()
    assert (PACKAGE / "dist" / "wsgate.cjs").read_text().endswith(source)  # built from the one source
