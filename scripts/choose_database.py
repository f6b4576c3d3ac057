"""Print the DATABASE_URL for a local run: PostgreSQL when one answers on 127.0.0.1:5432, else SQLite.

Creates the `distillery` database on that PostgreSQL if it is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
DATABASE_NAME = "distillery"


def main() -> int:
    data_dir = Path(os.environ.get("DATA_DIR", "var")).resolve()
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    except psycopg.Error as error:
        print(f"PostgreSQL not usable ({str(error).strip()}); using SQLite in WAL mode.", file=sys.stderr)
        print(f"sqlite:///{data_dir / 'distillery.sqlite3'}")
        return 0
    print(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
