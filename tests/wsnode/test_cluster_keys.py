"""Cluster key names and slots (pure): each user's keys share one slot, computed as Redis does; global keys keep
their names; the scripts' cluster variants build the same names and publish on the node's channel of that slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot as redis_key_slot

from wsnode import lua
from wsnode.cluster_lua import ACK_LUA, PUSH_LUA, cluster_variant
from wsnode.keys import Keys
from wsnode.slots import SLOTS, hash_tag, key_slot, slot_tag


@pytest.mark.parametrize(("key", "slot"), [
    ("foo", 12182), ("bar", 5061), ("{user1000}.following", 3443), ("user1000", 3443),
    ("{}foo", redis_key_slot(b"{}foo")), ("foo{}{bar}", redis_key_slot(b"foo{}{bar}")), ("", 0),
])
def test_key_slot_matches_redis(key: str, slot: int) -> None:
    assert key_slot(key) == slot == redis_key_slot(key.encode())


@pytest.mark.parametrize(("key", "tag"), [
    (b"a{b}c", b"b"), (b"a{}c", b"a{}c"), (b"{a}{b}", b"a"), (b"a{b", b"a{b"), (b"a}b{c}", b"c"), (b"{{x}}", b"{x"),
])
def test_hash_tag(key: bytes, tag: bytes) -> None:
    assert hash_tag(key) == tag


@pytest.mark.parametrize("user", ["alice", "", "}", "{x}", "a}b", "ü", "u:1", "x" * 300])
def test_cluster_user_keys_share_the_user_slot(user: str) -> None:
    keys = Keys("p:", cluster=True)
    names = [keys.user_sessions(user), keys.user_base(user), keys.user_base(user) + ":msgs",
             keys.user_revoked(user), keys.user_publish_budget(user), keys.user_dedupe("k", user)]
    assert {redis_key_slot(name.encode()) for name in names} == {keys.user_slot(user)}


def test_cluster_users_spread_over_slots() -> None:
    keys = Keys("p:", cluster=True)
    assert len({keys.user_slot(f"user{i}") for i in range(1000)}) > 900


def test_single_server_names_unchanged() -> None:
    assert Keys("p:").user_base("alice") == "p:wsgate:user:alice"
    assert Keys("p:").publish_stream_bytes == "p:wsgate:publish:bytes"
    assert Keys("p:", cluster=True).user_base("alice") == "p:wsgate:user:{u:alice}"


def test_cluster_globals_keep_their_names_and_publish_bytes_share_the_stream_slot() -> None:
    plain, cluster = Keys("p:"), Keys("p:", cluster=True)
    for name in ("push_stream", "publish_stream", "nodes", "all_sessions", "broadcast_channel"):
        assert getattr(plain, name) == getattr(cluster, name)
    assert redis_key_slot(cluster.publish_stream_bytes.encode()) == redis_key_slot(cluster.publish_stream.encode())


@pytest.mark.parametrize("script", [PUSH_LUA, ACK_LUA])
def test_cluster_scripts_build_tagged_names_and_read_no_liveness(script: str) -> None:
    assert "'wsgate:user:{u:' .. user .. '}'" in script
    assert "'wsgate:user:' .. user" not in script
    assert ":alive" not in script


def test_cluster_variant_refuses_a_script_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        cluster_variant("heartbeat", lua.source("heartbeat"))


@pytest.mark.parametrize(("slot", "tag"), [(0, "3560"), (1, "22179"), (5000, "1324"), (13907, "0"), (16383, "39296")])
def test_slot_tag_is_the_smallest_number_in_the_slot(slot: int, tag: str) -> None:
    assert slot_tag(slot) == tag
    assert redis_key_slot(f"{{{tag}}}".encode()) == slot
    assert all(key_slot(str(n)) != slot for n in range(int(tag)))


def test_every_slot_has_a_node_channel_in_that_slot() -> None:
    keys = Keys("app:", cluster=True)
    channels = [keys.node_slot_channel("node-1", slot) for slot in range(SLOTS)]
    assert [key_slot(channel) for channel in channels] == list(range(SLOTS))
    assert channels[0] == "app:wsgate:node:node-1:{3560}" and len(set(channels)) == SLOTS


@pytest.mark.parametrize(("user", "channel"), [
    ("alice", "wsgate:node:n1:{%s}"), ("bob", "wsgate:node:n1:{%s}"), ("", "wsgate:node:n1:{%s}"),
])
def test_a_users_node_channel_shares_the_users_slot(user: str, channel: str) -> None:
    keys = Keys(cluster=True)
    slot = keys.user_slot(user)
    assert keys.node_slot_channel("n1", slot) == channel % slot_tag(slot)
    assert key_slot(keys.node_slot_channel("n1", slot)) == key_slot(keys.user_base(user) + ":msgs")


@pytest.mark.parametrize("script", [PUSH_LUA, ACK_LUA])
def test_cluster_scripts_publish_sharded_on_the_channel_of_their_last_key(script: str) -> None:
    assert "redis.call('SPUBLISH', prefix .. 'wsgate:node:' .. node .. ':' .. KEYS[#KEYS]," in script
    assert "'PUBLISH'" not in script
