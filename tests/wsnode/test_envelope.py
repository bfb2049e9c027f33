"""Table tests of the wire format (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsnode.envelope import (
    Ack,
    Ping,
    Publish,
    decode_client_frame,
    encode_accepted,
    encode_error,
    encode_message,
    encode_unread,
    encode_welcome,
    ephemeral_id,
    message_tail,
    parse_push,
    parse_since,
    parse_stored_id,
)
from wsnode.errors import FrameError, PushError


@pytest.mark.parametrize(("text", "frame"), [
    ('{"type":"ping"}', Ping()),
    ('{"type":"ack","id":"17"}', Ack("17")),
    ('{"type":"publish","module":"chat","data":{"a":1},"ref":"r1"}', Publish("chat", {"a": 1}, "r1")),
    ('{"type":"publish","module":"chat"}', Publish("chat", None, None)),
])
def test_decode_client_frame_accepts_each_type(text: str, frame: object) -> None:
    assert decode_client_frame(text) == frame


@pytest.mark.parametrize(("text", "code"), [
    ("", "bad_json"),
    ("{", "bad_json"),
    ("[]", "bad_frame"),
    ("{}", "bad_frame"),
    ('{"type":1}', "bad_frame"),
    ('{"type":"shout"}', "unknown_type"),
    ('{"type":"ack"}', "bad_frame"),
    ('{"type":"ack","id":5}', "bad_frame"),
    ('{"type":"ack","id":""}', "bad_frame"),
    ('{"type":"publish"}', "bad_frame"),
    ('{"type":"publish","module":"has space"}', "bad_frame"),
])
def test_decode_client_frame_rejects_with_a_code(text: str, code: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_client_frame(text)
    assert info.value.code == code


def test_encoded_server_frames_have_the_contract_shapes() -> None:
    welcome = json.loads(encode_welcome(session="s", user="u", node="n", unread={"m": 2}, recovered=None))
    assert welcome == {"type": "welcome", "session": "s", "user": "u", "node": "n", "unread": {"m": 2}}
    assert json.loads(encode_welcome(session="s", user="u", node="n", unread={}, recovered=False))["recovered"] is False
    assert json.loads(encode_unread({"a": 1})) == {"type": "unread", "unread": {"a": 1}}
    assert json.loads(encode_error("bad_json", "no")) == {"type": "error", "code": "bad_json", "reason": "no"}
    assert json.loads(encode_accepted({"x": 1})) == {"type": "accepted", "ref": {"x": 1}}
    tail = message_tail(module="m\u00e9", event='e"v', data_json='{"k":[1,2]}', ts_ms=123)
    assert json.loads(encode_message("5", tail)) == {"type": "message", "id": "5", "module": "m\u00e9",
                                                     "event": 'e"v', "data": {"k": [1, 2]}, "ts": 123}


@pytest.mark.parametrize(("since", "number"), [
    ("0", 0), ("17", 17), (ephemeral_id(17, "abc"), 17), ("3-x-y", 3),
])
def test_parse_since_reads_stored_and_ephemeral_ids(since: str, number: int) -> None:
    assert parse_since(since) == number


@pytest.mark.parametrize("since", ["", "x", "-1", "1.5", "9" * 19, "abc-1"])
def test_parse_since_rejects_foreign_ids(since: str) -> None:
    with pytest.raises(FrameError):
        parse_since(since)


@pytest.mark.parametrize(("ident", "number"), [("12", 12), ("12-ab", None), ("x", None), ("", None)])
def test_parse_stored_id(ident: str, number: int | None) -> None:
    assert parse_stored_id(ident) == number


@pytest.mark.parametrize(("body", "expected"), [
    ({"to": {"users": ["a", "b", "a"]}, "module": "notice"},
     {"users": ("a", "b"), "to_all": False, "module": "notice", "event": "message", "data_json": "null",
      "store": True}),
    ({"to": {"all": True}, "module": "sys", "event": "x", "data": [1], "store": True},
     {"users": (), "to_all": True, "module": "sys", "event": "x", "data_json": "[1]", "store": False}),
    ({"to": {"users": ["u"]}, "module": "m", "data": {"\u00e9": 1}, "store": False},
     {"users": ("u",), "data_json": '{"\u00e9":1}', "store": False}),
])
def test_parse_push_accepts(body: dict[str, Any], expected: dict[str, Any]) -> None:
    request = parse_push(json.dumps(body))
    assert {key: getattr(request, key) for key in expected} == expected


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "body"),
    (b'"text"', "body"),
    (b"{}", "to"),
    (b'{"to":[],"module":"m"}', "to"),
    (b'{"to":{},"module":"m"}', "to.users"),
    (b'{"to":{"users":"u"},"module":"m"}', "to.users"),
    (b'{"to":{"users":[1]},"module":"m"}', "to.users"),
    (b'{"to":{"users":["a|b"]},"module":"m"}', "to.users"),
    (b'{"to":{"all":true,"users":["u"]},"module":"m"}', "to.all"),
    (b'{"to":{"all":1},"module":"m"}', "to.all"),
    (b'{"to":{"users":["u"]},"module":""}', "module"),
    (b'{"to":{"users":["u"]},"module":"m","event":""}', "event"),
    (b'{"to":{"users":["u"]},"module":"m","store":1}', "store"),
    (b'{"to":{"users":["u"]},"module":"m","data":NaN}', "data"),
])
def test_parse_push_names_the_bad_field(body: bytes, field: str) -> None:
    with pytest.raises(PushError) as info:
        parse_push(body)
    assert info.value.field == field
