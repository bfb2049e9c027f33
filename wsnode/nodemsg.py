"""The node-to-node message (pure): what one node (or a Lua script run for it) publishes on another node's channel.

One JSON object with one-letter keys (a push to many users crosses Redis once per node, so every byte repeats). The
keys below are the wire format between nodes of different versions during a rolling upgrade: never rename one.

| kind (`k`)   | fields                                          | written by                          |
|--------------|-------------------------------------------------|-------------------------------------|
| `push`       | `p` push id, `t` message tail, `d` deliveries   | `wsnode/lua/push.lua`               |
| `all`        | `p` push id, `t` message tail                   | `Router.broadcast` (delivery.py)    |
| `unread`     | `u` user, `n` unread counts per module          | `wsnode/lua/ack.lua`                |
| `disconnect` | `u` user                                        | `Node.disconnect_user` (node.py)    |
| `evict`      | `u` user, `s` session ids to close              | `Node.evict_oldest` (node.py)       |
| `hb`         | `o` the token of the publishing process         | the subscription heartbeat          |

A delivery (`d`) is `{u, i, f?, n?}`: the user, the stored id (or, when not stored, the user's current id), the
stored frame and the user's new unread counts (both only when the push was stored). tests/wsnode/test_nodemsg.py
checks that the Lua scripts build these tables with these keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wsnode.errors import WsnodeError

KIND = "k"
PUSH_ID = "p"
TAIL = "t"
DELIVERIES = "d"
USER = "u"
ID = "i"
FRAME = "f"
COUNTS = "n"
SESSIONS = "s"
TOKEN = "o"

PUSH = "push"
BROADCAST = "all"
UNREAD = "unread"
DISCONNECT = "disconnect"
EVICT = "evict"
HEARTBEAT = "hb"

# Every kind's keys in the order Python writes them (the order of the bytes before this module existed).
FIELDS: dict[str, tuple[str, ...]] = {
    PUSH: (KIND, PUSH_ID, TAIL, DELIVERIES),
    BROADCAST: (KIND, PUSH_ID, TAIL),
    UNREAD: (KIND, USER, COUNTS),
    DISCONNECT: (KIND, USER),
    EVICT: (KIND, USER, SESSIONS),
    HEARTBEAT: (KIND, TOKEN),
}
DELIVERY_FIELDS = (USER, ID, FRAME, COUNTS)
DELIVERY_OPTIONAL = frozenset({FRAME, COUNTS})


class NodeMessageError(WsnodeError):
    """A payload on a node channel that is not a node message; the subscriber logs and skips it."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One user's part of a push: `position` is the stored id, or the user's current id when not stored."""

    user: str
    position: int
    frame: str | None = None
    unread: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Push:
    """A push to users whose sessions this node holds."""

    push_id: str
    tail: str
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A message for every session of every node."""

    push_id: str
    tail: str


@dataclass(frozen=True, slots=True)
class Unread:
    """A user's new unread counts (after an ack)."""

    user: str
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close every session of the user here."""

    user: str


@dataclass(frozen=True, slots=True)
class Evict:
    """Close these sessions of the user (over the per-user session limit)."""

    user: str
    sessions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A subscription's own heartbeat, told apart from an earlier process's by its token."""

    token: str


NodeMessage = Push | Broadcast | Unread | Disconnect | Evict | Heartbeat


def encode(message: NodeMessage) -> str:
    """The JSON text of `message`, keys in `FIELDS` order, compact, ASCII only."""
    return json.dumps(_as_object(message), separators=(",", ":"))


def _as_object(message: NodeMessage) -> dict[str, Any]:
    match message:
        case Push(push_id, tail, deliveries):
            return {KIND: PUSH, PUSH_ID: push_id, TAIL: tail, DELIVERIES: [_delivery_object(d) for d in deliveries]}
        case Broadcast(push_id, tail):
            return {KIND: BROADCAST, PUSH_ID: push_id, TAIL: tail}
        case Unread(user, counts):
            return {KIND: UNREAD, USER: user, COUNTS: counts}
        case Disconnect(user):
            return {KIND: DISCONNECT, USER: user}
        case Evict(user, sessions):
            return {KIND: EVICT, USER: user, SESSIONS: list(sessions)}
        case Heartbeat(token):
            return {KIND: HEARTBEAT, TOKEN: token}


