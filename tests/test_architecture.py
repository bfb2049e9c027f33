"""The architecture, held by reading the sources (AST), not by trust.

- A module whose docstring calls it pure imports no I/O library.
- `gateway` and `wsnode` never import each other.
- No package module passes 500 lines.
- Every path that docs/architecture.md names exists.
- Each of `gateway` and `wsnode` reads the process environment in one module only (its `environment.py`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "wsnode", "devconsul", "demo")
IO_MODULES = frozenset({"asyncio", "aiohttp", "redis", "consul", "socket", "ssl", "uvloop", "subprocess", "selectors"})
MAX_LINES = 500
# The one module per package that may touch os.environ / os.getenv (every fallback is read, and named, there).
ENVIRONMENT_MODULES = {"gateway": "gateway/config/environment.py", "wsnode": "wsnode/environment.py"}
ENVIRON_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})
# "pure" as a word in the docstring's first paragraph: "(pure)", "; pure.", "(pure: no I/O", "pure, table-tested".
PURE_RE = re.compile(r"\bpure\b", re.IGNORECASE)


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _imported_roots(tree: ast.Module) -> set[str]:
    """Top-level names of everything a module imports, at any depth (function-level imports count too)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _is_documented_pure(tree: ast.Module) -> bool:
    doc = ast.get_docstring(tree) or ""
    first_paragraph = doc.split("\n\n")[0]
    return bool(PURE_RE.search(first_paragraph))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_pure_modules_import_no_io() -> None:
    offenders = {}
    checked = 0
    for path in _modules(*PACKAGES):
        tree = ast.parse(path.read_text(), filename=str(path))
        if not _is_documented_pure(tree):
            continue
        checked += 1
        io = _imported_roots(tree) & IO_MODULES
        if io:
            offenders[_rel(path)] = sorted(io)
    assert checked >= 10, "the pure-module check found almost no pure modules: is the docstring rule still right?"
    assert offenders == {}


@pytest.mark.parametrize(("package", "forbidden"), [("gateway", "wsnode"), ("wsnode", "gateway")])
def test_gateway_and_wsnode_never_import_each_other(package: str, forbidden: str) -> None:
    offenders = [_rel(p) for p in _modules(package) if forbidden in _imported_roots(ast.parse(p.read_text()))]
    assert offenders == []


def test_no_package_module_passes_500_lines() -> None:
    sources = [*_modules(*PACKAGES), *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.[ch]"))]
    too_long = {_rel(p): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}


def test_every_path_named_in_the_architecture_doc_exists() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:gateway|wsnode|devconsul|demo|tests|bench|clients|examples|scripts)/[\w./-]*)`", doc))
    assert len(named) >= 10, "docs/architecture.md should map the packages"
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert missing == []


def test_the_pure_check_sees_imports_inside_functions() -> None:
    tree = ast.parse('"""A thing (pure)."""\ndef f():\n    import socket\n    from asyncio import sleep\n')
    assert _is_documented_pure(tree)
    assert _imported_roots(tree) >= {"socket", "asyncio"}


def _environment_uses(tree: ast.Module) -> list[int]:
    """Lines that touch the process environment: `os.environ`, `os.getenv(...)`, `from os import environ`, ..."""
    lines = []
    for node in ast.walk(tree):
        attribute = (isinstance(node, ast.Attribute) and node.attr in ENVIRON_NAMES
                     and isinstance(node.value, ast.Name) and node.value.id == "os")
        imported = (isinstance(node, ast.ImportFrom) and node.module == "os"
                    and any(alias.name in ENVIRON_NAMES for alias in node.names))
        if attribute or imported:
            lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize("package", sorted(ENVIRONMENT_MODULES))
def test_only_the_environment_module_reads_the_environment(package: str) -> None:
    readers = {_rel(p): lines for p in _modules(package) if (lines := _environment_uses(ast.parse(p.read_text())))}
    assert set(readers) <= {ENVIRONMENT_MODULES[package]}, readers
    assert ENVIRONMENT_MODULES[package] in readers, "the environment module should be the one that reads it"


def test_the_environment_check_sees_every_spelling() -> None:
    source = ("import os\nfrom os import getenv\na = os.environ['X']\nb = os.getenv('Y')\n"
              "def f():\n    os.environ.setdefault('Z', '1')\nc = os.path.join('a')\n")
    assert _environment_uses(ast.parse(source)) == [2, 3, 4, 6]
