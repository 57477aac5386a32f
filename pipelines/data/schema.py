"""The source schema recreated in the golden database: bare tables before the rows, everything
that checks or speeds up rows after them.

Why: loading rows into tables without keys, constraints and indexes is several times faster
than maintaining them row by row, and building an index once over all rows is what `pg_restore`
does too. So the build runs in two halves: `pre_data` (schemas, extensions, types, sequences,
functions, tables with their columns, defaults and NOT NULLs) and, once the rows are in:
`table_post_data` per table (checks, primary keys, unique and exclusion constraints, indexes;
tables in parallel), `foreign_keys` (added NOT VALID one at a time, as each locks both its
tables) and their `validations` (in parallel, one referencing table per session), then views,
triggers and sequence positions. Every constraint that is valid in the source is validated in
the snapshot; one marked NOT VALID in the source stays so.

Definitions come fully schema-qualified from `pipelines.data.catalog`; they are executed with an
empty `search_path` and function bodies unchecked, as `pg_restore` does. Where the catalog's
order is not a dependency order (a function taking a table's row type, a view over a later
view), `apply_in_order` retries what failed once the rest is there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from bot.errors import PermanentError
from bot.pg import quote_ident, quote_literal
from pipelines.data.catalog import Catalog, Column, SequenceDef, Statement, Table

# The golden database is ANALYZEd table by table as it loads, so every clone starts with
# planner statistics (a clone copies them; no autovacuum would gather them before the clone's
# rows change). A statistics target of 30 (9,000-row samples, 30 common values) serves an
# environment's queries and costs a quarter of the default's 100 (0.14 s against 0.5 s at
# 180 MB); a column with a target of its own keeps it.
STATISTICS_TARGET = 30
SESSION = ("SET search_path = ''", "SET check_function_bodies = false",
           "SET synchronous_commit = off", "SET maintenance_work_mem = '128MB'",
           "SET client_min_messages = warning",
           f"SET default_statistics_target = {STATISTICS_TARGET}")


async def prepare_session(conn: Any) -> None:
    """Settings for a connection that writes the golden database."""
    for sql in SESSION:
        await conn.execute(sql)


def pre_data(catalog: Catalog) -> list[Statement]:
    """What must exist before rows are loaded."""
    out = [Statement(f"schema {s}", f"CREATE SCHEMA IF NOT EXISTS {quote_ident(s)};")
           for s in catalog.schemas]
    out += [Statement(f"extension {name}", f"CREATE EXTENSION IF NOT EXISTS {quote_ident(name)} "
                                           f"WITH SCHEMA {quote_ident(schema)};")
            for name, schema in catalog.extensions]
    out += catalog.types
    out += [Statement(f"sequence {s.schema}.{s.name}",
                      f"CREATE SEQUENCE {s.ident} AS {s.type} {s.options()};")
            for s in catalog.sequences if not s.identity]
    out += catalog.functions
    identities = {s.owner: s for s in catalog.sequences if s.identity and s.owner is not None}
    out += [_create_table(t, identities) for t in catalog.tables.values()]
    out += [Statement(f"sequence {s.schema}.{s.name}",
                      f"ALTER SEQUENCE {s.ident} OWNED BY {_column_ref(catalog, s)};")
            for s in catalog.sequences if s.owner and not s.identity]
    return out


def _column_ref(catalog: Catalog, seq: SequenceDef) -> str:
    assert seq.owner is not None
    table, column = seq.owner
    return f"{catalog.tables[table].ident}.{quote_ident(column)}"


def _create_table(table: Table, identities: dict[tuple[str, str], SequenceDef]
                  ) -> Statement:
    columns = ",\n  ".join(_column(table, c, identities=identities) for c in table.columns)
    unlogged = "UNLOGGED " if table.unlogged else ""
    options = f" WITH ({', '.join(table.options)})" if table.options else ""
    return Statement(f"table {table.key}",
                     f"CREATE {unlogged}TABLE {table.ident} (\n  {columns}\n){options};")


def _column(table: Table, col: Column, *,
            identities: dict[tuple[str, str], SequenceDef]) -> str:
    sql = f"{quote_ident(col.name)} {col.type}"
    if col.collation:
        sql += f" COLLATE {col.collation}"
    if col.generated:
        sql += f" GENERATED ALWAYS AS ({col.default}) STORED"
    elif col.identity:
        seq = identities.get((table.key, col.name))
        mode = "ALWAYS" if col.identity == "a" else "BY DEFAULT"
        spec = f" (SEQUENCE NAME {seq.ident} {seq.options()})" if seq else ""
        sql += f" GENERATED {mode} AS IDENTITY{spec}"
    elif col.default is not None:
        sql += f" DEFAULT {col.default}"
    if col.not_null:
        sql += " NOT NULL"
    return sql


def table_post_data(table: Table) -> list[Statement]:
    """One table's checks, keys and exclusion constraints (one ALTER: one pass over the rows
    for all checks), then its other indexes."""
    own = [c for c in table.constraints if c.kind != "f"]
    out = []
    if own:
        adds = ",\n  ".join(f"ADD CONSTRAINT {quote_ident(c.name)} {c.definition}"
                            for c in sorted(own, key=lambda c: "pucx".index(c.kind)))
        names = ", ".join(c.name for c in own)
        out.append(Statement(f"{table.key}: {names}", f"ALTER TABLE {table.ident}\n  {adds};"))
    out += [Statement(f"{table.key}: index", sql) for sql in table.indexes]
    return out


def foreign_keys(catalog: Catalog) -> list[Statement]:
    """Every foreign key, added NOT VALID: a catalog change, no scan. Run one at a time (each
    locks both its tables)."""
    return [Statement(f"{t.key}: foreign key {c.name}",
                      f"ALTER TABLE {t.ident} ADD CONSTRAINT {quote_ident(c.name)} "
                      f"{c.definition}{' NOT VALID' if c.validated else ''};")
            for t in catalog.tables.values() for c in t.foreign_keys()]


def validations(catalog: Catalog) -> list[list[Statement]]:
    """The scans that validate the foreign keys valid in the source, grouped by referencing
    table: the groups can run in parallel (VALIDATE locks its table against another VALIDATE,
    and the referenced table only against writers)."""
    groups = [[Statement(f"{t.key}: foreign key {c.name}",
                         f"ALTER TABLE {t.ident} VALIDATE CONSTRAINT {quote_ident(c.name)};")
               for c in t.foreign_keys() if c.validated] for t in catalog.tables.values()]
    return [g for g in groups if g]


def after_data(catalog: Catalog) -> list[Statement]:
    """Views (materialized ones filled from the masked rows) and triggers."""
    return [*catalog.views, *catalog.triggers]


async def apply(conn: Any, statements: Iterable[Statement]) -> None:
    """Run each statement; the first failure is a PermanentError naming the object."""
    for stmt in statements:
        try:
            await conn.execute(stmt.sql)
        except asyncpg.PostgresError as exc:
            raise _failed(stmt, exc) from None


async def apply_in_order(conn: Any, statements: Sequence[Statement]) -> None:
    """Run the statements, retrying those that failed once the others have run, until all
    succeed or a round makes no progress (then the first failure is raised)."""
    pending = list(statements)
    while pending:
        failed: list[tuple[Statement, asyncpg.PostgresError]] = []
        for stmt in pending:
            try:
                await conn.execute(stmt.sql)
            except asyncpg.PostgresError as exc:
                failed.append((stmt, exc))
        if len(failed) == len(pending):
            raise _failed(*failed[0])
        pending = [stmt for stmt, _ in failed]


def _failed(stmt: Statement, exc: asyncpg.PostgresError) -> PermanentError:
    message = str(getattr(exc, "message", "") or type(exc).__name__).splitlines()[0][:200]
    detail = getattr(exc, "detail", None)
    return PermanentError(f"creating {stmt.what} in the snapshot failed: {message}"
                          + (f" ({detail[:200]})" if detail else ""))


async def set_sequences(conn: Any, catalog: Catalog) -> None:
    """Sequences owned by a column continue after the largest value kept (the smallest for a
    descending one); others continue where the source's are, when it lets us read them."""
    for seq in catalog.sequences:
        name = quote_literal(seq.ident)
        if seq.owner:
            table, column = seq.owner
            agg = "max" if seq.increment > 0 else "min"
            col = quote_ident(column)
            await conn.execute(
                f"SELECT setval({name}::regclass, coalesce({agg}({col}), {seq.start}), "
                f"{agg}({col}) IS NOT NULL) FROM {catalog.tables[table].ident}")
        elif seq.last_value is not None:
            await conn.execute(f"SELECT setval({name}::regclass, {seq.last_value}, true)")
