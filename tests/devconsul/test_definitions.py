"""Decoding of register bodies the way Consul's Go decoder reads them."""

from __future__ import annotations

import pytest

from devconsul.definitions import decode_json, decode_service
from devconsul.errors import BadRequest


def test_decode_service_matches_field_names_case_insensitively_and_snake_case() -> None:
    definition = decode_service({
        "name": "web", "id": "web-1", "PORT": 8080, "tags": ["a"], "meta": {"k": "v"},
        "checks": [{"http": "http://127.0.0.1:1/h", "interval": "1s", "deregister_critical_service_after": "1m",
                    "tls_skip_verify": True, "header": {"X-A": ["1"]}}],
    })
    assert (definition.id, definition.port, definition.tags, definition.meta) == ("web-1", 8080, ("a",), (("k", "v"),))
    check = definition.checks[0]
    assert (check.kind, check.interval_ns, check.deregister_after_ns) == ("http", 10**9, 60 * 10**9)
    assert check.tls_skip_verify and check.header == (("X-A", ("1",)),)


def test_decode_service_merges_check_and_checks_in_order() -> None:
    definition = decode_service({"Name": "s", "Check": {"TTL": "5s"}, "Checks": [{"TTL": "6s"}, {"TTL": "7s"}]})
    assert [c.ttl_ns // 10**9 for c in definition.checks] == [5, 6, 7]


def test_decode_service_accepts_durations_as_nanoseconds() -> None:
    assert decode_service({"Name": "s", "Check": {"TTL": 2_000_000_000}}).checks[0].ttl_ns == 2 * 10**9


def test_decode_service_defaults_id_to_name() -> None:
    assert decode_service({"Name": "svc"}).id == "svc"


@pytest.mark.parametrize(("body", "reason"), [
    ({}, "Missing service name"),
    ({"Name": "s", "Port": "80"}, "Request decode failed: json: cannot unmarshal string into Go struct field "
                                  "ServiceDefinition.Port of type int"),
    ({"Name": "s", "Tags": "a"}, "Request decode failed: json: cannot unmarshal string into Go struct field "
                                 "ServiceDefinition.Tags of type []string"),
    ({"Name": "s", "Check": {"HTTP": "http://x"}}, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, "
                                                   "TCP or UDP checks"),
    ({"Name": "s", "Check": {"TTL": "1s", "Status": "ok"}}, "Status for checks must 'passing', 'warning', "
                                                            "'critical'"),
    ({"Name": "s", "Check": {"TTL": "soon"}}, 'Request decode failed: time: invalid duration "soon"'),
    ({"Name": "s", "Check": {"TCP": "127.0.0.1:1", "Interval": "1s"}},
     "Invalid check: devconsul runs only HTTP and TTL checks, not TCP"),
    ([1], "Request decode failed: json: cannot unmarshal array into Go value of type structs.ServiceDefinition"),
])
def test_decode_service_rejects_invalid_definitions(body: object, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_service(body)
    assert info.value.reason == reason


@pytest.mark.parametrize("raw", [b"", b"  ", b"{", b"\xff"])
def test_decode_json_rejects_undecodable_bodies(raw: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        decode_json(raw)
    assert info.value.reason.startswith("Request decode failed: ")
