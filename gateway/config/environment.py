"""The process environment: the only gateway module that reads os.environ, and the one that writes it (for the
workers and reloads that read routes.yaml again). Every variable the gateway reads is named here; the fallbacks of
`wsgate:` keys (REDIS_URL, ...) are named by their row in gateway.config.settings_table.

Functions take the environment as a mapping, so tests pass their own; `current()` is the process's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gateway.config.settings_table import setting

PROFILES = "SPRING_PROFILES_ACTIVE"  # Spring's: the active profiles, comma-separated
CONSUL_ADDR = "CONSUL_HTTP_ADDR"  # Consul's own: the agent when the file names none
CONSUL_TOKEN = "CONSUL_HTTP_TOKEN"  # Consul's own: the ACL token when the file gives none
LOG_LEVEL = "WSGATE_LOG_LEVEL"
METRICS_DIR = "WSGATE_METRICS_DIR"  # set by the master for its workers
FAULT_FILE = "WSGATE_TEST_FAULT_FILE"  # tests only: gateway.ops.tasks injects faults named in it
UNKNOWN_FILTERS = "WSGATE_UNKNOWN_FILTERS"  # --unknown-filters, passed on to the workers (wins over the file)


def current() -> Mapping[str, str]:
    """The process's environment (live: a later `export` shows)."""
    return os.environ


def export(name: str, value: str) -> None:
    """Set `name` for this process and the processes it starts (workers, and reloads, read the file again)."""
    os.environ[name] = value


def for_child(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's plus `extra`."""
    return dict(os.environ, **extra)


def wsgate_fallback(key: str, value: str | None, env: Mapping[str, str]) -> str:
    """The value of `wsgate.<key>`: the file's when given, else its environment variable (when not empty), else the
    table's default for that case."""
    if value is not None:
        return value
    row = setting(key)
    assert row.env is not None and row.env_default is not None, f"wsgate.{key} has no environment fallback"
    return env.get(row.env) or row.env_default


def unknown_filters(env: Mapping[str, str]) -> str | None:
    """`--unknown-filters` as the master passed it on to its workers, if it did."""
    return env.get(UNKNOWN_FILTERS)


def log_level(env: Mapping[str, str]) -> str:
    """The logging level when `--log-level` is not given."""
    return env.get(LOG_LEVEL, "INFO")


def metrics_dir(env: Mapping[str, str]) -> str | None:
    """The workers' shared metrics directory, when a master started this worker."""
    return env.get(METRICS_DIR) or None


def fault_file(env: Mapping[str, str]) -> str | None:
    """The test fault-injection file, if any."""
    return env.get(FAULT_FILE) or None


def consul_address(env: Mapping[str, str]) -> str | None:
    """The Consul agent's address when the file names none."""
    return env.get(CONSUL_ADDR)


def consul_token(env: Mapping[str, str]) -> str | None:
    """The Consul ACL token when the file gives none."""
    return env.get(CONSUL_TOKEN) or None


def active_profiles(env: Mapping[str, str]) -> list[str]:
    """The Spring profiles the environment activates (empty when it names none)."""
    return [p.strip() for p in env.get(PROFILES, "").split(",") if p.strip()]
