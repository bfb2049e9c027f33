"""The `wsgate:` section of routes.yaml as one table (pure): each row is a key, how it is read and checked, its
default, the ServerSettings field it fills, its environment fallback and its help.

Reading (`read_wsgate`), the defaults of ServerSettings (`default`), `--unknown-filters`'s choices and the key list
in docs/gateway.md all come from `SETTINGS`. `python -m gateway.config.settings_table --markdown` prints that list;
`python -m scripts.settings_docs` puts it between the markers of docs/gateway.md, and
tests/gateway/config/test_settings_table.py fails when the file is stale.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from gateway.config.nodes import Reader, YMap, YNode

DURATION, INTEGER, BOOLEAN, TEXT, OPTIONAL_TEXT, NON_EMPTY, CHOICE = (
    "duration", "integer", "boolean", "text", "text (null: unset)", "text (empty: unset)", "choice",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Setting:
    """One key under `wsgate:` (dotted when it sits in a sub-section such as `tls.cert`)."""

    key: str
    kind: str  # DURATION, INTEGER, BOOLEAN, TEXT, OPTIONAL_TEXT (null: None), NON_EMPTY (empty: None), CHOICE
    field: str | None  # the ServerSettings field it fills; None: read by the loader itself
    default: Any
    help: str
    env: str | None = None  # the environment variable used when the file leaves the key out
    env_default: str | None = None  # ... and the value when that variable is unset too
    default_text: str | None = None  # the default as the docs say it, when the value alone would mislead
    positive: bool = True  # durations: 0 refused
    off: bool = False  # durations: SCG's -1 is math.inf (no bound)
    minimum: int | None = None  # integers
    choices: tuple[str, ...] = ()  # CHOICE
    with_section: bool = False  # filled (None when absent) whenever its sub-section is given

    @property
    def section(self) -> str:
        """The top-level key under `wsgate:` this setting lives in (itself when not nested)."""
        return self.key.split(".", 1)[0]


SETTINGS: tuple[Setting, ...] = (
    Setting("workers", INTEGER, "workers", None, "worker processes sharing the port (`--workers` wins)",
            minimum=1, default_text="the CPU count"),
    Setting("head-timeout", DURATION, "head_timeout_s", 10.0, "time a client has to send the request head (408)"),
    Setting("max-head-bytes", INTEGER, "max_head_bytes", 16384, "largest request head (431)", minimum=1),
    Setting("max-connections", INTEGER, "max_connections", 10000,
            "open client connections per worker; more are answered 503", minimum=1),
    Setting("defer-accept", DURATION, "defer_accept_s", 1.0,
            "the kernel hands a new connection over once its first bytes came, or after this long (whole seconds, "
            "rounded up; Linux's TCP_DEFER_ACCEPT, HAProxy's tcp-smart-accept, nginx's `listen ... deferred`): a "
            "worker then wakes once per connection, not once for it and again for its head; `head-timeout` counts "
            "from then (0: off, every connection at once)", positive=False),
    Setting("connect-timeout", DURATION, "connect_timeout_s", 5.0,
            "connect to an instance; `-1`: no bound (route metadata overrides it)", off=True),
    Setting("response-timeout", DURATION, "response_timeout_s", 30.0,
            "wait for an instance's response head, or a pause within its body (504); `-1`: no bound", off=True),
    Setting("idle-timeout", DURATION, "idle_timeout_s", None, "a tunnel with no bytes either way for this long is "
            "closed (route metadata overrides it)", default_text="none (no bound)"),
    Setting("drain-timeout", DURATION, "drain_timeout_s", 30.0,
            "on SIGTERM, time tunnels get to finish before they are closed", positive=False),
    Setting("admin-token", NON_EMPTY, "admin_token", None,
            "bearer token of `/actuator/*` and the admin page's data (unset: loopback listeners only)"),
    Setting("tls.cert", OPTIONAL_TEXT, "tls_cert_path", None, "certificate (PEM) to serve TLS with; needs `tls.key`",
            with_section=True),
    Setting("tls.key", OPTIONAL_TEXT, "tls_key_path", None, "private key (PEM) of `tls.cert`", with_section=True),
    Setting("upstream-tls-verify", BOOLEAN, "upstream_tls_verify", True,
            "verify the certificates of https/wss instances"),
    Setting("upstream-ca", NON_EMPTY, "upstream_ca_path", None,
            "CA file (PEM) for instances' certificates (unset: the system's)"),
    Setting("access-log", BOOLEAN, "access_log", True, "log one line per request or tunnel"),
    Setting("redis.url", TEXT, "redis_url", None, "Redis of RequestRateLimiter's buckets", env="REDIS_URL",
            env_default="redis://127.0.0.1:6379/0"),  # Spring Data Redis's default, as SCG's rate limiter uses
    Setting("redis.prefix", OPTIONAL_TEXT, "redis_prefix", None, "prefix of RequestRateLimiter's Redis keys",
            env="WSGATE_REDIS_PREFIX", env_default=""),
    Setting("native-relay", BOOLEAN, "native_relay", True,
            "relay plain-TCP tunnels in gateway._relay's thread when it is built (false: in Python)"),
    Setting("sockmap-relay", BOOLEAN, "sockmap_relay", False,
            "opt in: let the kernel move plain-TCP tunnels' bytes (BPF sockmap) when it allows it, the native relay "
            "thread keeping the tunnel rules (false: the thread relays them; needs `native-relay`)"),
    Setting("sockmap-after-reads", INTEGER, "sockmap_after_reads", 4,
            "reads the relay thread relays of a tunnel before the sockmap takes it (0: at the 101): entering and "
            "leaving the sockmap costs more than a message relayed by the thread, so a tunnel that closes after a "
            "message or two stays on the thread", minimum=0),
    Setting("native-http", BOOLEAN, "native_http", True,
            "proxy plain HTTP requests and WebSocket upgrades that need no Python I/O (no plugin or policy; a rate "
            "limiter on a plain single Redis runs in C too) in gateway._http's lane, one Python call per request; "
            "a plain-TCP listener on an IP address only, else the Python path (false: always the Python path)"),
    Setting("unknown-filters", CHOICE, None, "fail", "what SCG features wsgate does not implement do: `fail` the "
            "file, or `warn` and leave them out (`--unknown-filters` wins)", choices=("fail", "warn")),
    Setting("node-management-key", NON_EMPTY, "node_management_key", None,
            "the nodes' `--management-key`: the admin page reads their `/health` and `/metrics` with it"),
)
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))


def setting(key: str) -> Setting:
    """The row of `key` (KeyError for one the table does not have)."""
    for row in SETTINGS:
        if row.key == key:
            return row
    raise KeyError(key)


def default(field_name: str) -> Any:
    """The default of a ServerSettings field that a `wsgate:` key fills: the table's, so it is said once."""
    for row in SETTINGS:
        if row.field == field_name:
            return row.default
    raise KeyError(field_name)


