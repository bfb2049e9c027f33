"""The client's gap rule (wsnode.resume, docs/protocol.md) as a table, and wsnode.client.Receiver resuming at a gap
against a protocol server driven by the test (and the same rule in wsgate.js, run by node when it is installed)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from wsnode.client import Receiver
from wsnode.resume import ResumeTracker, Verdict

D, DUP, GAP = Verdict.DELIVER, Verdict.DUPLICATE, Verdict.GAP
WSGATE_JS = Path(__file__).resolve().parents[2] / "wsnode" / "static" / "wsgate.js"

# (since given to the client, welcome's last, ids in arrival order, expected verdicts, `since` to resume from)
CASES: list[tuple[str | None, str | None, list[str], list[Verdict], str | None]] = [
    (None, "10", ["11", "12", "13"], [D, D, D], "13"),  # live ids follow `last`
    (None, "10", ["11", "13"], [D, GAP], "11"),  # 12 skipped: resume after 11, 13 not shown
    (None, "10", ["4", "7", "11"], [D, D, D], "11"),  # unacked replay below `last` is no gap
    ("5", "8", ["6", "7", "8", "9"], [D, D, D, D], "9"),  # resume with since: replay then live
    (None, "10", ["11", "11"], [D, DUP], "11"),  # at least once: the second copy is dropped
    (None, "0", ["1795700000000", "1795700000001"], [D, D], "1795700000001"),  # first ids come from the clock
    (None, None, ["40", "42"], [D, GAP], "40"),  # an older node without `last`: the first id sets the point
    (None, "10", ["10-abc", "11", "11-def", "12"], [D, D, D, D], "12"),  # ephemeral ids are not counted
    (None, "10", ["12"], [GAP], "10"),  # the first live id already skips one
]


@pytest.mark.parametrize(("since", "last", "ids", "verdicts", "resume"), CASES)
def test_resume_tracker(since: str | None, last: str | None, ids: list[str], verdicts: list[Verdict],
                        resume: str | None) -> None:
    tracker = ResumeTracker(since=since)
    tracker.welcome(last)
    assert [tracker.message(i) for i in ids] == verdicts
    assert tracker.resume_from == resume


def test_allow_gap_delivers_across_and_says_so() -> None:
    tracker = ResumeTracker()
    tracker.welcome("10")
    assert tracker.message("12", allow_gap=True) is Verdict.DELIVER_AFTER_GAP
    assert tracker.resume_from == "12"


def test_wsgate_js_gap_tracker_follows_the_same_table() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser tests run wsgate.js too)")
    table = [{"since": c[0], "last": c[1], "ids": c[2]} for c in CASES]
    script = f"""
const W = require({json.dumps(str(WSGATE_JS))});
const out = [];
for (const c of {json.dumps(table)}) {{
  const seen = new Set(); const g = new W.GapTracker(c.since); g.welcome(c.last);
  out.push(c.ids.map((id) => {{
    if (seen.has(id)) return "duplicate";
    const v = g.check(id); if (v === "deliver") seen.add(id); return v;
  }}));
}}
console.log(JSON.stringify(out));
"""
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout) == [[v.value for v in c[3]] for c in CASES]


class ProtocolServer:
    """Speaks the node's wire format; each connection sends the next script of frames."""

    def __init__(self, scripts: list[list[dict[str, Any]]]) -> None:
        self.scripts = scripts
        self.queries: list[dict[str, str]] = []

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.queries.append(dict(request.query))
        for frame in self.scripts[min(len(self.queries), len(self.scripts)) - 1]:
            await ws.send_str(json.dumps(frame))
        async for _ in ws:  # until the client closes
            pass
        return ws


def _msg(ident: str) -> dict[str, Any]:
    return {"type": "message", "id": ident, "module": "m", "event": "e", "data": ident, "ts": 1}


@pytest.fixture
async def gap_server() -> AsyncIterator[tuple[ProtocolServer, str]]:
    """First connection: welcome last=10, then 11 and 13 (12 missed); second: the replay of 12 and 13, then 14."""
    server = ProtocolServer([
        [{"type": "welcome", "session": "s1", "user": "u", "node": "n", "unread": {}, "last": "10"},
         _msg("11"), _msg("13")],
        [{"type": "welcome", "session": "s2", "user": "u", "node": "n", "unread": {}, "last": "13",
          "recovered": True}, _msg("12"), _msg("13"), _msg("14")],
    ])
    app = web.Application()
    app.router.add_get("/websocket", server.websocket)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield server, f"ws://127.0.0.1:{test_server.port}/websocket"
    await test_server.close()


async def test_receiver_resumes_from_the_last_id_before_a_gap(gap_server: tuple[ProtocolServer, str]) -> None:
    server, url = gap_server
    got: list[str] = []
    done = asyncio.Event()

    def on_message(frame: dict[str, Any]) -> None:
        got.append(frame["id"])
        if frame["id"] == "14":
            done.set()

    receiver = Receiver(url, token="t", on_message=on_message, backoff_base_s=0.01)
    task = asyncio.create_task(receiver.run())
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await receiver.stop()
        await asyncio.wait_for(task, 10)
    assert got == ["11", "12", "13", "14"]
    assert server.queries[1] == {"token": "t", "since": "11"}
    assert receiver.stats["gaps"] == 1
