"""The Redis Cluster harness: six real redis-servers joined into 3 masters with a replica each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.cluster import RedisCluster
from redis.crc import key_slot

from harness.redis_cluster import CLUSTER_SLOTS, OwnCluster, parse_cluster_nodes, provide_redis_cluster

NODES_TABLE = [
    # (CLUSTER NODES line, port, role, master id, slots)
    ("a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460", 7000, "master", None, ((0, 5460),)),
    ("b2 127.0.0.1:7001@17001 slave a1 0 1 1 connected", 7001, "slave", "a1", ()),
    ("c3 127.0.0.1:7002@17002 master - 0 1 3 connected 10923-16383 42 [43->-d4]", 7002, "master", None,
     ((10923, 16383), (42, 42))),
]


@pytest.mark.parametrize(("line", "port", "role", "master", "slots"), NODES_TABLE)
def test_parse_cluster_nodes(line: str, port: int, role: str, master: str | None,
                             slots: tuple[tuple[int, int], ...]) -> None:
    (node,) = parse_cluster_nodes(line)
    assert (node.port, node.role, node.master_id, node.slots) == (port, role, master, slots)


def test_failed_nodes_are_left_out() -> None:
    assert parse_cluster_nodes("e5 127.0.0.1:7005@17005 master,fail - 0 1 5 disconnected 0-5460") == []


def test_cluster_has_three_masters_with_a_replica_each(redis_cluster: OwnCluster) -> None:
    nodes = redis_cluster.topology()
    masters = {node.node_id: node for node in nodes if node.role == "master"}
    replicas = [node for node in nodes if node.role == "slave"]
    assert len(masters) == 3 and len(replicas) == 3
    assert sorted(node.master_id for node in replicas) == sorted(masters)
    served = sorted(slot for node in masters.values() for first, last in node.slots
                    for slot in range(first, last + 1))
    assert served == list(range(CLUSTER_SLOTS))


def test_every_node_is_ok_and_replicas_in_sync(redis_cluster: OwnCluster) -> None:
    for port in redis_cluster.info.ports:
        assert redis_cluster.state_ok(port)
        info = redis.Redis(host="127.0.0.1", port=port).info("cluster")
        assert info["cluster_enabled"] == 1
    for node in redis_cluster.topology():
        assert redis_cluster.replica_in_sync(node.port) == (node.role == "slave")


def test_keys_written_through_a_cluster_client_land_on_every_master(redis_cluster: OwnCluster) -> None:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.info.ports[0])
    try:
        for index in range(60):
            client.set(f"harness-spread-{index}", index)
        owners = {client.get_node_from_key(f"harness-spread-{index}").port for index in range(60)}
        assert owners == set(redis_cluster.master_ports())
        assert client.get("harness-spread-7") == b"7"
    finally:
        client.delete(*(f"harness-spread-{index}" for index in range(60)))
        client.close()


def test_a_plain_client_on_the_wrong_master_is_moved(redis_cluster: OwnCluster) -> None:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.info.ports[0])
    owner = client.get_node_from_key("harness-moved").port
    client.close()
    other = next(port for port in redis_cluster.master_ports() if port != owner)
    plain = redis.Redis(host="127.0.0.1", port=other)
    with pytest.raises(redis.exceptions.MovedError, match=f"127.0.0.1:{owner}$"):
        plain.set("harness-moved", "x")
    plain.close()


async def test_reshard_moves_slots_with_their_keys_under_traffic(tmp_path: Path) -> None:
    # A cluster of this test's own: the session's keeps its slot layout for the other tests.
    with provide_redis_cluster(tmp_path) as cluster:
        source, target = cluster.master_ports()[:2]
        before = cluster.slot_count(source), cluster.slot_count(target)
        source_slots = {slot for node in cluster.topology() if node.port == source
                        for first, last in node.slots for slot in range(first, last + 1)}
        client = redis.asyncio.RedisCluster(host="127.0.0.1", port=source)
        written: list[int] = []
        stop = asyncio.Event()

        async def writer() -> None:
            index = 0
            while not stop.is_set():
                await client.set(f"harness-reshard-{index}", index)
                written.append(index)
                index += 1

        task = asyncio.create_task(writer())
        await asyncio.to_thread(cluster.reshard, source, target, 500)
        stop.set()
        await task
        try:
            assert (cluster.slot_count(source), cluster.slot_count(target)) == (before[0] - 500, before[1] + 500)
            target_slots = {slot for node in cluster.topology() if node.port == target
                            for first, last in node.slots for slot in range(first, last + 1)}
            moved = [index for index in written if key_slot(f"harness-reshard-{index}".encode()) in
                     source_slots & target_slots]
            assert moved, f"none of {len(written)} writes landed in a moved slot"
            values = await client.mget_nonatomic([f"harness-reshard-{index}" for index in written])
            assert values == [str(index).encode() for index in written]
        finally:
            await client.aclose()
