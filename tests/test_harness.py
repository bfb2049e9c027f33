"""The harness itself: ports, Redis, process start/stop and readiness."""

from __future__ import annotations

import socket
import sys

import pytest

from harness import ProcessFailed, ProcessGroup, RedisInfo, free_port, http_status, redis_answers


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_server_answers_ping(redis_server: RedisInfo) -> None:
    assert redis_answers(redis_server.host, redis_server.port)


def test_redis_prefix_is_cleaned(redis_server: RedisInfo, redis_prefix: str) -> None:
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.set(f"{redis_prefix}k", "v")
    assert client.get(f"{redis_prefix}k") == b"v"
    client.close()


def test_process_ready_when_health_answers(procs: ProcessGroup) -> None:
    port = free_port()
    proc = procs.start("http", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    proc.wait_http_ready(f"http://127.0.0.1:{port}/")
    assert http_status(f"http://127.0.0.1:{port}/") == 200
    proc.stop()
    assert not proc.alive()


def test_process_that_exits_fails_readiness_with_its_log(procs: ProcessGroup) -> None:
    proc = procs.start("dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    with pytest.raises(ProcessFailed, match="boom"):
        proc.wait_http_ready(f"http://127.0.0.1:{free_port()}/", timeout_s=5)


def test_scratch_group_stops_cleans_up_and_prints_logs_on_failure(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from harness import POLL_INTERVAL_S, scratch_group

    with pytest.raises(RuntimeError), scratch_group("wsgate-test-scratch-") as (workdir, group):
        proc = group.start("talker", [sys.executable, "-c", "print('said before failing', flush=True); "
                                      "import time; time.sleep(60)"])
        deadline = time.monotonic() + 10
        while "said before failing" not in proc.log():  # polled with a deadline, as the harness polls readiness
            assert proc.alive() and time.monotonic() < deadline, proc.log()
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError("the run failed")
    assert not proc.alive()
    assert not workdir.exists()
    assert "said before failing" in capsys.readouterr().err
