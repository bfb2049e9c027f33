"""scripts/settings_docs.py: the generated tables go between their markers, and --check finds a stale one."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.settings_docs import TABLES, main, markers, with_table


def test_the_table_replaces_what_stood_between_the_markers() -> None:
    begin, end = markers("t")
    assert with_table(f"intro\n{begin}\n| old |\n{end}\noutro\n", "t", "| new |") == \
        f"intro\n{begin}\n| new |\n{end}\noutro\n"


@pytest.mark.parametrize("doc", ["no markers", f"{markers('t')[1]}\n{markers('t')[0]}\n", markers("t")[0]])
def test_missing_or_misordered_markers_are_refused(doc: str) -> None:
    with pytest.raises(ValueError, match="markers"):
        with_table(doc, "t", "| new |")


def test_check_finds_a_stale_table_and_a_run_brings_it_up_to_date(tmp_path: Path) -> None:
    for relative, name, _ in TABLES:
        begin, end = markers(name)
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(f"# doc\n{begin}\n| stale |\n{end}\n")
    assert main(["--check"], root=tmp_path) == 1
    assert main([], root=tmp_path) == 0
    assert main(["--check"], root=tmp_path) == 0
    for relative, name, table in TABLES:
        assert (tmp_path / relative).read_text() == f"# doc\n{markers(name)[0]}\n{table()}\n{markers(name)[1]}\n"


def test_the_docs_of_this_checkout_are_current() -> None:
    assert main(["--check"]) == 0
