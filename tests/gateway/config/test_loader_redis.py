"""routes.yaml's `wsgate.redis` section: where RequestRateLimiter keeps its buckets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.config.model import ServerSettings
from gateway.errors import ConfigError


def settings(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ServerSettings:
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, env=env or {}).server


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("routes: []\n", {}, (None, None)),
        ("wsgate:\n  redis: {url: 'redis://h:1/2', prefix: 'gw:'}\n", {}, ("redis://h:1/2", "gw:")),
        ("wsgate:\n  redis: {prefix: ''}\n", {}, (None, "")),  # explicit: no prefix, whatever the env says
        ("wsgate:\n  redis:\n    url: ${REDIS_URL:redis://d:6379/0}\n", {}, ("redis://d:6379/0", None)),
        ("wsgate:\n  redis:\n    url: ${REDIS_URL}\n", {"REDIS_URL": "rediss://e:6380/0"}, ("rediss://e:6380/0", None)),
    ],
)
def test_loader_redis_section_sets_url_and_prefix(tmp_path: Path, text: str, env: dict[str, str],
                                                  expected: tuple[str | None, str | None]) -> None:
    server = settings(tmp_path, text, env)
    assert (server.redis_url, server.redis_prefix) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wsgate:\n  redis: {host: x}\n", "host"),
        ("wsgate:\n  redis: {url: 'http://x:1'}\n", "redis://"),
        ("wsgate:\n  redis: redis://x\n", "wsgate.redis"),
    ],
)
def test_loader_redis_section_refuses_bad_values(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings(tmp_path, text)
    assert ":2" in str(caught.value) or ":1" in str(caught.value)
