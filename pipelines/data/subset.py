"""Which rows of the source a snapshot keeps: roots, their foreign-key closure, and children.

Why: a useful snapshot is a small, *consistent* slice of production — every foreign key, unique
and check constraint of the source must still hold, so the golden database can keep them all.
The rules name root tables with a fraction (`customers: 5%`) or a WHERE clause; from there:

- every row a kept row references through a foreign key is kept (transitively, cycles too);
- for tables the rules list as `children`, rows referencing a kept row are kept as well — but
  only rows kept as roots or as children pull in children, never rows kept merely because
  something referenced them. Otherwise one popular parent (a product in every order) would drag
  in every order that mentions it, and every customer of those, until the subset is the whole
  database;
- tables reached by neither are copied empty. With no roots at all, everything is copied.
  Migration history tables (`MIGRATION_HISTORIES`: Ephem's own, Flyway's, Alembic's, Rails',
  Django's, …) are always copied whole: they describe the schema, not the business, and an
  environment cloned from the snapshot runs its newer migrations on top of them.

Unique and check constraints need no work: a subset of rows that satisfied them still does.
Fractions are deterministic — a row is in when a hash of its primary key (of the whole row for
a table without one) falls below the fraction — so two builds over the same data pick the same
rows.

How: inside the build's `REPEATABLE READ READ ONLY` transaction the kept rows are recorded by
`ctid` (stable within one snapshot, and available on tables without a primary key) in a
temporary table, created before the transaction starts (a read-only transaction may write
temporary tables but not create them). The closure is computed semi-naively: each round joins
only the rows added in the previous round, until a round adds nothing; a row added as a child
through a foreign key is not followed back up that same key (its parent is kept already),
which saves the biggest join of a parent-children-grandchildren chain. The parallel copy
workers do not share the coordinator's temporary tables, so each table's kept `ctid`s are
streamed to the worker that copies it (`ship_keys`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from bot.errors import PermanentError
from bot.pg import quote_ident
from pipelines.data.catalog import Catalog, Table
from pipelines.data.copy import pipe
from pipelines.data.migrations import SCHEMA_HISTORY, SEED_HISTORY
from pipelines.data.rules import SubsetRoot

KEEP = "pg_temp.ephem_keep"  # on the coordinator: (rel, tid, round, down_round, via)
KEYS = "ephem_keys"  # on each worker, in pg_temp: (rel, tid)
BUCKETS = 1_000_000  # fraction resolution: one in a million
MIGRATION_HISTORIES = frozenset({
    SCHEMA_HISTORY, SEED_HISTORY, "flyway_schema_history", "alembic_version",
    "schema_migrations", "ar_internal_metadata", "django_migrations", "knex_migrations",
    "goose_db_version", "databasechangelog", "databasechangeloglock",
    "__EFMigrationsHistory"})


@dataclass(frozen=True)
class Subset:
    """The outcome: for each table, all rows, some rows (by `ctid`) or none."""

    everything: bool  # no roots: every table whole
    kept: Mapping[str, int]  # table key → rows kept (absent: none), when not `everything`
    rounds: int = 0

    def rows(self, table: str) -> int | None:
        """Rows kept of `table`; None when it is copied whole."""
        return None if self.everything else self.kept.get(table, 0)


async def prepare_coordinator(conn: Any) -> None:
    """Create the coordinator's temporary table; call before the transaction begins."""
    await conn.execute(
        f"""CREATE TEMP TABLE IF NOT EXISTS ephem_keep (
              rel oid NOT NULL, tid tid NOT NULL, round int NOT NULL, down_round int,
              via int, PRIMARY KEY (rel, tid));
            CREATE INDEX IF NOT EXISTS ephem_keep_round ON {KEEP} (rel, round);
            CREATE INDEX IF NOT EXISTS ephem_keep_down ON {KEEP} (rel, down_round)""")


async def prepare_worker(conn: Any) -> None:
    """Create a copy worker's temporary table; call before the transaction begins."""
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {KEYS} (rel oid NOT NULL, "
                       "tid tid NOT NULL)")


def _sample_key(table: Table) -> str:
    pk = table.primary_key
    if len(pk) == 1:
        return f"t.{quote_ident(pk[0])}::text"
    if pk:
        return "ROW(" + ", ".join(f"t.{quote_ident(c)}" for c in pk) + ")::text"
    return "t::text"


def root_predicate(table: Table, *, percent: float | None, where: str | None) -> str:
    """SQL condition on alias `t` selecting a root's rows."""
    parts = []
    if percent is not None:
        if not 0 <= percent <= 100:
            raise PermanentError(f"subset root {table.display}: {percent}% is not between 0% "
                                 "and 100%")
        cut = round(percent * BUCKETS / 100)
        parts.append(f"(hashtextextended({_sample_key(table)}, 0) & 9223372036854775807) "
                     f"% {BUCKETS} < {cut}")
    if where:
        parts.append(f"({where})")
    return " AND ".join(parts) or "true"


