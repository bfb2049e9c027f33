"""`python -m wsnode.outbox init --dsn DSN`: create the outbox tables (idempotent); prints what a backend inserts."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from wsnode import environment
from wsnode.outbox import init_schema
from wsnode.outbox.ddl import MYSQL_DDL, POSTGRES, POSTGRES_DDL, TABLE, dialect_of
from wsnode.settings import flag_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsnode.outbox", description="wsgate transactional outbox")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the outbox tables (and the PostgreSQL notify trigger)")
    dsn = flag_of("outbox_dsn")  # the node's --outbox-dsn: the same variable names the same database
    init.add_argument("--dsn", default=environment.current().get(dsn.env),
                      help=f"postgresql://... or mysql://... (env {dsn.env})")
    init.add_argument("--print", action="store_true", help="print the DDL instead of running it")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error(f"--dsn (or {dsn.env}) is required")
    try:
        dialect = dialect_of(args.dsn)
    except ValueError as exc:
        parser.error(str(exc))
    if args.print:
        print(";\n\n".join(POSTGRES_DDL if dialect == POSTGRES else MYSQL_DDL) + ";")
        return 0
    try:
        new = asyncio.run(init_schema(args.dsn))
    except (OSError, ValueError) as exc:
        print(f"outbox init failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the drivers' errors (asyncpg, aiomysql) share no root
        print(f"outbox init failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    marker = "$1" if dialect == POSTGRES else "%s"
    print(f"{'created' if new else 'already there'}: {TABLE}; backends write "
          f"INSERT INTO {TABLE} (payload) VALUES ({marker}) in their own transaction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
