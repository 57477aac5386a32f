"""Alembic environment: runs the bot's schema migrations on the async engine.

The URL comes from the Alembic config (set by `bot.store.migrate`), never from the environment.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from bot.pg import sqlalchemy_url
from bot.store.models import Base

config = context.config
target_metadata = Base.metadata


# Several replicas may start at once; one migrates, the others wait and find nothing to do.
_MIGRATION_LOCK = 0x6570_6865_6D00  # "ephem" as a number


def _run(connection: Connection) -> None:
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
    context.configure(connection=connection, target_metadata=target_metadata,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(sqlalchemy_url(config.get_main_option("sqlalchemy.url") or ""))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
