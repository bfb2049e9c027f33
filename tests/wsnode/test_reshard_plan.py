"""The resharding plan (wsnode/reshard_plan.py): table tests; the tool on real Redis is test_reshard.py."""

from __future__ import annotations

import json

import pytest

from wsnode.reshard_plan import (
    Move,
    Report,
    destination,
    glob_escape,
    list_problem,
    marker_targets,
    marker_users,
    plan_moves,
    staged_user_of,
    user_of,
)
from wsnode.sharding import shard_of

OLD = ["a", "b", "c"]
NEW = ["a", "b", "c", "d"]
USERS = [f"u{i}" for i in range(200)]


@pytest.mark.parametrize(("key", "prefix", "user"), [
    ("wsgate:user:alice:msgs", "", "alice"),
    ("p:wsgate:user:alice:seq", "p:", "alice"),
    ("wsgate:user:a:b:c:unread", "", "a:b:c"),  # a user name may hold ':'
    ("wsgate:user:alice:sessions", "", "alice"),
    ("wsgate:user:alice:publish_budget", "", "alice"),
    ("wsgate:user:alice:other", "", None),
    ("wsgate:user::msgs", "", None),
    ("q:wsgate:user:alice:msgs", "p:", None),
    ("wsgate:dedupe:http:k", "", None),
])
def test_user_of(key: str, prefix: str, user: str | None) -> None:
    assert user_of(key, prefix) == user


@pytest.mark.parametrize(("key", "user"), [
    ("wsgate:reshard:alice:msgs", "alice"),
    ("wsgate:reshard:alice:sessions", None),  # sessions are never set aside
    ("wsgate:user:alice:msgs", None),
])
def test_staged_user_of(key: str, user: str | None) -> None:
    assert staged_user_of(key, "") == user


@pytest.mark.parametrize(("text", "escaped"), [
    ("wsgate:", "wsgate:"),
    ("p*[x]?\\:", "p\\*\\[x\\]\\?\\\\:"),
])
def test_glob_escape(text: str, escaped: str) -> None:
    assert glob_escape(text) == escaped


def test_plan_moves_3_to_4_moves_only_to_the_new_shard_and_only_the_users_whose_shard_changes() -> None:
    found = {OLD[i]: [u for u in USERS if shard_of(u, 3) == i] for i in range(3)}
    moves = plan_moves(found, NEW)
    assert moves == sorted(moves, key=lambda m: (m.source, m.user))
    assert {m.user for m in moves} == {u for u in USERS if shard_of(u, 4) == 3}
    assert all(m.target == "d" and m.source == OLD[shard_of(m.user, 3)] for m in moves)
    assert 30 <= len(moves) <= 70  # ~1/4 of 200


@pytest.mark.parametrize(("found", "new", "moves"), [
    ({"a": ["x"]}, ["a"], []),  # already home
    ({"b": ["x", "x"]}, ["a"], [Move("x", "b", "a")]),  # found twice, moved once
    ({"a": [], "b": []}, ["a", "b"], []),
])
def test_plan_moves_table(found: dict[str, list[str]], new: list[str], moves: list[Move]) -> None:
    assert plan_moves(found, new) == moves


def test_plan_moves_4_to_3_empties_the_removed_shard() -> None:
    on_d = [u for u in USERS if shard_of(u, 4) == 3]
    assert {m.user for m in plan_moves({"d": on_d}, OLD)} == set(on_d)


def _marker(ids: dict[str, str]) -> str:
    return json.dumps([1, len(ids), json.dumps(ids) if ids else "{}", "p1"])


@pytest.mark.parametrize(("value", "users"), [
    (_marker({"bob": "5", "al": "7"}), ["al", "bob"]),
    (_marker({}), None),  # a push that stored nothing names no user
    ("not json", None),
    (json.dumps([1, 2]), None),
    (json.dumps([1, 1, "[1]", "p"]), None),
])
def test_marker_users(value: str, users: list[str] | None) -> None:
    assert marker_users(value) == users


def test_marker_targets() -> None:
    mover = next(u for u in USERS if shard_of(u, 3) == 0 and shard_of(u, 4) == 3)
    stayer = next(u for u in USERS if shard_of(u, 3) == 0 and shard_of(u, 4) == 0)
    assert destination(mover, NEW) == "d" and destination(stayer, NEW) == "a"
    assert marker_targets("a", [mover], NEW) == (["d"], False)
    assert marker_targets("a", [stayer], NEW) == ([], True)
    assert marker_targets("a", [mover, stayer], NEW) == (["d"], True)


@pytest.mark.parametrize(("old", "new", "problem"), [
    (["a"], ["a", "b"], None),
    ([], ["a"], "--from names no shard"),
    (["a"], [], "--to names no shard"),
    (["a", "a"], ["a"], "--from names one Redis twice"),
    (["a"], ["b", "b"], "--to names one Redis twice"),
])
def test_list_problem(old: list[str], new: list[str], problem: str | None) -> None:
    found = list_problem(old, new)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))


def test_report_line_names_every_count() -> None:
    report = Report(users_scanned=5, users_moved=2, keys_moved=8, markers_copied=1, markers_deleted=1,
                    messages_renumbered=0)
    assert report.line(dry_run=False).startswith("users scanned: 5; users moved: 2; keys moved: 8;")
    assert "users would move: 2" in report.line(dry_run=True)
