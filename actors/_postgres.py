"""PostgreSQL for actors: a pool per actor, and that actor's numbered migrations under a lock.

Each actor owns one schema (`conversation`, `executor`, ...) and its `migrations/NNN_name.sql`
files. Migrations run at start inside a transaction holding an advisory lock, so replicas
starting together apply each file once.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "DATABASE_DOWN",
    "Conn",
    "DatabaseRefused",
    "as_struct",
    "as_structs",
    "database_url",
    "health",
    "migrate",
    "open_pool",
]

T = TypeVar("T")

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection, or one borrowed from a pool: what the actors' SQL functions take."""


def as_struct(row: asyncpg.Record, type_: type[T], **extra: Any) -> T:
    """A row as `type_` (a Struct or dataclass): columns by field name, jsonb into nested Structs, text
    into enums, with `extra` for fields no column holds; columns without a field are ignored."""
    return msgspec.convert({**row, **extra} if extra else dict(row), type_)


def as_structs(rows: Iterable[asyncpg.Record], type_: type[T]) -> list[T]:
    return [msgspec.convert(dict(row), type_) for row in rows]


class DatabaseRefused(ConnectionError):
    """PostgreSQL answered a new connection with an error: starting up or shutting down, out of
    connection slots, the database closed to connections (`ALLOW_CONNECTIONS false`), and the like."""


# PostgreSQL is away (down, restarting, unreachable, refusing connections): an actor's endpoints answer
# `unavailable` (503 with Retry-After at the gateway), its consumers retry later
DATABASE_DOWN: tuple[type[Exception], ...] = (
    OSError,  # DatabaseRefused among them
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set (make run sets it for the embedded PostgreSQL)")
    return url


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out through msgspec: faster than json and gives plain Python values
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: msgspec.json.encode(v).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
        format="text",
    )


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, with PostgreSQL's refusal of the connection as DatabaseRefused: asyncpg raises each
    refusal as the server's error class (55000 for a database closed to connections, 53300 for too many),
    which a query on an open connection can raise for its own reasons too."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except asyncpg.PostgresError as e:
        raise DatabaseRefused(f"PostgreSQL refused a connection: {e}") from e


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset round trip when a connection goes back to the pool: actors keep no session state
    (no LISTEN, no session advisory locks, no SET outside a transaction), and the default reset
    cost a query, and a commit in pg_stat_database, per acquire."""


async def open_pool(dsn: str, *, schema: str, migrations: Path, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool whose connections see `schema` first, after applying its migrations."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, schema=schema, migrations=migrations)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn,
        connect=_connect,
        reset=_keep_session,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": f"{schema},public", "application_name": f"agentbus-{schema}"},
    )
    return pool


async def migrate(conn: asyncpg.Connection, *, schema: str, migrations: Path) -> list[str]:
    """Apply the `*.sql` files in `migrations` not yet recorded in `<schema>.schema_migrations`."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(f"agentbus:{schema}".encode()))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations')}
        await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
        for path in sorted(migrations.glob("*.sql")):
            if path.name in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(f'INSERT INTO "{schema}".schema_migrations (name) VALUES ($1)', path.name)
            applied.append(path.name)
    return applied


async def health(pool: asyncpg.Pool | None) -> dict[str, str]:
    """What an actor's `health` endpoint says of its PostgreSQL."""
    if pool is None:
        return {"postgres": "not connected"}
    try:
        await pool.fetchval("SELECT 1")
    except Exception as e:
        return {"postgres": repr(e)}
    return {"postgres": "ok"}
