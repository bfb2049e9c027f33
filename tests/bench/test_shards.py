"""bench.shards' parsing: commandstats µs, CLUSTER INFO counters, which master serves a user, what counts as work."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bench.shards import cluster_info_counters, ignored, master_of_slots, usec_by_command, user_master, work

NODES = (
    "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n"
    "b2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922 [10923->-c3]\n"
    "c3 127.0.0.1:7003@17003 master - 0 1 3 connected 10923-16383\n"
    "d4 127.0.0.1:7004@17004 slave a1 0 1 1 connected\n"
)


@pytest.mark.parametrize(("stats", "expected"), [
    ({}, {}),
    ({"cmdstat_evalsha": {"calls": 10, "usec": 380, "usec_per_call": 38.0},
      "cmdstat_publish": {"calls": 10, "usec": 12}}, {"evalsha": 380, "publish": 12}),
    ({"cmdstat_client|setname": {"calls": 2, "usec": 3}, "errorstat_ERR": "x"}, {"client|setname": 3}),
])
def test_usec_by_command(stats: dict[str, Any], expected: dict[str, int]) -> None:
    assert usec_by_command(stats) == Counter(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("cluster_state:ok\r\ncluster_slots_ok:16384\r\ncluster_known_nodes:6\r\n",
     {"cluster_slots_ok": 16384, "cluster_known_nodes": 6}),
    ("cluster_stats_messages_publish_received:1234\r\ncluster_stats_messages_publish_sent:99\r\n",
     {"cluster_stats_messages_publish_received": 1234, "cluster_stats_messages_publish_sent": 99}),
    ("cluster_state:fail\nnot-a-field\ncluster_current_epoch:-1\n", {"cluster_current_epoch": -1}),
])
def test_cluster_info_counters(text: str, expected: dict[str, int]) -> None:
    assert cluster_info_counters(text) == expected


def test_master_of_slots_lists_served_ranges_only() -> None:
    # The replica serves nothing, and a slot being migrated ([...]) is still its source's.
    assert master_of_slots(NODES) == [(0, 5460, 7001), (5461, 10922, 7002), (10923, 16383, 7003)]


@pytest.mark.parametrize(("user", "port"), [
    ("bu0", 7001),  # CLUSTER KEYSLOT {u:bu0} is 3687
    ("bu1", 7002),  # 7750
    ("bu2", 7003),  # 11813
])
def test_user_master(user: str, port: int) -> None:
    assert user_master(user, master_of_slots(NODES)) == port


def test_user_master_of_an_unserved_slot_is_an_error() -> None:
    with pytest.raises(ValueError, match="served by no master"):
        user_master("bu0", [(0, 3686, 7001), (3688, 16383, 7002)])


@pytest.mark.parametrize(("name", "expected"), [
    ("ping", True), ("info", True), ("config|resetstat", True), ("cluster|slots", True), ("cluster|info", True),
    ("command", True), ("command|docs", True), ("evalsha", False), ("publish", False), ("client|setname", False),
])
def test_ignored(name: str, expected: bool) -> None:
    assert ignored(name) is expected


def test_work_counts_the_system_under_test_only() -> None:
    assert work(Counter({"evalsha": 10, "publish": 3, "ping": 50, "cluster|slots": 4, "info": 2})) == 13
