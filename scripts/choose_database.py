"""Print the DATABASE_URL for a local run: PostgreSQL when one answers on 127.0.0.1:5432, else SQLite.

Creates the `distillery` database on that PostgreSQL if it is missing. A DATABASE_URL already set is kept, and
the PostgreSQL database it names is created if missing too (so `DATABASE_URL=.../mine scripts/run.sh` works).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
DATABASE_NAME = "distillery"


def create_if_missing(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, connect_timeout=2, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def keep_given(url: str) -> int:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if parts.scheme in ("postgres", "postgresql", "pgsql") and name:
        # The server's maintenance database, with the same credentials, host and options.
        admin_url = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
        try:
            create_if_missing(admin_url, name)
        except psycopg.Error as error:
            # Migrate reports the real problem (server down, wrong password) with the URL the user chose.
            print(f"Could not check database {name!r}: {str(error).strip()}", file=sys.stderr)
    print(url)
    return 0


def main() -> int:
    if os.environ.get("DATABASE_URL"):
        return keep_given(os.environ["DATABASE_URL"])
    data_dir = Path(os.environ.get("DATA_DIR", "var")).resolve()
    try:
        create_if_missing(PG_ADMIN_URL, DATABASE_NAME)
    except psycopg.Error as error:
        print(f"PostgreSQL not usable ({str(error).strip()}); using SQLite in WAL mode.", file=sys.stderr)
        print(f"sqlite:///{data_dir / 'distillery.sqlite3'}")
        return 0
    print(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
