"""The pure KV store: indexes, check-and-set, listing and deletion."""

from __future__ import annotations

import pytest

from devconsul.catalog import IndexClock
from devconsul.errors import BadRequest, PayloadTooLarge
from devconsul.kv import MAX_VALUE_BYTES, KVStore


def test_kv_put_get_keeps_create_index_and_advances_modify_index() -> None:
    kv = KVStore(IndexClock())
    assert kv.put("a", b"1")[0]
    _, first = kv.get("a")
    kv.put("a", b"2", flags=7)
    index, second = kv.get("a")
    assert first is not None and second is not None
    assert (second.value, second.flags, second.create_index) == (b"2", 7, first.create_index)
    assert index == second.modify_index > first.modify_index


@pytest.mark.parametrize(("exists", "cas", "applied"), [
    (False, 0, True), (True, 0, False), (True, "current", True), (True, 1, False),
])
def test_kv_put_check_and_set(exists: bool, cas: object, applied: bool) -> None:
    kv = KVStore(IndexClock(start=10))
    if exists:
        kv.put("k", b"old")
    _, entry = kv.get("k")
    index = entry.modify_index if (cas == "current" and entry) else cas
    assert isinstance(index, int)
    assert kv.put("k", b"new", cas=index)[0] is applied


def test_kv_list_index_follows_deletions_under_prefix() -> None:
    kv = KVStore(IndexClock())
    kv.put("app/a", b"1")
    kv.put("app/b", b"2")
    kv.put("other", b"3")
    kv.delete("app/b")
    index, entries = kv.list_prefix("app/")
    assert [e.key for e in entries] == ["app/a"]
    assert index == kv.clock.value  # the deletion of app/b is the newest change under the prefix


def test_kv_keys_roll_up_at_separator() -> None:
    kv = KVStore(IndexClock())
    for key in ("a/b/c", "a/b/d", "a/e", "f"):
        kv.put(key, b"")
    assert kv.keys("", "/")[1] == ["a/", "f"]
    assert kv.keys("a/", "/")[1] == ["a/b/", "a/e"]
    assert kv.keys("a/", "")[1] == ["a/b/c", "a/b/d", "a/e"]


def test_kv_delete_recurse_and_cas() -> None:
    kv = KVStore(IndexClock())
    kv.put("p/1", b"")
    kv.put("p/2", b"")
    _, entry = kv.get("p/1")
    assert entry is not None
    assert kv.delete("p/1", cas=entry.modify_index + 1)[0] is False
    assert kv.delete("p/1", cas=entry.modify_index)[0] is True
    assert kv.delete("p/", recurse=True)[0] is True
    assert kv.list_prefix("p/")[1] == []


def test_kv_rejects_missing_key_and_oversized_value() -> None:
    kv = KVStore(IndexClock())
    with pytest.raises(BadRequest):
        kv.put("", b"x")
    with pytest.raises(BadRequest):
        kv.delete("")
    with pytest.raises(PayloadTooLarge):
        kv.put("k", b"x" * (MAX_VALUE_BYTES + 1))
