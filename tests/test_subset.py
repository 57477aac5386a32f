"""Subsetting on a real source: roots by fraction and by WHERE clause, the foreign-key closure
through a cycle, a self-reference and a composite key, children only where the rules say, and
the same rows on every run. The kept rows are read back from the coordinator's temporary table
inside the same read-only snapshot the builder uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
import pytest

from bot.errors import PermanentError
from bot.pg import asyncpg_dsn, quote_ident
from pipelines.data import subset
from pipelines.data.catalog import Catalog, read_catalog
from pipelines.data.rules import SubsetRoot
from tests.snapshot_source import CUSTOMERS, create_source


@pytest.fixture(scope="module")
async def source(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    name = f"{db_prefix}subset_src"
    url = await create_source(pg_admin_url, name)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def coordinator(source: str) -> AsyncIterator[Any]:
    """A session as the builder's coordinator has it: read-only, repeatable read."""
    conn = await asyncpg.connect(asyncpg_dsn(source))
    await subset.prepare_coordinator(conn)
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                       "SET LOCAL search_path = ''")
    try:
        yield conn
    finally:
        await conn.close()


def _roots(**spec: float | str) -> list[SubsetRoot]:
    return [SubsetRoot(table=t, fraction=v if isinstance(v, float) else None,
                       where=v if isinstance(v, str) else None) for t, v in spec.items()]


async def _compute(conn: Any, roots: list[SubsetRoot], children: Iterable[str] = ()
                   ) -> tuple[Catalog, subset.Subset]:
    catalog = await read_catalog(conn)
    return catalog, await subset.compute(conn, catalog, roots=roots, children=children)


async def _kept(conn: Any, table: str, column: str = "id") -> set[Any]:
    rows = await conn.fetch(
        f"SELECT t.{column} FROM public.{table} t JOIN {subset.KEEP} k "
        f"ON k.rel = 'public.{table}'::regclass AND k.tid = t.ctid")
    return {r[0] for r in rows}


async def _violations(conn: Any, catalog: Catalog) -> list[str]:
    """Foreign keys of kept rows whose referenced row is not kept."""
    out = []
    for table in catalog.tables.values():
        for fk in table.foreign_keys():
            assert fk.ref_table is not None
            parent = catalog.tables[fk.ref_table]
            on = " AND ".join(f"p.{quote_ident(pc)} = c.{quote_ident(cc)}"
                              for cc, pc in zip(fk.columns, fk.ref_columns, strict=True))
            notnull = " AND ".join(f"c.{quote_ident(cc)} IS NOT NULL" for cc in fk.columns)
            missing = await conn.fetchval(
                f"""SELECT count(*) FROM {table.ident} c
                    JOIN {subset.KEEP} kc ON kc.rel = {table.oid} AND kc.tid = c.ctid
                    JOIN {parent.ident} p ON {on}
                    WHERE {notnull} AND NOT EXISTS (SELECT 1 FROM {subset.KEEP} kp
                          WHERE kp.rel = {parent.oid} AND kp.tid = p.ctid)""")
            if missing:
                out.append(f"{table.key}.{fk.name}: {missing}")
    return out


async def test_no_roots_means_every_row(coordinator: Any) -> None:
    catalog, kept = await _compute(coordinator, [])
    assert kept.everything
    assert all(kept.rows(key) is None for key in catalog.tables)
    select = subset.select_rows(catalog.tables["public.orders"], subset=kept)
    assert select is not None and "ctid" not in select and '"total"' not in select


async def test_fraction_root_closure_satisfies_every_foreign_key(coordinator: Any) -> None:
    catalog, kept = await _compute(coordinator, _roots(customers=10.0))
    roots = await coordinator.fetchval(
        f"SELECT count(*) FROM {subset.KEEP} WHERE round = 0 "
        "AND rel = 'public.customers'::regclass")
    assert 5 <= roots <= 40  # about 10% of 200, by hash
    assert await _violations(coordinator, catalog) == []
    customers = await _kept(coordinator, "customers")
    orders = await _kept(coordinator, "orders")
    # The cycle was followed: favourite orders are kept, and so are their customers.
    favourites = {r[0] for r in await coordinator.fetch(
        "SELECT favourite_order_id FROM public.customers WHERE id = ANY($1::bigint[]) "
        "AND favourite_order_id IS NOT NULL", list(customers))}
    assert favourites and favourites <= orders
    assert len(customers) > roots
    # Without `children`, only orders something references are kept, and no items at all.
    assert orders == favourites
    assert kept.rows("public.order_items") == 0
    assert kept.rows("public.audit_log") == 0  # reached by nothing: empty
    assert kept.rows("public.schema_migrations") == 3  # a migration history: whole
    assert subset.select_rows(catalog.tables["public.audit_log"], subset=kept) is None


async def test_children_follow_roots_and_children_only(coordinator: Any) -> None:
    catalog, kept = await _compute(coordinator, _roots(customers=10.0),
                                   children=["orders", "order_items"])
    assert await _violations(coordinator, catalog) == []
    roots = {r[0] for r in await coordinator.fetch(
        f"SELECT c.id FROM public.customers c JOIN {subset.KEEP} k "
        "ON k.rel = 'public.customers'::regclass AND k.tid = c.ctid AND k.round = 0")}
    orders = await _kept(coordinator, "orders")
    root_orders = {r[0] for r in await coordinator.fetch(
        "SELECT id FROM public.orders WHERE customer_id = ANY($1::bigint[])", list(roots))}
    assert root_orders and root_orders <= orders
    # Every item of every root customer's order, through the composite key to products.
    items = {r[0] for r in await coordinator.fetch(
        f"SELECT i.order_id FROM public.order_items i JOIN {subset.KEEP} k "
        "ON k.rel = 'public.order_items'::regclass AND k.tid = i.ctid")}
    assert root_orders <= items
    products = await coordinator.fetchval(
        f"SELECT count(*) FROM {subset.KEEP} WHERE rel = 'public.products'::regclass")
    assert 0 < products < 30
    # A customer kept only as the owner of a favourite order does not pull in its orders:
    # the subset stays a subset.
    assert len(orders) < 600 and kept.rows("public.customers") < CUSTOMERS


async def test_where_root_and_self_reference(coordinator: Any) -> None:
    catalog, kept = await _compute(coordinator, _roots(employees="id = 37"))
    assert await _kept(coordinator, "employees") == {37, 18, 9, 4, 2, 1}  # the manager chain
    assert kept.rows("public.customers") == 0
    assert await _violations(coordinator, catalog) == []


async def test_the_same_rows_every_time(source: str) -> None:
    picked = []
    for _ in range(2):
        conn = await asyncpg.connect(asyncpg_dsn(source))
        try:
            await subset.prepare_coordinator(conn)
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                               "SET LOCAL search_path = ''")
            await _compute(conn, _roots(customers=25.0), children=["orders"])
            picked.append((await _kept(conn, "customers"), await _kept(conn, "orders")))
        finally:
            await conn.close()
    assert picked[0] == picked[1]
    assert 0 < len(picked[0][0]) < CUSTOMERS


async def test_bad_roots_are_permanent_errors(coordinator: Any) -> None:
    with pytest.raises(PermanentError, match="nowhere"):
        await _compute(coordinator, _roots(nowhere=5.0))


async def test_a_broken_where_clause_names_the_root(coordinator: Any) -> None:
    with pytest.raises(PermanentError, match=r"subset root customers: .*no_such_column"):
        await _compute(coordinator, _roots(customers="no_such_column > 1"))
