"""The `wsgate:` settings table: it reads every key, gives ServerSettings its defaults, and docs/gateway.md lists it."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from gateway.config import environment
from gateway.config.loader import load_config_text
from gateway.config.model import ServerSettings
from gateway.config.settings_table import SETTINGS, markdown, setting
from gateway.errors import ConfigError
from scripts.settings_docs import with_table

DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway.md"

# One value per key and what it fills; a row added to the table without a line here fails
# test_every_key_has_a_reading_case.
READS: list[tuple[str, str, str, object]] = [
    ("workers", "3", "workers", 3),
    ("head-timeout", "2s", "head_timeout_s", 2.0),
    ("max-head-bytes", "0x100", "max_head_bytes", 256),
    ("max-connections", "5", "max_connections", 5),
    ("defer-accept", "2500ms", "defer_accept_s", 2.5),
    ("connect-timeout", "-1", "connect_timeout_s", math.inf),
    ("response-timeout", "500ms", "response_timeout_s", 0.5),
    ("idle-timeout", "10m", "idle_timeout_s", 600.0),
    ("drain-timeout", "0", "drain_timeout_s", 0.0),
    ("admin-token", "''", "admin_token", None),
    ("tls.cert", "c.pem", "tls_cert_path", "c.pem"),
    ("tls.key", "k.pem", "tls_key_path", "k.pem"),
    ("upstream-tls-verify", "no", "upstream_tls_verify", False),
    ("upstream-ca", "ca.pem", "upstream_ca_path", "ca.pem"),
    ("access-log", "off", "access_log", False),
    ("redis.url", "redis://h:1/0", "redis_url", "redis://h:1/0"),
    ("redis.prefix", "''", "redis_prefix", ""),
    ("native-relay", "false", "native_relay", False),
    ("sockmap-relay", "false", "sockmap_relay", False),
    ("sockmap-after-reads", "0", "sockmap_after_reads", 0),
    ("native-http", "true", "native_http", True),
    ("node-management-key", "m1", "node_management_key", "m1"),
]


def _yaml(key: str, value: str) -> str:
    if key.startswith("tls."):  # TLS needs both files
        return "wsgate:\n  tls: {cert: c.pem, key: k.pem}\n"
    section, _, inner = key.partition(".")
    return f"wsgate:\n  {section}: {{{inner}: {value}}}\n" if inner else f"wsgate:\n  {key}: {value}\n"


@pytest.mark.parametrize(("key", "value", "field_name", "expected"), READS)
def test_each_key_fills_its_field(key: str, value: str, field_name: str, expected: object) -> None:
    assert setting(key).field == field_name
    assert getattr(load_config_text(_yaml(key, value)).server, field_name) == expected


def test_every_key_has_a_reading_case() -> None:
    read = {key for key, *_ in READS}
    assert {row.key for row in SETTINGS if row.field is not None} == read


def test_server_settings_defaults_are_the_tables() -> None:
    defaults = {f.name: f.default for f in fields(ServerSettings)}
    for row in SETTINGS:
        if row.field is not None:
            assert defaults[row.field] == row.default, row.key
    assert ServerSettings().head_timeout_s == 10.0 and ServerSettings().response_timeout_s == 30.0


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("wsgate:\n  workers: 0\n", "wsgate.workers", "must be >= 1"),
    ("wsgate:\n  head-timeout: 0\n", "wsgate.head-timeout", "must be > 0"),
    ("wsgate:\n  idle-timeout: -1\n", "wsgate.idle-timeout", "must be > 0"),
    ("wsgate:\n  drain-timeout: -1\n", "wsgate.drain-timeout", "must be >= 0"),
    ("wsgate:\n  defer-accept: -1\n", "wsgate.defer-accept", "must be >= 0"),
    ("wsgate:\n  sockmap-after-reads: -1\n", "wsgate.sockmap-after-reads", "must be >= 0"),
    ("wsgate:\n  access-log: maybe\n", "wsgate.access-log", "expected true or false"),
    ("wsgate:\n  redis: {url: }\n", "wsgate.redis.url", "missing value"),
    ("wsgate:\n  redis: {pfx: a}\n", "wsgate.redis.pfx", "unknown key (known: url, prefix)"),
    ("wsgate:\n  tls: {crt: x}\n", "wsgate.tls.crt", "unknown key (known: cert, key)"),
    ("wsgate:\n  unknown-filters: maybe\n", "wsgate.unknown-filters", "must be fail or warn"),
    ("wsgate:\n  bogus: 1\n", "wsgate.bogus", "unknown key (known: workers, head-timeout, max-head-bytes,"),
])
def test_bad_values_name_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, file="r.yaml")
    assert info.value.key == key and reason in str(info.value) and info.value.line == 2


def test_a_tls_section_sets_both_files_even_when_it_leaves_one_out() -> None:
    # wsgate.tls wins over server.ssl as a whole, so `tls: {}` drops the server.ssl files (and both go together).
    text = "server:\n  ssl: {certificate: a, certificate-private-key: b}\nwsgate:\n  tls: {}\n"
    server = load_config_text(text).server
    assert (server.tls_cert_path, server.tls_key_path) == (None, None)


@pytest.mark.parametrize(("key", "file_value", "env", "expected"), [
    ("redis.url", None, {}, "redis://127.0.0.1:6379/0"),
    ("redis.url", None, {"REDIS_URL": ""}, "redis://127.0.0.1:6379/0"),
    ("redis.url", None, {"REDIS_URL": "redis://e:1/0"}, "redis://e:1/0"),
    ("redis.url", "redis://f:1/0", {"REDIS_URL": "redis://e:1/0"}, "redis://f:1/0"),
    ("redis.prefix", None, {}, ""),
    ("redis.prefix", None, {"WSGATE_REDIS_PREFIX": "e:"}, "e:"),
    ("redis.prefix", "", {"WSGATE_REDIS_PREFIX": "e:"}, ""),
])
def test_environment_fallbacks_follow_the_table(key: str, file_value: str | None, env: dict[str, str],
                                                expected: str) -> None:
    assert environment.wsgate_fallback(key, file_value, env) == expected


def test_docs_list_every_key_and_are_current() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert with_table(doc, "wsgate settings", markdown()) == doc, "stale: python -m scripts.settings_docs"
    assert all(f"`wsgate.{row.key}`" in doc for row in SETTINGS)


def test_the_command_prints_the_table() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.config.settings_table", "--markdown"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0 and done.stdout == markdown() + "\n"
