"""Property tests of the wire decoders: no input crashes them, every rejection is a clean, named error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wsnode.envelope import (
    MAX_JSON_DEPTH,
    Ack,
    JsonTooLarge,
    Ping,
    Publish,
    bounded_json,
    decode_client_frame,
    json_depth,
    parse_push,
    parse_since,
)
from wsnode.errors import FrameError, PushError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FRAME_KEYS = st.sampled_from(["type", "id", "module", "data", "ref", "event", "to"])
FRAME_TYPES = st.sampled_from(["ack", "ping", "publish", "pong", "message", "", "ACK"])


def frame_like() -> st.SearchStrategy[str]:
    """JSON objects shaped like client frames, with wrong types and missing fields mixed in."""
    obj = st.dictionaries(FRAME_KEYS, JSON | FRAME_TYPES, max_size=5)
    return obj.map(json.dumps)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), frame_like()))
def test_decode_client_frame_never_crashes(text: str) -> None:
    try:
        frame = decode_client_frame(text)
    except FrameError as error:
        assert error.code and str(error)
    else:
        assert isinstance(frame, Ack | Ping | Publish)


def push_like() -> st.SearchStrategy[Any]:
    to = st.one_of(JSON, st.fixed_dictionaries({"users": st.lists(JSON | st.text(max_size=10), max_size=3)}),
                   st.fixed_dictionaries({"all": JSON}))
    return st.fixed_dictionaries({"to": to, "module": JSON | st.text(max_size=10),
                                  "event": JSON | st.text(max_size=10), "data": JSON, "store": JSON})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), push_like().map(json.dumps), push_like()))
def test_parse_push_never_crashes_and_names_the_field(body: Any) -> None:
    try:
        push = parse_push(body)
    except PushError as error:
        assert error.field, "a rejected push names the field at fault"
    else:
        assert push.to_all != bool(push.users)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parse_since_accepts_only_our_ids(since: str) -> None:
    try:
        value = parse_since(since)
    except FrameError as error:
        assert error.code == "bad_since"
    else:
        assert value >= 0


def _reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    return 0


# Strings full of brackets, quotes and escapes: the depth scan must skip them exactly.
TRICKY_TEXT = st.text(alphabet='[]{}"\\\\ab,:', max_size=12)
NESTED = st.recursive(st.none() | st.integers() | TRICKY_TEXT,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
                      max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(NESTED, st.booleans())
def test_json_depth_counts_nesting_like_the_parsed_value(value: Any, pretty: bool) -> None:
    text = json.dumps(value, indent=1 if pretty else None)
    assert json_depth(text) == _reference_depth(value)
    assert bounded_json(text, max_bytes=len(text.encode()), max_depth=_reference_depth(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=3000), st.sampled_from(["[", '{"a":']))
def test_no_nesting_raises_anything_but_a_named_error(levels: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = opener * levels + "1" + closer * levels
    if levels > MAX_JSON_DEPTH:
        try:
            bounded_json(text, max_bytes=len(text))
        except JsonTooLarge as exc:
            assert "nested deeper than" in str(exc)
        else:
            raise AssertionError("accepted")
        try:
            decode_client_frame(text)
        except FrameError as exc:
            assert exc.code == "too_deep"
        else:
            raise AssertionError("accepted")
    else:
        assert json_depth(text) == levels
