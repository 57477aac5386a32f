"""Golden databases on the target server: their names, their metadata, and which are kept.

Why: a built snapshot is a database named `{prefix}snap_{name}_{YYYYmmddHHMMSS}` (UTC), marked
as a template that nobody may connect to, whose `COMMENT` holds what was built (JSON: name, when,
tables, rows, bytes, seconds, source host, rules checksum). The server is then the only record:
listing snapshots reads `pg_database`, so a bot restart, a second bot or an operator's `psql`
all see the same thing, and a half-built database (no comment yet) is never mistaken for one.

Neighbours: `pipelines.data.snapshot` builds and comments golden databases and applies
retention; `pipelines.data.clone` copies them per environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bot.errors import PermanentError
from bot.pg import asyncpg_dsn, quote_ident, quote_literal

MAX_IDENTIFIER = 63
STAMP = "%Y%m%d%H%M%S"
MARK = "ephem-snapshot"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class SnapshotInfo:
    """One built snapshot (a golden database)."""

    name: str
    database: str
    built_at: datetime
    tables: int
    rows: int
    bytes: int
    seconds: float
    # Seconds of each step of the build that made it (none in snapshots built before they
    # were recorded).
    steps: Mapping[str, float] = field(default_factory=dict, compare=False)


def stem(name: str) -> str:
    """The snapshot name as it appears in database names (`-` → `_`). Raises PermanentError."""
    if not _NAME.match(name):
        raise PermanentError(f"snapshot name {name!r} must start with a letter and use only "
                             "a-z, 0-9, _ and -")
    return name.replace("-", "_")


def family(prefix: str, name: str) -> str:
    """The part of the database name every snapshot called `name` shares."""
    return f"{prefix}snap_{stem(name)}_"


def database_name(prefix: str, name: str, *, at: datetime) -> str:
    db = family(prefix, name) + at.astimezone(UTC).strftime(STAMP)
    if len(db.encode()) > MAX_IDENTIFIER:
        raise PermanentError(f"snapshot name {name!r} is too long: database {db} would exceed "
                             f"{MAX_IDENTIFIER} characters")
    return db


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def comment(info: SnapshotInfo, **extra: Any) -> str:
    return json.dumps({"kind": MARK, "name": info.name, "built_at": info.built_at.isoformat(),
                       "tables": info.tables, "rows": info.rows, "bytes": info.bytes,
                       "seconds": round(info.seconds, 3),
                       "steps": [[step, round(s, 3)] for step, s in info.steps.items()],
                       **extra},
                      sort_keys=True)


def parse(database: str, text: str | None) -> SnapshotInfo | None:
    """The snapshot a database's comment describes; None for anything else."""
    try:
        meta = json.loads(text or "")
        if not isinstance(meta, dict) or meta.get("kind") != MARK:
            return None
        return SnapshotInfo(
            name=str(meta["name"]), database=database,
            built_at=datetime.fromisoformat(meta["built_at"]), tables=int(meta["tables"]),
            rows=int(meta["rows"]), bytes=int(meta["bytes"]), seconds=float(meta["seconds"]),
            steps={str(step): float(s) for step, s in meta.get("steps") or ()})
    except (ValueError, KeyError, TypeError):
        return None


async def databases(conn: Any, *, prefix: str, name: str | None = None
                    ) -> list[tuple[str, str | None]]:
    """(database, comment) for every database that looks like a snapshot (of `name`)."""
    pattern = _like(family(prefix, name) if name else f"{prefix}snap_") + "%"
    rows = await conn.fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
        "WHERE datname LIKE $1 ORDER BY datname", pattern)
    return [(r[0], r[1]) for r in rows]


async def snapshots(conn: Any, *, prefix: str, name: str | None = None) -> list[SnapshotInfo]:
    """Built snapshots, newest first."""
    found = [info for db, text in await databases(conn, prefix=prefix, name=name)
             if (info := parse(db, text)) is not None and (name is None or info.name == name)]
    return sorted(found, key=lambda i: (i.built_at, i.database), reverse=True)


async def list_snapshots(target_admin_url: str, *, prefix: str,
                         name: str | None = None) -> list[SnapshotInfo]:
    """Built snapshots on the target server (of `name`, or all), newest first."""
    conn = await asyncpg.connect(asyncpg_dsn(target_admin_url))
    try:
        return await snapshots(conn, prefix=prefix, name=name)
    finally:
        await conn.close()


async def latest_snapshot(target_admin_url: str, *, prefix: str,
                          name: str | None = None) -> SnapshotInfo | None:
    """The newest built snapshot called `name` (of any name when None), if any."""
    found = await list_snapshots(target_admin_url, prefix=prefix, name=name)
    return found[0] if found else None


async def free_name(conn: Any, *, prefix: str, name: str, at: datetime) -> str:
    """A database name for a snapshot built at `at`, a second later if that one is taken."""
    while True:
        db = database_name(prefix, name, at=at)
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db):
            return db
        at += timedelta(seconds=1)


async def drop(conn: Any, database: str) -> None:
    """Drop a golden database, template or not, whoever is connected."""
    ident = quote_ident(database)
    await conn.execute(f"ALTER DATABASE {ident} IS_TEMPLATE false")
    await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")


async def finish(conn: Any, info: SnapshotInfo, **extra: Any) -> None:
    """Record the metadata and freeze the database as a template nobody connects to."""
    ident = quote_ident(info.database)
    await conn.execute(f"COMMENT ON DATABASE {ident} IS {quote_literal(comment(info, **extra))}")
    await conn.execute(f"ALTER DATABASE {ident} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")


async def leftovers(conn: Any, *, prefix: str, name: str) -> list[str]:
    """Databases of this snapshot family without metadata: builds that died half-way. Only
    meaningful while holding the family's build lock (`build_lock`)."""
    exact = re.compile(re.escape(family(prefix, name)) + r"\d{14}")
    return [db for db, text in await databases(conn, prefix=prefix, name=name)
            if exact.fullmatch(db) and parse(db, text) is None]


async def retain(conn: Any, *, prefix: str, name: str, keep: int) -> list[str]:
    """Drop all but the newest `keep` snapshots of `name`; the names dropped."""
    old = (await snapshots(conn, prefix=prefix, name=name))[keep:]
    for info in old:
        await drop(conn, info.database)
    return [info.database for info in old]


async def build_lock(conn: Any, *, prefix: str, name: str) -> bool:
    """Take the session-level advisory lock that lets one build of `name` run at a time."""
    return bool(await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", f"{MARK}:{family(prefix, name)}"))