async def compute(conn: Any, catalog: Catalog, *, roots: Iterable[SubsetRoot],
                  children: Iterable[str]) -> Subset:
    """Record the kept rows in the coordinator's temporary table (inside the build's
    transaction) and count them per table."""
    roots = list(roots)
    if not roots:
        return Subset(everything=True, kept={})
    child_keys = {catalog.resolve(name).key for name in children}
    histories = [SubsetRoot(table=t.key, fraction=None, where=None)
                 for t in catalog.tables.values() if t.name in MIGRATION_HISTORIES]
    for root in [*roots, *histories]:
        table = catalog.resolve(root.table)
        predicate = root_predicate(table, percent=root.fraction, where=root.where)
        try:
            await conn.execute(
                f"INSERT INTO {KEEP} SELECT {table.oid}, t.ctid, 0, 0, NULL "
                f"FROM ONLY {table.ident} t WHERE {predicate} ON CONFLICT DO NOTHING")
        except asyncpg.PostgresError as exc:
            message = str(getattr(exc, "message", "") or exc).splitlines()[0][:200]
            raise PermanentError(f"subset root {table.display}: {message}") from None
    edges = [(t, fk) for t in catalog.tables.values() for fk in t.foreign_keys()]
    rounds, size, analyzed = 0, await conn.fetchval(f"SELECT count(*) FROM {KEEP}"), -1
    while True:
        if size > 2 * analyzed:  # keep the planner's estimates roughly right, cheaply
            await conn.execute(f"ANALYZE {KEEP}")
            analyzed = size
        added = 0
        for via, (child, fk) in enumerate(edges):
            assert fk.ref_table is not None
            parent = catalog.tables[fk.ref_table]
            on = " AND ".join(f"p.{quote_ident(pc)} = c.{quote_ident(cc)}"
                              for cc, pc in zip(fk.columns, fk.ref_columns, strict=True))
            # The parents of the child rows added last round (except through the edge that
            # added them as children: those parents are kept already).
            added += _count(await conn.execute(
                f"""INSERT INTO {KEEP}
                    SELECT DISTINCT {parent.oid}::oid, p.ctid, {rounds + 1}, NULL::int, NULL::int
                    FROM ONLY {child.ident} c JOIN ONLY {parent.ident} p ON {on}
                    JOIN {KEEP} k ON k.rel = {child.oid} AND k.tid = c.ctid
                    WHERE k.round = {rounds} AND k.via IS DISTINCT FROM {via}
                    ON CONFLICT DO NOTHING"""))
            if child.key not in child_keys:
                continue
            # The children of the parent rows that became roots or children last round.
            added += _count(await conn.execute(
                f"""INSERT INTO {KEEP} AS kk
                    SELECT DISTINCT {child.oid}::oid, c.ctid, {rounds + 1}, {rounds + 1}, {via}
                    FROM ONLY {child.ident} c JOIN ONLY {parent.ident} p ON {on}
                    JOIN {KEEP} k ON k.rel = {parent.oid} AND k.tid = p.ctid
                    WHERE k.down_round = {rounds}
                    ON CONFLICT (rel, tid) DO UPDATE SET down_round = EXCLUDED.down_round
                    WHERE kk.down_round IS NULL"""))
        rounds += 1
        size += added
        if not added:
            break
    by_oid = {t.oid: t.key for t in catalog.tables.values()}
    counts = await conn.fetch(f"SELECT rel, count(*) FROM {KEEP} GROUP BY rel")
    return Subset(everything=False, kept={by_oid[r[0]]: r[1] for r in counts}, rounds=rounds)


def _count(status: str) -> int:
    """The row count of an `INSERT 0 n` command tag."""
    return int(status.rpartition(" ")[2])


async def ship_keys(coordinator: Any, worker: Any, *, table: Table,
                    lock: asyncio.Lock) -> None:
    """Stream `table`'s kept `ctid`s from the coordinator into the worker's temporary table
    (the coordinator's connection serves one COPY at a time: `lock` takes turns)."""
    async with lock:
        await pipe(coordinator, f"SELECT rel, tid FROM {KEEP} WHERE rel = {table.oid}",
                   target=worker, table=KEYS, schema="pg_temp", columns=("rel", "tid"),
                   binary=True)
    await worker.execute(f"ANALYZE pg_temp.{KEYS}")


def select_rows(table: Table, *, subset: Subset) -> str | None:
    """The query that yields the table's kept rows on a worker (after `ship_keys`), or None
    when none are kept."""
    cols = ", ".join(f"t.{quote_ident(c)}" for c in table.copy_columns)
    rows = subset.rows(table.key)
    if rows is None:
        return f"SELECT {cols} FROM ONLY {table.ident} t"
    if rows == 0:
        return None
    return (f"SELECT {cols} FROM ONLY {table.ident} t WHERE t.ctid IN "
            f"(SELECT k.tid FROM pg_temp.{KEYS} k WHERE k.rel = {table.oid})")
