"""Connections to the data server, and what their failures mean, in one place.

Why: the data phase, the clone module, the migration runner and the detector all connect to a
PostgreSQL server and must turn what goes wrong into `TemporaryError` (worth retrying: the
server is unreachable, busy, starting, a lock is held) or `PermanentError` (denied, broken),
with a short reason that names the server but never a password. Closing must never hang or
leave a connection behind, even when the task is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident

CONNECT_TIMEOUT = 10.0

# SQLSTATE classes and codes worth retrying: connection trouble, too many connections or out of
# resources, the server shutting down or starting, a lock or object busy, a deadlock.
TEMPORARY_CLASSES = ("08", "53", "57", "40")
TEMPORARY_CODES = ("55006", "55P03")
DENIED_CLASSES = ("28",)  # invalid authorization
DENIED_CODES = ("42501",)  # insufficient privilege


def server(url: str) -> tuple[str, int]:
    """Host and port other tools use to reach the server (a socket directory if no host)."""
    parts = urlsplit(asyncpg_dsn(url))
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or ["localhost"])[0]
    port = parts.port or int((query.get("port") or ["5432"])[0])
    return host, port


def where(url: str) -> str:
    """`host:port` of the server, for messages; no credentials."""
    host, port = server(url)
    return f"{host}:{port}"


def location(url: str) -> str:
    """`host:port/database` of a URL, for messages and metadata; never the user or password.
    ValueError for a URL that is not PostgreSQL's."""
    host, port = server(url)
    return f"{host}:{port}{urlsplit(asyncpg_dsn(url)).path or '/'}"


def classify(exc: asyncpg.PostgresError, at: str) -> TemporaryError | PermanentError:
    """Sort a server error by its SQLSTATE. The reason quotes the server's first message line;
    callers never send a password in statement text, so it holds none."""
    state = str(getattr(exc, "sqlstate", "") or "")
    message = str(getattr(exc, "message", "") or type(exc).__name__).splitlines()[0][:160]
    if state.startswith(TEMPORARY_CLASSES) or state in TEMPORARY_CODES:
        return TemporaryError(f"PostgreSQL at {at} is busy or unavailable: {message}")
    if state.startswith(DENIED_CLASSES) or state in DENIED_CODES:
        return PermanentError(f"PostgreSQL at {at} refused: {message}")
    return PermanentError(f"PostgreSQL at {at} failed: {message} ({state or type(exc).__name__})")


async def close(conn: Any) -> None:
    """Close politely within the timeout; otherwise (or when cancelled) drop the socket."""
    try:
        await conn.close(timeout=CONNECT_TIMEOUT)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:
        conn.terminate()


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Any]:
    """A connection whose failures (connecting, and inside the block) arrive as Temporary or
    PermanentError naming the server."""
    at = where(url)
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise TemporaryError(f"cannot reach PostgreSQL at {at} ({type(exc).__name__})") from None
    except asyncpg.PostgresError as exc:
        raise classify(exc, at) from None
    try:
        yield conn
    except asyncpg.PostgresError as exc:
        raise classify(exc, at) from None
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        raise TemporaryError(f"lost the connection to PostgreSQL at {at} "
                             f"({type(exc).__name__})") from None
    finally:
        await close(conn)


async def drop_database(conn: Any, database: str) -> None:
    """Drop `database` if it exists, ending its sessions first (they would block the drop)."""
    await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
    force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)}{force}")
