"""Shard choice (wsnode/sharding.py): jump consistent hash of crc32(user), table-tested; no Redis involved."""

from __future__ import annotations

import zlib

import pytest

from wsnode.errors import SettingsError
from wsnode.settings import NodeSettings
from wsnode.sharding import Shards, group_by_shard, jump_hash, shard_list_mismatch, shard_of

USERS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize(("key", "buckets", "expected"), [
    # The reference vectors of the algorithm's Go implementation (github.com/dgryski/go-jump).
    (1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520),
])
def test_sharding_jump_hash_matches_reference_vectors(key: int, buckets: int, expected: int) -> None:
    assert jump_hash(key, buckets) == expected


@pytest.mark.parametrize(("user", "shards", "expected"), [
    # Pinned: a change here moves users between shards of a running deployment (their stores would be lost).
    ("alice", 2, 1), ("bob", 2, 0), ("carol", 2, 0), ("dave", 2, 0),
    ("alice", 4, 1), ("bob", 4, 0), ("carol", 4, 3), ("dave", 4, 3),
    ("u0", 2, 1), ("u1", 2, 0), ("u2", 2, 0), ("u3", 2, 0), ("u4", 2, 1),
])
def test_sharding_assignments_are_stable(user: str, shards: int, expected: int) -> None:
    assert shard_of(user, shards) == expected
    assert shard_of(user, shards) == jump_hash(zlib.crc32(user.encode()), shards)


def test_sharding_one_shard_is_always_zero() -> None:
    assert {shard_of(user, 1) for user in USERS} == {0}
    assert group_by_shard(["b", "a", "b"], 1) == {0: ["b", "a", "b"]}


@pytest.mark.parametrize("shards", [2, 3, 4, 8])
def test_sharding_spreads_users_evenly(shards: int) -> None:
    counts = [0] * shards
    for user in USERS:
        counts[shard_of(user, shards)] += 1
    expected = len(USERS) / shards
    assert all(abs(n - expected) < 0.1 * expected for n in counts), counts


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_sharding_growing_moves_about_one_in_s_plus_one_users_and_only_to_the_new_shard(shards: int) -> None:
    moved = [user for user in USERS if shard_of(user, shards) != shard_of(user, shards + 1)]
    # Jump hashing: a user moves only to the new shard, and 1/(S+1) of them do.
    assert {shard_of(user, shards + 1) for user in moved} <= {shards}
    share = len(moved) / len(USERS)
    assert abs(share - 1 / (shards + 1)) < 0.02, share


def test_sharding_group_keeps_order_within_each_shard() -> None:
    users = [f"g{i}" for i in range(50)]
    groups = group_by_shard(users, 3)
    assert sorted(u for part in groups.values() for u in part) == sorted(users)
    for index, part in groups.items():
        assert part == [u for u in users if shard_of(u, 3) == index]


def test_sharding_shards_object_picks_the_client_of_the_users_shard() -> None:
    shards = Shards(["r0", "r1", "r2"])
    assert shards.count == 3 and shards.primary == "r0" and shards.all == ("r0", "r1", "r2")
    for user in USERS[:100]:
        assert shards.for_user(user) == f"r{shard_of(user, 3)}" and shards.index_of(user) == shard_of(user, 3)
    with pytest.raises(ValueError):
        Shards([])
    with pytest.raises(ValueError):
        jump_hash(1, 0)


def test_sharding_settings_accept_a_list_of_redis_urls() -> None:
    one = NodeSettings(port=1, node_id="n", allow_anonymous=True)
    assert one.redis_urls == ("redis://127.0.0.1:6379/0",)
    many = NodeSettings(port=1, node_id="n", allow_anonymous=True, redis_url="redis://a:1/0, redis://b:2/0")
    assert many.redis_urls == ("redis://a:1/0", "redis://b:2/0")


@pytest.mark.parametrize(("value", "named"), [
    ("redis://a:1/0,http://b:2", "'http://b:2'"),
    ("redis://a:1/0,", "''"),
    ("redis://a:1/0,redis://a:1/0", "twice"),
    ("a:1", "'a:1'"),
])
def test_sharding_settings_name_the_bad_redis_url(value: str, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        NodeSettings(port=1, node_id="n", allow_anonymous=True, redis_url=value)


@pytest.mark.parametrize(("observed", "stored", "problem"), [
    (["a", "b"], None, None),
    (["a", "b"], '["a", "b"]', None),
    (["a", "b", "c"], '["a", "b"]', "this node lists 3 Redis shard(s)"),
    (["b", "a"], '["a", "b"]', "shard 0 redis://s0 (the other nodes use it as shard 1); "
                               "shard 1 redis://s1 (the other nodes use it as shard 0)"),
    (["a", "c"], '["a", "b"]', "shard 1 redis://s1 (it is not in the other nodes' list)"),
    (["a"], "not json", "is not JSON"),
    (["a"], '{"a": 1}', "is not a list of ids"),
])
def test_sharding_list_mismatch_names_the_difference(observed: list[str], stored: str | None,
                                                     problem: str | None) -> None:
    urls = [f"redis://s{i}" for i in range(len(observed))]
    verdict = shard_list_mismatch(urls, observed, stored)
    if problem is None:
        assert verdict is None
    else:
        assert verdict is not None and problem in verdict
