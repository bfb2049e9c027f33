"""Table tests of the broker and outbox settings and of the pure parts of their modules (no server needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import ROOT
from wsnode.amqp_consumer import dedupe_key as amqp_key
from wsnode.amqp_consumer import queue_names
from wsnode.errors import SettingsError
from wsnode.ingest import REASON_MAX, reason_text
from wsnode.outbox.ddl import MYSQL, POSTGRES, dedupe_key, dialect_of, first_id
from wsnode.outbox.mysql import connect_args
from wsnode.settings import settings_from

BASE = ["--port", "8080", "--jwt-secret", "s", "--node-id", "n1"]


@pytest.mark.parametrize(("env", "field", "value"), [
    ({}, "amqp_url", None),
    ({}, "amqp_queue", "wsgate.push"),
    ({}, "outbox_dsn", None),
    ({"WSNODE_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/"}, "amqp_url", "amqp://guest:guest@127.0.0.1:5672/"),
    ({"WSNODE_AMQP_URL": ""}, "amqp_url", None),
    ({"WSNODE_AMQP_QUEUE": "pushes"}, "amqp_queue", "pushes"),
    ({"WSNODE_AMQP_PREFETCH": "8"}, "amqp_prefetch", 8),
    ({"WSNODE_OUTBOX_DSN": "postgresql://db/app"}, "outbox_dsn", "postgresql://db/app"),
    ({"WSNODE_OUTBOX_DSN": "mysql://root@db/app"}, "outbox_dsn", "mysql://root@db/app"),
    ({"WSNODE_OUTBOX_DSN": ""}, "outbox_dsn", None),
    ({"WSNODE_OUTBOX_BATCH": "10"}, "outbox_batch", 10),
    ({"WSNODE_OUTBOX_POLL_S": "0.5"}, "outbox_poll_s", 0.5),
])
def test_broker_settings_read_their_environment_variables(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(settings_from(BASE, env), field) == value


@pytest.mark.parametrize(("argv", "message"), [
    (["--amqp-url", "http://rabbit:15672/"], "--amqp-url"),
    (["--amqp-queue", ""], "--amqp-queue"),
    (["--amqp-prefetch", "0"], "--amqp-prefetch"),
    (["--amqp-prefetch", "many"], "--amqp-prefetch"),
    (["--outbox-dsn", "sqlite:///x.db"], "--outbox-dsn"),
    (["--outbox-batch", "0"], "--outbox-batch"),
    (["--outbox-poll", "0"], "outbox_poll_s"),
])
def test_bad_broker_settings_are_refused_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from([*BASE, *argv], {})


@pytest.mark.parametrize(("dsn", "dialect"), [
    ("postgresql://u@h/db", POSTGRES), ("postgres://h/db", POSTGRES), ("POSTGRESQL://h/db", POSTGRES),
    ("mysql://root@h:3306/db", MYSQL), ("mariadb://h/db", MYSQL),
])
def test_the_outbox_dialect_comes_from_the_dsn_scheme(dsn: str, dialect: str) -> None:
    assert dialect_of(dsn) == dialect


@pytest.mark.parametrize("dsn", ["sqlite:///x", "h:5432/db", ""])
def test_other_outbox_dsns_are_refused(dsn: str) -> None:
    with pytest.raises(ValueError, match="outbox DSN"):
        dialect_of(dsn)


def test_mysql_dsn_becomes_connect_arguments_and_needs_a_database() -> None:
    args = connect_args("mysql://app:p%40ss@db.local:3307/shop")
    assert (args["host"], args["port"], args["user"], args["password"], args["db"]) == (
        "db.local", 3307, "app", "p@ss", "shop")
    assert args["autocommit"] is False
    with pytest.raises(ValueError, match="names its database"):
        connect_args("mysql://root@db/")


def test_keys_and_names() -> None:
    assert dedupe_key(17) == "outbox:17"
    assert amqp_key("m-1") == "amqp:m-1" and amqp_key(None) is None and amqp_key("") is None
    assert queue_names("wsgate.push") == ("wsgate.push.dlx", "wsgate.push.dead")
    # A new table's first id is above every id a table created a moment earlier could have reached at 1000/ms.
    assert first_id(1_800_000_000.0) == 1_800_000_000_000_000
    assert first_id(1_800_000_001.0) > first_id(1_800_000_000.0) + 999_999
    assert reason_text("x" * 10) == "x" * 10 and len(reason_text("x" * 10_000)) == REASON_MAX


@pytest.mark.parametrize(("dsn", "expect"), [
    ("postgresql://h/db", "CREATE TRIGGER wsgate_outbox_notify AFTER INSERT ON wsgate_outbox"),
    ("mysql://root@h/db", "id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY"),
])
def test_outbox_init_prints_the_ddl_without_a_database(dsn: str, expect: str) -> None:
    done = subprocess.run([sys.executable, "-m", "wsnode.outbox", "init", "--dsn", dsn, "--print"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and expect in done.stdout and "wsgate_outbox_dead" in done.stdout


def test_outbox_init_refuses_a_bad_dsn_with_status_2() -> None:
    done = subprocess.run([sys.executable, "-m", "wsnode.outbox", "init", "--dsn", "redis://h"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "outbox DSN" in done.stderr