def _delivery_object(delivery: Delivery) -> dict[str, Any]:
    out: dict[str, Any] = {USER: delivery.user, ID: delivery.position}
    if delivery.frame is not None:
        out[FRAME] = delivery.frame
    if delivery.unread is not None:
        out[COUNTS] = delivery.unread
    return out


def decode(data: str | bytes) -> NodeMessage:
    """The message in `data`; NodeMessageError naming the kind and key when it is not a valid node message.

    Keys a kind does not define are ignored, so a later version may add one without breaking this one."""
    try:
        obj = json.loads(data)
    except ValueError:  # UnicodeDecodeError is one too
        raise NodeMessageError("not JSON") from None
    except RecursionError:
        raise NodeMessageError("nested too deeply") from None
    if not isinstance(obj, dict):
        raise NodeMessageError(f"not a JSON object but {_type(obj)}")
    kind = obj.get(KIND)
    if kind == PUSH:
        deliveries = obj.get(DELIVERIES)
        if not isinstance(deliveries, list):
            raise NodeMessageError(f"{PUSH}: {DELIVERIES!r} must be a list, not {_type(deliveries)}")
        return Push(_str(obj, PUSH_ID, kind), _str(obj, TAIL, kind),
                    tuple(_delivery(item, index) for index, item in enumerate(deliveries)))
    if kind == BROADCAST:
        return Broadcast(_str(obj, PUSH_ID, kind), _str(obj, TAIL, kind))
    if kind == UNREAD:
        return Unread(_str(obj, USER, kind), _counts(obj.get(COUNTS), f"{kind}: {COUNTS!r}"))
    if kind == DISCONNECT:
        return Disconnect(_str(obj, USER, kind))
    if kind == EVICT:
        sessions = obj.get(SESSIONS)
        if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
            raise NodeMessageError(f"{EVICT}: {SESSIONS!r} must be a list of strings")
        return Evict(_str(obj, USER, kind), tuple(sessions))
    if kind == HEARTBEAT:
        return Heartbeat(_str(obj, TOKEN, kind))
    if isinstance(kind, str):
        raise NodeMessageError(f"unknown kind {kind[:40]!r}")
    raise NodeMessageError(f"{KIND!r} must be a string, not {_type(kind)}")


def _delivery(item: Any, index: int) -> Delivery:
    where = f"{PUSH}: {DELIVERIES}[{index}]"
    if not isinstance(item, dict):
        raise NodeMessageError(f"{where} must be an object, not {_type(item)}")
    frame = item.get(FRAME)
    if frame is not None and not isinstance(frame, str):
        raise NodeMessageError(f"{where}: {FRAME!r} must be a string, not {_type(frame)}")
    counts = item.get(COUNTS)
    return Delivery(user=_str(item, USER, where), position=_int(item.get(ID), f"{where}: {ID!r}"), frame=frame,
                    unread=None if counts is None else _counts(counts, f"{where}: {COUNTS!r}"))


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise NodeMessageError(f"{where}: {key!r} must be a string, not {_type(value)}")
    return value


def _int(value: Any, where: str) -> int:
    # Lua numbers are doubles: cjson may write a whole number as a float (1e+15), which still names an id.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise NodeMessageError(f"{where} must be an integer, not {_type(value)}")
    return value


def _counts(value: Any, where: str) -> dict[str, int]:
    # An empty Lua table is written as `{}`, so no counts is an object too.
    if not isinstance(value, dict):
        raise NodeMessageError(f"{where} must be an object, not {_type(value)}")
    return {module: _int(count, f"{where}[{module[:40]!r}]") for module, count in value.items()}


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__
