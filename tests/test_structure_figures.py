"""scripts/structure_figures.py on small packages written here: counts, import depth with a cycle, largest module."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.structure_figures import figures

CASES = [
    # (files, modules, import depth)
    ({"a.py": ""}, 1, 1),
    ({"a.py": "from pkg import b\n", "b.py": "from pkg import c\n", "c.py": ""}, 3, 3),
    # a cycle counts as one step: a -> (b <-> c) -> d
    ({"a.py": "import pkg.b\n", "b.py": "import pkg.c\n", "c.py": "import pkg.b\nimport pkg.d\n", "d.py": ""}, 4, 3),
    # imports only for the type checker do not run
    ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n", "b.py": ""}, 2, 1),
    # relative imports inside a subpackage
    ({"sub/__init__.py": "", "sub/x.py": "from .y import f\n", "sub/y.py": "from ..z import g\n", "z.py": ""}, 3, 3),
]


@pytest.mark.parametrize(("files", "modules", "depth"), CASES)
def test_structure_figures(tmp_path: Path, files: dict[str, str], modules: int, depth: int) -> None:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    result = figures(str(root))
    assert result["modules"] == modules
    assert result["import_depth"] == depth
