"""The wire format (pure): client frames decoded and validated, server frames encoded, push requests parsed.

Stored message ids are the user's sequence number as a decimal string ("17"). Messages that are not stored
(`store:false`, broadcasts) get ids of the form "<last stored id the session saw>-<push id>", so that a client that
passes such an id back as `since` still resumes from the right stored message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from wsnode.errors import FrameError, PushError
from wsnode.wsframes import text_frame as text_frame  # the one definition of the wire format lives there

MODULE_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
MAX_USERS_PER_PUSH = 10_000
# Bounds on every JSON document the node decodes (client frames, push bodies, stream entries): Python's decoder
# recurses once per level, so a deeply nested document would otherwise raise RecursionError wherever it is read.
MAX_JSON_DEPTH = 64
MAX_PUSH_BYTES = 1024 * 1024
USER_ID_RULE = "user ids are 1-128 printable characters without whitespace, control characters or '|'"
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)  # a JSON string (unrolled: linear time)
_BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def valid_user_id(user: object) -> bool:
    """A user id (a token's `sub`, a user named in the push API): 1-128 printable characters, none of them
    whitespace, a control character or '|' (the separator of the registry's `<node>|<session>` members)."""
    return (isinstance(user, str) and 0 < len(user) <= 128 and user.isprintable() and "|" not in user
            and not any(c.isspace() for c in user))


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in `text` (brackets inside strings do not count); no recursion."""
    if "[" not in text and "{" not in text:
        return 0
    brackets = _BRACKETS.findall(_STRINGS.sub("", text))
    return max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


class JsonTooLarge(ValueError):
    """A JSON document over a size or nesting bound (the reason says which)."""


def bounded_json(raw: str | bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` within bounds: JsonTooLarge when over `max_bytes` or `max_depth`, ValueError when not JSON."""
    if len(raw) > max_bytes:
        raise JsonTooLarge(f"larger than {max_bytes} bytes")
    text = raw.decode() if isinstance(raw, bytes) else raw  # UnicodeDecodeError is a ValueError
    if json_depth(text) > max_depth:
        raise JsonTooLarge(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept so no input can end a caller's task
        raise JsonTooLarge(f"nested deeper than {max_depth} levels") from None


@dataclass(frozen=True, slots=True)
class Ack:
    """`{"type":"ack","id":ID}`: the client has read message ID."""

    id: str


@dataclass(frozen=True, slots=True)
class Ping:
    """`{"type":"ping"}`: answered with pong."""


@dataclass(frozen=True, slots=True)
class Publish:
    """`{"type":"publish","module":M,"data":...,"ref":X}`: handed to backends through a Redis stream."""

    module: str
    data: Any
    ref: Any


ClientFrame = Ack | Ping | Publish


def decode_client_frame(text: str) -> ClientFrame:
    """Parse one client text frame; FrameError names what is wrong (its size is bounded by the WebSocket reader)."""
    try:
        obj = bounded_json(text, max_bytes=len(text))
    except JsonTooLarge as exc:
        raise FrameError("too_deep", f"frame is {exc}") from None
    except ValueError:
        raise FrameError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FrameError("bad_frame", "frame must be a JSON object")
    kind = obj.get("type")
    if kind == "ping":
        return Ping()
    if kind == "ack":
        ident = obj.get("id")
        if not isinstance(ident, str) or not ident:
            raise FrameError("bad_frame", "ack needs a string id")
        return Ack(ident)
    if kind == "publish":
        module = obj.get("module")
        if not isinstance(module, str) or not MODULE_RE.fullmatch(module):
            raise FrameError("bad_frame", "publish needs a module (1-64 of A-Z a-z 0-9 _ . : / -)")
        return Publish(module=module, data=obj.get("data"), ref=obj.get("ref"))
    if not isinstance(kind, str):
        raise FrameError("bad_frame", "frame needs a string type")
    raise FrameError("unknown_type", f"unknown frame type {kind!r}")


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_welcome(*, session: str, user: str, node: str, unread: dict[str, int], recovered: bool | None,
                   last: int | None = None) -> str:
    """The first frame of every session; `last` is the user's last stored id when the store was read (the point
    clients check the next ids against for gaps, docs/protocol.md)."""
    obj: dict[str, Any] = {"type": "welcome", "session": session, "user": user, "node": node, "unread": unread}
    if recovered is not None:
        obj["recovered"] = recovered
    if last is not None:
        obj["last"] = str(last)
    return _dumps(obj)


def encode_unread(unread: dict[str, int]) -> str:
    """Unread counts per module after a change."""
    return _dumps({"type": "unread", "unread": unread})


def encode_error(code: str, reason: str) -> str:
    """The answer to a bad client frame."""
    return _dumps({"type": "error", "code": code, "reason": reason})


def encode_pong() -> str:
    """The answer to a ping."""
    return '{"type":"pong"}'


def encode_accepted(ref: Any) -> str:
    """The answer to a publish."""
    return _dumps({"type": "accepted", "ref": ref})


def message_tail(*, module: str, event: str, data_json: str, ts_ms: int) -> str:
    """Everything of a message frame after its id, shared by every recipient of one push."""
    return (f',"module":{json.dumps(module, ensure_ascii=False)},"event":{json.dumps(event, ensure_ascii=False)}'
            f',"data":{data_json},"ts":{ts_ms}}}')


def encode_message(ident: str, tail: str) -> str:
    """A message frame from its id and the shared tail."""
    return '{"type":"message","id":' + json.dumps(ident) + tail


def ephemeral_id(last_stored_id: int, push_id: str) -> str:
    """The id of a message that is not stored, relative to the last stored id the session saw."""
    return f"{last_stored_id}-{push_id}"


def parse_since(since: str) -> int:
    """The stored sequence number a `since` value means; FrameError when it is not one of our ids."""
    head = since.split("-", 1)[0]
    # isdigit() alone admits characters like '²' that int() refuses; our ids are ASCII digits.
    if not (head.isascii() and head.isdigit()) or len(head) > 18:
        raise FrameError("bad_since", "since must be a message id this server sent")
    return int(head)


def parse_stored_id(ident: str) -> int | None:
    """The sequence number of a stored message id, or None for an ephemeral or foreign id."""
    if ident.isascii() and ident.isdigit() and len(ident) <= 18:
        return int(ident)
    return None


@dataclass(frozen=True, slots=True)
class PushRequest:
    """A validated push: to some users (or all), one module/event/data, stored or not."""

    module: str
    event: str
    data_json: str
    users: tuple[str, ...] = ()
    to_all: bool = False
    store: bool = True

    def __post_init__(self) -> None:
        if self.to_all == bool(self.users):
            raise PushError("to", "give either users or all, not both or neither")


def parse_push(body: str | bytes | dict[str, Any]) -> PushRequest:
    """Validate a push request body (API or stream payload); PushError names the bad field."""
    if isinstance(body, dict):
        obj = body
    else:
        try:
            obj = bounded_json(body, max_bytes=MAX_PUSH_BYTES)
        except JsonTooLarge as exc:
            raise PushError("body", f"is {exc}") from None
        except ValueError:
            raise PushError("body", "not valid JSON") from None
        if not isinstance(obj, dict):
            raise PushError("body", "must be a JSON object")
    to = obj.get("to")
    if not isinstance(to, dict):
        raise PushError("to", 'required: {"users":[...]} or {"all":true}')
    users: tuple[str, ...] = ()
    to_all = False
    if "all" in to:
        if to["all"] is not True or "users" in to:
            raise PushError("to.all", 'must be true, alone ({"all":true})')
        to_all = True
    else:
        raw = to.get("users")
        if not isinstance(raw, list) or not raw:
            raise PushError("to.users", "must be a non-empty list of user ids")
        if len(raw) > MAX_USERS_PER_PUSH:
            raise PushError("to.users", f"at most {MAX_USERS_PER_PUSH} users per push")
        for user in raw:
            if not valid_user_id(user):
                raise PushError("to.users", USER_ID_RULE)
        users = tuple(dict.fromkeys(raw))
    module = obj.get("module")
    if not isinstance(module, str) or not MODULE_RE.fullmatch(module):
        raise PushError("module", "required: 1-64 of A-Z a-z 0-9 _ . : / -")
    event = obj.get("event", "message")
    if not isinstance(event, str) or not 0 < len(event) <= 64:
        raise PushError("event", "must be a string of 1-64 characters")
    store = obj.get("store", True)
    if not isinstance(store, bool):
        raise PushError("store", "must be true or false")
    try:
        data_json = json.dumps(obj.get("data"), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise PushError("data", "must be JSON (no NaN or Infinity)") from None
    return PushRequest(module=module, event=event, data_json=data_json, users=users, to_all=to_all,
                       store=store and not to_all)
