"""The node-to-node message: encode, decode and what a bad payload gives (wsnode/nodemsg.py)."""

from __future__ import annotations

import json

import pytest

from wsnode import nodemsg
from wsnode.nodemsg import (
    Broadcast,
    Delivery,
    Disconnect,
    Evict,
    Heartbeat,
    NodeMessage,
    NodeMessageError,
    Push,
    Unread,
)

# The exact text each Python writer published before the codec existed (json.dumps with compact separators).
WIRE = [
    (Broadcast(push_id="p1", tail=',"module":"m"}'), '{"k":"all","p":"p1","t":",\\"module\\":\\"m\\"}"}'),
    (Heartbeat(token="0123abcd"), '{"k":"hb","o":"0123abcd"}'),
    (Disconnect(user="ava"), '{"k":"disconnect","u":"ava"}'),
    (Evict(user="ava", sessions=("s1", "s2")), '{"k":"evict","u":"ava","s":["s1","s2"]}'),
    (Evict(user="\u00e9", sessions=()), '{"k":"evict","u":"\\u00e9","s":[]}'),
    (Unread(user="ava", counts={"chat": 2}), '{"k":"unread","u":"ava","n":{"chat":2}}'),
    (Push(push_id="p2", tail="}", deliveries=(Delivery(user="ava", position=7, frame='{"id":"7"}', unread={}),
                                                Delivery(user="bea", position=0))),
     '{"k":"push","p":"p2","t":"}","d":[{"u":"ava","i":7,"f":"{\\"id\\":\\"7\\"}","n":{}},{"u":"bea","i":0}]}'),
]


@pytest.mark.parametrize(("message", "text"), WIRE)
def test_encode_writes_the_bytes_of_before_and_decode_reads_them_back(message: NodeMessage, text: str) -> None:
    assert nodemsg.encode(message) == text
    assert nodemsg.decode(text) == message
    assert nodemsg.decode(text.encode()) == message


# What the Lua scripts publish (cjson: keys in any order, `/` escaped, whole numbers as integers or floats).
LUA_TEXT = [
    ('{"d":[{"n":{"chat":1},"f":"{\\/}","i":17,"u":"ava"}],"t":"x","p":"p3","k":"push"}',
     Push(push_id="p3", tail="x", deliveries=(Delivery(user="ava", position=17, frame="{/}", unread={"chat": 1}),))),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"ava","i":1e+15}]}',
     Push(push_id="p", tail="t", deliveries=(Delivery(user="ava", position=10**15),))),
    ('{"n":{},"u":"ava","k":"unread"}', Unread(user="ava", counts={})),
    ('{"k":"unread","u":"ava","n":{"a":3.0}}', Unread(user="ava", counts={"a": 3})),
    # A later version may add keys: this one ignores them.
    ('{"k":"disconnect","u":"ava","x":1}', Disconnect(user="ava")),
]


@pytest.mark.parametrize(("text", "message"), LUA_TEXT)
def test_decode_reads_what_cjson_writes(text: str, message: NodeMessage) -> None:
    assert nodemsg.decode(text) == message


BAD = [
    (b"\xff", "not JSON"),
    ("{", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('["k","push"]', "not a JSON object but list"),
    ("null", "not a JSON object but null"),
    ('{"p":"x"}', "'k' must be a string, not null"),
    ('{"k":1}', "'k' must be a string, not int"),
    ('{"k":"reboot"}', "unknown kind 'reboot'"),
    ('{"k":"' + "z" * 1000 + '"}', "unknown kind '" + "z" * 40 + "'"),
    ('{"k":"all","p":"x"}', "all: 't' must be a string, not null"),
    ('{"k":"all","p":1,"t":"x"}', "all: 'p' must be a string, not int"),
    ('{"k":"hb"}', "hb: 'o' must be a string, not null"),
    ('{"k":"disconnect","u":null}', "disconnect: 'u' must be a string, not null"),
    ('{"k":"evict","u":"a","s":"s1"}', "evict: 's' must be a list of strings"),
    ('{"k":"evict","u":"a","s":[1]}', "evict: 's' must be a list of strings"),
    ('{"k":"unread","u":"a","n":[]}', "unread: 'n' must be an object, not list"),
    ('{"k":"unread","u":"a","n":{"m":"2"}}', "unread: 'n'['m'] must be an integer, not str"),
    ('{"k":"unread","u":"a","n":{"m":true}}', "unread: 'n'['m'] must be an integer, not bool"),
    ('{"k":"unread","u":"a","n":{"m":1.5}}', "unread: 'n'['m'] must be an integer, not float"),
    ('{"k":"push","p":"p","t":"t"}', "push: 'd' must be a list, not null"),
    ('{"k":"push","p":"p","t":"t","d":{}}', "push: 'd' must be a list, not dict"),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"a","i":1},3]}', "push: d[1] must be an object, not int"),
    ('{"k":"push","p":"p","t":"t","d":[{"i":1}]}', "push: d[0]: 'u' must be a string, not null"),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"a"}]}', "push: d[0]: 'i' must be an integer, not null"),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"a","i":"1"}]}', "push: d[0]: 'i' must be an integer, not str"),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"a","i":NaN}]}', "push: d[0]: 'i' must be an integer, not float"),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"a","i":1,"f":{}}]}', "push: d[0]: 'f' must be a string, not dict"),
    ('{"k":"push","p":"p","t":"t","d":[{"u":"a","i":1,"n":[]}]}', "push: d[0]: 'n' must be an object, not list"),
]


@pytest.mark.parametrize(("data", "reason"), BAD)
def test_decode_refuses_what_is_not_a_node_message_and_says_why(data: str | bytes, reason: str) -> None:
    with pytest.raises(NodeMessageError) as caught:
        nodemsg.decode(data)
    assert caught.value.reason == reason


def test_every_kind_has_its_fields_and_every_field_is_one_letter() -> None:
    # The table in FIELDS is what the Lua agreement test (test_lua.py) holds the scripts to: it must match encode.
    samples = {message.__class__: message for message, _ in WIRE}
    for message in samples.values():
        obj = json.loads(nodemsg.encode(message))
        assert tuple(obj) == nodemsg.FIELDS[obj[nodemsg.KIND]]
    assert len(samples) == len(nodemsg.FIELDS)
    assert all(len(key) == 1 for keys in nodemsg.FIELDS.values() for key in keys)
    assert set(nodemsg.DELIVERY_OPTIONAL) < set(nodemsg.DELIVERY_FIELDS)
