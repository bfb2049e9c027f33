"""The Lua scripts (wsnode/lua/*.lua): loaded as package data, and in step with the node message of wsnode/nodemsg.py.

Two scripts publish node messages (push.lua, ack.lua); Python cannot share its constants with them, so this test
reads their `cjson.encode({...})` table constructors, and the fields given to the table marked
`-- nodemsg: delivery`, and compares the keys with `nodemsg.FIELDS` and `nodemsg.DELIVERY_FIELDS`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsnode import lua, nodemsg

LUA_DIR = Path(lua.__file__).parent
SCRIPTS = {path.stem: path.read_text() for path in sorted(LUA_DIR.glob("*.lua"))}
# Which kinds Lua writes; every other kind is written by Python through nodemsg.encode.
LUA_KINDS = {nodemsg.PUSH, nodemsg.UNREAD}
DELIVERY_MARK = "-- nodemsg: delivery"
_OPEN, _CLOSE = "({[", ")}]"


def _unquoted(text: str) -> Iterator[tuple[int, str, int]]:
    """Each character outside string literals, with its index and the bracket depth once it is read."""
    depth, quote = 0, ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[index - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        else:
            depth += (char in _OPEN) - (char in _CLOSE)
            yield index, char, depth


def _constructor(text: str, start: int) -> str:
    """The table constructor opening at text[start] ('{'), braces inside strings ignored."""
    for index, _char, depth in _unquoted(text[start:]):
        if depth == 0:
            return text[start:start + index + 1]
    raise AssertionError(f"unbalanced table constructor at {start}")


def _fields(constructor: str) -> dict[str, str]:
    """Named fields (`name = value`) of a table constructor; positional items are left out."""
    inner = constructor[1:-1]
    cuts = [index for index, char, depth in _unquoted(inner) if char == "," and depth == 0]
    items = [inner[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(inner)], strict=True)]
    named = (re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=(?!=)\s*(.*?)\s*", item, re.DOTALL) for item in items)
    return {m.group(1): m.group(2) for m in named if m}


def _assigned(text: str, var: str) -> set[str]:
    """Fields assigned as `var.name = ...` (also `var.a, var.b = ...`) anywhere in `text`."""
    found: set[str] = set()
    for line in text.splitlines():
        target = re.split(r"(?<![=~<>])=(?!=)", line.split("--")[0], maxsplit=1)
        if len(target) == 2:
            found.update(re.findall(rf"\b{re.escape(var)}\.([A-Za-z_]\w*)", target[0]))
    return found


def disagreements(scripts: dict[str, str]) -> list[str]:
    """Where the scripts' node messages differ from wsnode/nodemsg.py (empty when they agree)."""
    problems: list[str] = []
    kinds: set[str] = set()
    for name, text in scripts.items():
        for match in re.finditer(r"cjson\.encode\(\s*\{", text):
            fields = _fields(_constructor(text, match.end() - 1))
            if not fields:
                continue  # a positional table (a script's own reply), not a message
            raw_kind = fields.get(nodemsg.KIND, "")
            if not re.fullmatch(r"'\w+'", raw_kind):
                problems.append(f"{name}.lua: a message without {nodemsg.KIND} = '<kind>': {sorted(fields)}")
                continue
            kind = ast.literal_eval(raw_kind)
            kinds.add(kind)
            expected = set(nodemsg.FIELDS.get(kind, ()))
            if set(fields) != expected:
                problems.append(f"{name}.lua: {kind} has {sorted(fields)}, nodemsg.py {sorted(expected)}")
        for line in text.splitlines():
            if DELIVERY_MARK in line:
                declared = re.match(r"\s*local\s+(\w+)\s*=\s*\{", line)
                assert declared, f"{name}.lua: the delivery mark is not on a `local x = {{...}}` line"
                table = _constructor(line, declared.end() - 1)
                got = set(_fields(table)) | _assigned(text, declared.group(1))
                if got != set(nodemsg.DELIVERY_FIELDS):
                    problems.append(f"{name}.lua: a delivery has {sorted(got)}, "
                                    f"nodemsg.py {sorted(nodemsg.DELIVERY_FIELDS)}")
    if kinds != LUA_KINDS:
        problems.append(f"the scripts write kinds {sorted(kinds)}, expected {sorted(LUA_KINDS)}")
    if nodemsg.PUSH in kinds and not any(DELIVERY_MARK in text for text in scripts.values()):
        problems.append(f"no table marked {DELIVERY_MARK!r}")
    return problems


def test_every_script_is_read_through_the_package() -> None:
    assert set(SCRIPTS) == {"push", "ack", "heartbeat", "budget", "append", "reshard_stage", "reshard_merge", "connect"}
    for name, text in SCRIPTS.items():
        assert lua.source(name) == text


def test_the_lua_scripts_write_the_node_message_nodemsg_defines() -> None:
    assert disagreements(SCRIPTS) == []


# Each edit breaks the agreement in one way; the check must say so (it is not a test that cannot fail).
MISMATCHES = [
    ("push", "p = push_id, t = tail,", "p = push_id, x = tail,", "push has ['d', 'k', 'p', 'x']"),
    ("push", "p = push_id, t = tail,", "p = push_id, t = tail, z = 1,", "push has ['d', 'k', 'p', 't', 'z']"),
    ("push", "d.i, d.f, d.n = seq", "d.i, d.frame, d.n = seq", "a delivery has ['frame', 'i', 'n', 'u']"),
    ("push", "{u = user}", "{user = user}", "a delivery has ['f', 'i', 'n', 'user']"),
    ("ack", "{k = 'unread', u = user, n = out}", "{k = 'unread', u = user, c = out}", "unread has ['c', 'k', 'u']"),
    ("ack", "{k = 'unread',", "{kind = 'unread',", "a message without k = '<kind>'"),
    ("ack", "{k = 'unread',", "{k = 'counts',", "the scripts write kinds ['counts', 'push']"),
    ("push", DELIVERY_MARK, "--", "no table marked"),
]


@pytest.mark.parametrize(("script", "old", "new", "said"), MISMATCHES)
def test_the_agreement_check_fails_on_a_mismatched_key(script: str, old: str, new: str, said: str) -> None:
    assert old in SCRIPTS[script]
    edited = {**SCRIPTS, script: SCRIPTS[script].replace(old, new)}
    problems = disagreements(edited)
    assert any(said in problem for problem in problems), problems


def test_python_writes_node_messages_only_through_the_codec() -> None:
    # A dict literal keyed by the kind key outside nodemsg.py would be a second definition of the message.
    root = LUA_DIR.parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "nodemsg.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == nodemsg.KIND
                                                  for k in node.keys):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