def read_value(reader: Reader, row: Setting, node: YNode | None) -> object:
    """The value of one key as its row reads and checks it; ConfigError (file, line, key) when unusable."""
    key = f"wsgate.{row.key}"
    if row.kind == DURATION:
        return reader.duration_s(node, key, default_unit="s", positive=row.positive, off=row.off)
    if row.kind == INTEGER:
        return reader.integer(node, key, minimum=row.minimum)
    if row.kind == BOOLEAN:
        return reader.boolean(node, key)
    if row.kind == TEXT:
        return reader.text(node, key)
    if row.kind == OPTIONAL_TEXT:
        return reader.optional_text(node, key)
    if row.kind == NON_EMPTY:
        return reader.optional_text(node, key) or None
    if row.kind == CHOICE:
        text = reader.text(node, key).strip()
        if text not in row.choices:
            raise reader.error(f"must be {' or '.join(row.choices)}, not {text!r}", node, key)
        return text
    raise AssertionError(f"unknown kind {row.kind!r} of wsgate.{row.key}")


def read_wsgate(reader: Reader, section: YMap) -> dict[str, object]:
    """The ServerSettings fields the `wsgate:` section gives; unknown keys are refused (naming the known ones)."""
    reader.check_keys(section, "wsgate", SECTIONS)
    values: dict[str, object] = {}
    for name in SECTIONS:
        rows = [(row, row.field) for row in SETTINGS if row.section == name and row.field is not None]
        if not rows or (node := section.get(name)) is None:
            continue
        if rows[0][0].key == name:
            values[rows[0][1]] = read_value(reader, rows[0][0], node)
            continue
        inner = reader.mapping(node, f"wsgate.{name}")
        reader.check_keys(inner, f"wsgate.{name}", tuple(row.key.split(".", 1)[1] for row, _ in rows))
        for row, field_name in rows:
            child = inner.get(row.key.split(".", 1)[1])
            if child is not None or row.with_section:
                values[field_name] = read_value(reader, row, child)
    return values


def _default_text(row: Setting) -> str:
    if row.env is not None:
        return f"`${row.env}`, else " + (f"`{row.env_default}`" if row.env_default else "none")
    if row.default_text is not None:
        return row.default_text
    if row.default is None:
        return "unset"
    if row.kind == DURATION:
        return "no bound" if row.default == math.inf else f"`{row.default:g}s`"
    if isinstance(row.default, bool):
        return f"`{str(row.default).lower()}`"
    return f"`{row.default}`"


def _kind_text(row: Setting) -> str:
    if row.kind == DURATION:
        return "duration (bare number: seconds)" + (", `-1`: off" if row.off else "") + (
            "" if row.positive else ", 0 allowed")
    if row.kind == INTEGER and row.minimum is not None:
        return f"integer >= {row.minimum}"
    if row.kind == CHOICE:
        return " or ".join(f"`{c}`" for c in row.choices)
    return row.kind


def markdown() -> str:
    """The key list of docs/gateway.md, as a Markdown table."""
    lines = ["| key | value | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `wsgate.{row.key}` | {_kind_text(row)} | {_default_text(row)} | {row.help} |" for row in SETTINGS]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m gateway.config.settings_table --markdown")
    print(markdown())
