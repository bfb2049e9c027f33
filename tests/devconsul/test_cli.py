"""The `python -m devconsul` process: logs when listening and exits 0 on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from harness import ProcessGroup
from tests.conftest import start_devconsul


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_logs_listening_and_exits_cleanly_on_signal(procs: ProcessGroup, signum: int) -> None:
    proc = start_devconsul(procs)
    assert f"listening on http://{proc.extra['address']}" in proc.log()
    proc.signal(signum)
    assert proc.wait_exit(timeout_s=10) == 0


def test_cli_fails_with_status_1_when_port_is_taken(procs: ProcessGroup) -> None:
    first = start_devconsul(procs)
    port = str(first.extra["address"]).rpartition(":")[2]
    second = procs.python("devconsul-2", "devconsul", "--port", port)
    assert second.wait_exit(timeout_s=10) == 1
    assert "cannot listen" in second.log()


async def test_cli_stops_promptly_with_blocking_query_open(procs: ProcessGroup) -> None:
    proc = start_devconsul(procs)
    async with aiohttp.ClientSession() as session:
        index_url = f"http://{proc.extra['address']}/v1/catalog/services"
        async with session.get(index_url) as response:
            index = response.headers["X-Consul-Index"]
        query = asyncio.create_task(session.get(f"{index_url}?index={index}&wait=60s"))
        done, _ = await asyncio.wait({query}, timeout=0.3)
        assert not done
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait_exit, timeout_s=10) == 0
        assert time.monotonic() - started < 3.0
        response = await asyncio.wait_for(query, timeout=5)
        response.release()
