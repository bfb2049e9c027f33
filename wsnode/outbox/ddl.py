"""The outbox tables of each database (pure): DDL, and which dialect a DSN names.

PostgreSQL:
    wsgate_outbox (id bigserial primary key, payload jsonb not null, created_at timestamptz not null default now())
    wsgate_outbox_dead (id, payload, error, created_at, failed_at): rows that can never be pushed, with the reason
    an AFTER INSERT trigger (per statement) that NOTIFYs `wsgate_outbox`: delivered at commit, never on a rollback
MySQL/MariaDB: the same two tables (payload JSON, created_at TIMESTAMP(6)); no notifications, nodes poll.

A backend only ever runs `INSERT INTO wsgate_outbox (payload) VALUES (...)` in its own transaction.
A new table's ids start at the clock in microseconds-ish (milliseconds x 1000), not 1: the node remembers pushed ids
as dedupe keys for --store-max-age, so a table dropped and created again must not hand out ids seen before.
"""

from __future__ import annotations

from urllib.parse import urlsplit

TABLE = "wsgate_outbox"
DEAD_TABLE = "wsgate_outbox_dead"
CHANNEL = "wsgate_outbox"  # PostgreSQL NOTIFY channel

POSTGRES = "postgresql"
MYSQL = "mysql"

POSTGRES_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)""",
    f"""CREATE TABLE IF NOT EXISTS {DEAD_TABLE} (
    id bigint PRIMARY KEY,
    payload jsonb NOT NULL,
    error text NOT NULL,
    created_at timestamptz NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
)""",
    f"""CREATE OR REPLACE FUNCTION {TABLE}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$$""",
    f"DROP TRIGGER IF EXISTS {TABLE}_notify ON {TABLE}",
    f"""CREATE TRIGGER {TABLE}_notify AFTER INSERT ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_notify()""",
)

MYSQL_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    payload JSON NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB""",
    f"""CREATE TABLE IF NOT EXISTS {DEAD_TABLE} (
    id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    payload JSON NOT NULL,
    error TEXT NOT NULL,
    created_at TIMESTAMP(6) NOT NULL,
    failed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB""",
)


def dialect_of(dsn: str) -> str:
    """POSTGRES or MYSQL from the DSN's scheme; ValueError otherwise."""
    scheme = urlsplit(dsn).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        return POSTGRES
    if scheme in ("mysql", "mariadb"):
        return MYSQL
    raise ValueError(f"an outbox DSN starts with postgresql://, postgres://, mysql:// or mariadb://, not {scheme!r}")


def first_id(now_s: float) -> int:
    """The first id of a new outbox table (see the module docstring)."""
    return int(now_s * 1000) * 1000


def dedupe_key(row_id: int) -> str:
    """The push dedupe key of an outbox row."""
    return f"outbox:{row_id}"
