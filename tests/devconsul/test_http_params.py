"""Query parameter parsing of the HTTP layer and the HTTP check's status mapping."""

from __future__ import annotations

import pytest

from devconsul.checks import status_for_http
from devconsul.errors import BadRequest
from devconsul.http import parse_blocking, parse_bool


@pytest.mark.parametrize(("query", "expected"), [
    ({}, (0, 300.0)),
    ({"index": "12"}, (12, 300.0)),
    ({"index": "12", "wait": "5s"}, (12, 5.0)),
    ({"index": "1", "wait": "1m"}, (1, 60.0)),
    ({"index": "1", "wait": "1h"}, (1, 600.0)),  # capped at 10m like Consul
    ({"index": "1", "wait": "250ms"}, (1, 0.25)),
])
def test_parse_blocking_defaults_and_caps_wait(query: dict[str, str], expected: tuple[int, float]) -> None:
    assert parse_blocking(query) == expected


@pytest.mark.parametrize(("query", "reason"), [
    ({"index": "-1"}, "Invalid index"), ({"index": "x"}, "Invalid index"), ({"index": "²"}, "Invalid index"),
    ({"wait": "5"}, "Invalid wait time"),
])
def test_parse_blocking_rejects_bad_values(query: dict[str, str], reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_blocking(query)
    assert info.value.reason == reason


@pytest.mark.parametrize(("raw", "expected"), [("", True), ("1", True), ("true", True), ("True", True),
                                               ("0", False), ("false", False), ("F", False)])
def test_parse_bool_follows_go_strconv(raw: str, expected: bool) -> None:
    assert parse_bool(raw, "passing") is expected


def test_parse_bool_rejects_other_words() -> None:
    with pytest.raises(BadRequest, match=r"Invalid value for \?passing"):
        parse_bool("yes", "passing")


@pytest.mark.parametrize(("code", "status"), [(200, "passing"), (204, "passing"), (299, "passing"),
                                              (429, "warning"), (301, "critical"), (404, "critical"),
                                              (500, "critical"), (503, "critical")])
def test_http_check_status_mapping_matches_consul(code: int, status: str) -> None:
    assert status_for_http(code) == status
