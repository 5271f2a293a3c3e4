"""Choosing the gateway's storage backend: ``open_store(data_dir, database_url)``.

Invariants:
- No URL: the embedded SQLite database in the data folder (``datadir.DATABASE``).
- ``postgresql://`` / ``postgres://`` URL: ``PgStore`` on that database (the scale path: any
  number of gateway processes may share it). psycopg is imported only then.
- Anything else is refused with ``StoreError("unsupported_database_url")``, before any
  connection is attempted.
- A password inside the URL is refused (``password_in_database_url``): a command line is
  visible to every local user (``ps``) and lands in shell history. libpq reads the password
  from ``PGPASSFILE`` / ``~/.pgpass`` (or ``PGPASSWORD``) instead. The URL is never logged.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from sync.gateway import datadir
from sync.gateway.store.base import Store, StoreError

POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def open_store(data_dir: Path, database_url: str | None, *, pool_size: int | None = None) -> Store:
    """The store ``serve`` uses: SQLite in ``data_dir``, or PostgreSQL at ``database_url``
    (with at most ``pool_size`` connections from this process; the default when None)."""
    if not database_url:
        from sync.gateway.store.sqlite import SqliteStore

        return SqliteStore(data_dir / datadir.DATABASE)
    try:
        parts = urlsplit(database_url)
        has_password = parts.password is not None
    except ValueError:
        raise StoreError("unsupported_database_url") from None
    if parts.scheme not in POSTGRES_SCHEMES:
        raise StoreError("unsupported_database_url")
    if has_password or "password=" in parts.query:
        raise StoreError("password_in_database_url")
    from sync.gateway.store.postgres import PgStore

    if pool_size is None:
        return PgStore(database_url)
    return PgStore(database_url, pool_size=pool_size)
