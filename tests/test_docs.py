"""The documents stand on their own: every relative link resolves inside the repository, none points outside it.

Issue 15 asked that no document point at an interface document that is not in the repository; this holds it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target); external URLs and in-page anchors are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE_NAMES = ("CONTRACT.md", "CONTRACT section", "../shared")


def relative_targets(text: str) -> list[str]:
    """The link targets of a Markdown text that name files of the repository."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see [a](docs/a.md) and ![p](images/p.png)", ["docs/a.md", "images/p.png"]),
        ("[x](https://example.org/a.md) [y](#anchor) [z](b.md#part)", ["b.md"]),
        ("no links here", []),
    ],
)
def test_relative_targets(text: str, expected: list[str]) -> None:
    assert relative_targets(text) == expected


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for target in relative_targets(text):
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
        assert resolved.exists(), f"{document.name} links to a missing file: {target}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_names_an_outside_document(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for name in OUTSIDE_NAMES:
        assert name not in text, f"{document.name} points outside the repository ({name!r})"


def test_readme_stays_short() -> None:
    # The README is the front door (what it is, the picture, two commands, where to read next); the rest is in docs/.
    assert len((ROOT / "README.md").read_bytes()) <= 7 * 1024
