"""Structure figures for a package: modules per subpackage, longest internal import chain, largest module.

    python -m scripts.structure_figures gateway wsnode

The import depth is the longest chain of module-level imports inside the package (a -> b -> c counts 3); modules
that import each other in a cycle count as one step. Imports under `if TYPE_CHECKING:` are left out: they do not run.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from functools import cache
from pathlib import Path


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                found.update(alias.name for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom):
                if sub.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (sub.level - 1)]
                    mod = ".".join([*base, sub.module] if sub.module else base)
                else:
                    mod = sub.module or ""
                found.add(mod)
                found.update(f"{mod}.{alias.name}" for alias in sub.names)
    return found


def _components(graph: dict[str, set[str]]) -> dict[str, int]:
    """Tarjan's strongly connected components: module -> component number."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    component: dict[str, int] = {}

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            number = len(set(component.values()))
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component[member] = number
                if member == node:
                    break

    for node in graph:
        if node not in index:
            visit(node)
    return component


def figures(package: str) -> dict[str, object]:
    root = Path(package).resolve()
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        modules[_module_name(root, path)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        imports = _runtime_imports(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in imports if m in modules and m != name}

    component = _components(graph)

    @cache
    def depth(comp: int) -> int:
        members = [n for n, c in component.items() if c == comp]
        nxt = {component[m] for n in members for m in graph[n]} - {comp}
        return 1 + max((depth(c) for c in nxt), default=0)

    per_package = Counter(".".join(n.split(".")[:2]) if modules[n].parent != root else package
                          for n in modules if modules[n].name != "__init__.py")
    sources = [p for p in root.rglob("*") if p.suffix in (".py", ".c")]
    largest = max(sources, key=lambda p: len(p.read_text().splitlines()))
    return {
        "modules": sum(per_package.values()),
        "per_package": dict(sorted(per_package.items())),
        "import_depth": max(depth(c) for c in set(component.values())),
        "largest": f"{largest.relative_to(root.parent)} ({len(largest.read_text().splitlines())} lines)",
    }


def main(argv: list[str]) -> int:
    for package in argv or ["gateway", "wsnode"]:
        result = figures(package)
        print(f"{package}: {result['modules']} modules, import depth {result['import_depth']}, "
              f"largest {result['largest']}")
        for sub, count in result["per_package"].items():  # type: ignore[attr-defined]
            print(f"  {sub}: {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
