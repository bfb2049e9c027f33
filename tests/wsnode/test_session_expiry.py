"""Token expiry under the node's one expiry timer: each session is closed 1008 at its own token's expiry."""

from __future__ import annotations

import aiohttp

from tests.wsnode.conftest import StartNode, make_token


async def test_session_expiry_closes_each_session_at_its_own_token_expiry(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--jwt-allow-no-exp")  # for the token without exp ("forever")
    # The later expiry is registered first: the earlier one that follows must re-arm the node's timer.
    late = await http.ws_connect(a.ws_url, params={"token": make_token("late", exp_in_s=4)})
    early = await http.ws_connect(a.ws_url, params={"token": make_token("early", exp_in_s=1)})
    forever = await http.ws_connect(a.ws_url, params={"token": make_token("forever", exp_in_s=None)})
    try:
        for ws in (late, early, forever):
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        msg = await early.receive(timeout=2.5)  # well before the later expiry (3-4 s from now)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
        assert not late.closed  # its token is still valid for at least another second
        msg = await late.receive(timeout=6)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
        await forever.send_json({"type": "ping"})
        assert (await forever.receive_json(timeout=5))["type"] == "pong"
    finally:
        for ws in (late, early, forever):
            await ws.close()
