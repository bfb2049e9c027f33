"""The body of /health from the node's measurements (wsnode/health_report.py)."""

from __future__ import annotations

from typing import Any

import pytest

from wsnode.health_report import health_details, overall


@pytest.mark.parametrize(("states", "word"), [
    ([True], "UP"), ([False], "DOWN"), ([True, True, True], "UP"), ([True, False, True], "DEGRADED"),
    ([False, False], "DOWN"),
])
def test_overall(states: list[bool], word: str) -> None:
    assert overall(states) == word


@pytest.mark.parametrize(("pinged", "live", "redis_ok", "redis", "pubsub", "shards"), [
    # One Redis: DOWN until the sessions are registered again after a gap, even though it answers.
    ([True], [True], True, "UP", "UP", None),
    ([True], [True], False, "DOWN", "UP", None),
    ([False], [False], True, "DOWN", "DOWN", None),
    # Several shards: each on its own; one lost is DEGRADED, not DOWN.
    ([True, False, True], [True, False, True], False, "DEGRADED", "DEGRADED",
     [("UP", "UP"), ("DOWN", "DOWN"), ("UP", "UP")]),
    ([True, True], [True, False], True, "UP", "DEGRADED", [("UP", "UP"), ("UP", "DOWN")]),
])
def test_health_details(pinged: list[bool], live: list[bool], redis_ok: bool, redis: str, pubsub: str,
                        shards: list[tuple[str, str]] | None) -> None:
    details: dict[str, Any] = health_details(up=True, node_id="n", pinged=pinged, live=live, redis_ok=redis_ok,
                                             sessions=3, draining=False)
    assert (details["status"], details["node"], details["sessions"], details["draining"]) == ("UP", "n", 3, False)
    assert (details["redis"], details["pubsub"]) == (redis, pubsub)
    if shards is None:
        assert "shards" not in details
    else:
        assert [(s["redis"], s["pubsub"]) for s in details["shards"]] == shards
        assert [s["shard"] for s in details["shards"]] == list(range(len(pinged)))
