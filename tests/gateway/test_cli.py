"""The command line: argument handling and refusing bad files with exit status 2 (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.__main__ import main, parse_args


def test_cli_parses_overrides() -> None:
    args = parse_args(["--config", "r.yaml", "--host", "::1", "--port", "9000", "--workers", "2"])
    assert (args.config, args.host, args.port, args.workers, args.worker) == ("r.yaml", "::1", 9000, 2, False)


def test_cli_requires_config() -> None:
    with pytest.raises(SystemExit):
        parse_args([])


@pytest.mark.parametrize(("text", "where"), [
    ("routes:\n  - id: a\n    uri: lb://ok\n    predicates:\n      - Nope=1\n", ":5"),
    ("routes: [\n", ""),
    ("routes:\n  - id: a\n    uri: ${missing.key}\n", ":3"),
])
def test_cli_bad_file_exits_2_with_location(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                            where: str) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(text)
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}{where}" in err


def test_cli_refuses_zero_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text("routes: []\n")
    assert main(["--config", str(config), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize(("file_url", "env_url", "named"), [
    (None, "foo://bar", "REDIS_URL: "),
    (None, "redis://127.0.0.1:6379,http://x:1", "REDIS_URL: "),
    ("redis://127.0.0.1:6379,tcp://x:1", None, "wsgate.redis.url: "),
])
def test_cli_refuses_an_unusable_limiter_redis_url_before_any_worker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, file_url: str | None,
        env_url: str | None, named: str) -> None:
    config = tmp_path / "routes.yaml"
    redis_key = f"wsgate:\n  redis:\n    url: '{file_url}'\n" if file_url else ""
    config.write_text(f"{redis_key}routes: []\n")
    if env_url is None:
        monkeypatch.delenv("REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("REDIS_URL", env_url)
    assert main(["--config", str(config), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert named in err and "must start with" in err and "Traceback" not in err


def test_cli_single_worker_refuses_a_port_already_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    # A listener that set SO_REUSEPORT itself, as another gateway worker would: a lone gateway must not share it.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "routes.yaml"
        config.write_text(f"server: {{host: 127.0.0.1, port: {port}}}\nroutes: []\n")
        assert main(["--config", str(config), "--workers", "1"]) == 1
    assert "cannot listen" in capsys.readouterr().err
