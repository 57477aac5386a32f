"""Engine, sessions and the transaction boundary.

Every query has a deadline: a connection that hangs (a frozen proxy, a network partition that
drops nothing) must turn into an error, never into a wait that outlives the job's lease. The
executor bounds its lease renewals on top of this (`bot.executor.worker`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.pg import sqlalchemy_url

CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the state database
QUERY_TIMEOUT = 30.0  # seconds any one statement may take (Ephem's are small)


class Store:
    """Owns the connection pool. `transaction()` is the only place that commits."""

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 5,
                 pool_timeout: float = 30.0,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 query_timeout: float = QUERY_TIMEOUT) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(url),
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,  # seconds to wait for a free connection in the pool
            pool_pre_ping=True,
            # asyncpg: `timeout` bounds connecting, `command_timeout` every statement
            # (the pre-ping, BEGIN, COMMIT and ROLLBACK included).
            connect_args={"timeout": connect_timeout, "command_timeout": query_timeout},
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits when the block ends, rolls back if it raises."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
