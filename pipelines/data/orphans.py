"""Environment databases and roles that no live environment owns.

Why: a database or role is Ephem's when its name is the data phase's prefix plus an environment
name (`ephem_pr_142`). Snapshots (`<prefix>snap_…`) and warm-pool members (`<prefix>pool_…`)
are Ephem's too but belong to no environment, so they are never orphans here. A crash between
creating a database and recording it, or a store restored from a backup, leaves such databases
behind; `pipelines.infra.orphans` (and through it `ephem doctor --orphans` and the reaper) asks
this module for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot.pg import quote_ident
from pipelines.data import pgconn

_NOT_ENVIRONMENTS = ("snap_", "pool_")


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def unowned(admin_url: str, *, prefix: str, live_names: Iterable[str],
                  keep: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(databases, roles) with the prefix that belong to no live environment.

    Never the database or role Ephem connects with, nor those in `keep` (Ephem's own state
    database may well share the prefix)."""
    wanted = {prefix + name.replace("-", "_") for name in live_names} | set(keep)
    async with pgconn.connect(admin_url) as conn:
        dbs = [r[0] for r in await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 "
            "AND datname <> current_database() ORDER BY 1", _like(prefix))]
        roles = [r[0] for r in await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE $1 AND rolname <> current_user "
            "ORDER BY 1", _like(prefix))]

    def orphan(name: str) -> bool:
        return name not in wanted and not name[len(prefix):].startswith(_NOT_ENVIRONMENTS)

    return [d for d in dbs if orphan(d)], [r for r in roles if orphan(r)]


async def drop_database(admin_url: str, database: str) -> None:
    async with pgconn.connect(admin_url) as conn:
        await pgconn.drop_database(conn, database)


async def drop_role(admin_url: str, role: str) -> None:
    async with pgconn.connect(admin_url) as conn:
        await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")


class DatabaseSizes:
    """Implements `bot.ports.DatabaseSizes` for the shared data server: one query for all."""

    def __init__(self, admin_url: str, *, prefix: str) -> None:
        self.admin_url = admin_url
        self.prefix = prefix

    async def sizes(self, names: Sequence[str]) -> dict[str, int]:
        by_db = {self.prefix + name.replace("-", "_"): name for name in names}
        if not by_db:
            return {}
        async with pgconn.connect(self.admin_url) as conn:
            rows = await conn.fetch(
                "SELECT datname, pg_database_size(datname) FROM pg_database "
                "WHERE datname = ANY($1::text[])", list(by_db))
        return {by_db[r[0]]: int(r[1]) for r in rows}
