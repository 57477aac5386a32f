"""Snapshot builds end to end on the real server: a source with a foreign-key cycle, a composite
key, unique and check constraints is linted, subsetted, masked and loaded into golden template
databases, which are then cloned (as environments get them) and compared with the source.

Every database here starts with the session's `db_prefix`; golden databases are templates, which
a plain DROP refuses, so this module's fixture un-templates and drops them at the end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.config import SnapshotConfig
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data import golden
from pipelines.data.clone import WarmPool
from pipelines.data.snapshot import (
    BuildProgress,
    SnapshotInfo,
    build_snapshot,
    latest_snapshot,
    list_snapshots,
)
from tests.snapshot_source import rules_text, write_rules

KEY = b"test-masking-key-0123456789abcdef"
TABLES = {"customers", "orders", "order_items", "products", "employees", "audit_log",
          "schema_migrations"}


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def source(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    from tests.snapshot_source import create_source

    name = f"{db_prefix}snap_source"
    url = await create_source(pg_admin_url, name)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
        try:
            rows = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                     db_prefix.replace("_", "\\_") + "%")
            for (db,) in rows:
                if db.startswith(f"{db_prefix}snap_") or db.startswith(f"{db_prefix}sc_"):
                    await golden.drop(admin, db)
        finally:
            await admin.close()


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rules")


def _config(source: str, rules: Path, **kwargs: Any) -> SnapshotConfig:
    return SnapshotConfig(source=source, rules=rules, **kwargs)


async def _clone(admin_url: str, info: SnapshotInfo, db_prefix: str) -> str:
    """A copy of the golden database, made as environments get theirs; its URL."""
    name = f"{db_prefix}sc_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(name)} "
                            f"TEMPLATE {quote_ident(info.database)}")
    finally:
        await admin.close()
    return with_database(admin_url, name)


@pytest.fixture(scope="module")
async def full(source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path
               ) -> tuple[SnapshotInfo, list[BuildProgress]]:
    """A build with no subset roots (every row), and the progress it reported."""
    seen: list[BuildProgress] = []

    async def progress(p: BuildProgress) -> None:
        seen.append(p)

    info = await build_snapshot(
        name="full", config=_config(source, write_rules(rules_dir / "full.yaml")),
        target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY, progress=progress)
    return info, seen


async def _constraints(url: str) -> dict[str, tuple[str, bool]]:
    rows = await _fetch(url, """
        SELECT conrelid::regclass::text || '.' || conname AS name,
               pg_get_constraintdef(oid) AS def, convalidated
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace""")
    return {r["name"]: (r["def"], r["convalidated"]) for r in rows}


async def _schema_objects(url: str) -> dict[str, set[str]]:
    return {
        "indexes": {r[0] for r in await _fetch(
            url, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")},
        "views": {r[0] for r in await _fetch(
            url, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")},
        "triggers": {r[0] for r in await _fetch(
            url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")},
        "types": {r[0] for r in await _fetch(
            url, "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace "
                 "AND typtype IN ('e', 'd')")},
    }


async def test_golden_database_is_a_closed_template_with_metadata(
        full: tuple[SnapshotInfo, list[BuildProgress]], pg_admin_url: str, db_prefix: str,
        source: str) -> None:
    info, _ = full
    assert info.database.startswith(f"{db_prefix}snap_full_") and len(info.database) <= 63
    (row,) = await _fetch(pg_admin_url, """
        SELECT datistemplate, datallowconn, shobj_description(oid, 'pg_database') AS comment
        FROM pg_database WHERE datname = $1""", info.database)
    assert row["datistemplate"] is True and row["datallowconn"] is False
    meta = json.loads(row["comment"])
    source_rows = sum(r[0] for r in await _fetch(source, """
        SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM orders)
             + (SELECT count(*) FROM order_items) + (SELECT count(*) FROM products)
             + (SELECT count(*) FROM employees) + (SELECT count(*) FROM audit_log)
             + (SELECT count(*) FROM schema_migrations)"""))
    assert meta["name"] == "full" and meta["tables"] == 7 and meta["rows"] == source_rows
    assert meta["source"].endswith(f"/{db_prefix}snap_source") and "@" not in meta["source"]
    assert len(meta["rules_sha256"]) == 64 and meta["bytes"] > 0 and meta["seconds"] > 0
    assert info.rows == source_rows and info.tables == 7
    listed = await list_snapshots(pg_admin_url, prefix=db_prefix, name="full")
    assert info in listed
    # Each step's time is kept with the snapshot (`ephem snapshot build` prints them, the
    # bench reads them back).
    assert [step for step, _ in meta["steps"]] == list(info.steps)  # in the order they ran
    assert {"lint", "source", "copy", "constraints"} <= set(info.steps)
    assert next(i for i in listed if i == info).steps == pytest.approx(info.steps, abs=1e-3)
    assert await latest_snapshot(pg_admin_url, prefix=db_prefix, name="full") == listed[0]
    with pytest.raises(asyncpg.PostgresError, match="not currently accepting connections"):
        await _fetch(with_database(pg_admin_url, info.database), "SELECT 1")


async def test_progress_arrives_after_every_table(
        full: tuple[SnapshotInfo, list[BuildProgress]]) -> None:
    info, seen = full
    assert [p.tables_done for p in seen] == list(range(1, len(TABLES) + 1))
    assert {p.table for p in seen} == TABLES
    assert all(p.tables_total == len(TABLES) for p in seen)
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)
    assert seen[-1].rows == info.rows and seen[-1].eta_seconds == 0
    assert all(p.rows_per_second >= 0 for p in seen)


async def test_full_copy_keeps_every_row_constraint_and_object(
        full: tuple[SnapshotInfo, list[BuildProgress]], source: str, pg_admin_url: str,
        db_prefix: str) -> None:
    clone = await _clone(pg_admin_url, full[0], db_prefix)
    for table in TABLES:
        (src,) = await _fetch(source, f"SELECT count(*) FROM {table}")
        (dst,) = await _fetch(clone, f"SELECT count(*) FROM {table}")
        assert dst[0] == src[0] > 0, table
    constraints = await _constraints(clone)
    assert constraints == await _constraints(source)
    assert all(valid for _, valid in constraints.values())
    assert any(d.startswith("FOREIGN KEY (sku, region)") for d, _ in constraints.values())
    assert await _schema_objects(clone) == await _schema_objects(source)
    # Generated columns are computed, identity and serial sequences continue after the rows.
    assert await _fetch(clone, "SELECT 1 FROM orders WHERE total <> total_cents / 100.0") == []
    (new,) = await _fetch(clone, "INSERT INTO orders (customer_id) VALUES (1) RETURNING id")
    (top,) = await _fetch(source, "SELECT max(id) FROM orders")
    assert new[0] == top[0] + 1
    (cust,) = await _fetch(clone, "INSERT INTO customers (email, full_name) "
                                  "VALUES ('x@example.com', 'X') RETURNING id")
    assert cust[0] == 201


async def test_masked_columns_change_and_joins_still_hold(
        full: tuple[SnapshotInfo, list[BuildProgress]], source: str, pg_admin_url: str,
        db_prefix: str) -> None:
    clone = await _clone(pg_admin_url, full[0], db_prefix)
    query = "SELECT id, email, full_name, favourite_order_id, created_at FROM customers"
    before = {r["id"]: r for r in await _fetch(source, query)}
    after = {r["id"]: r for r in await _fetch(clone, query)}
    assert before.keys() == after.keys()
    for cid, row in after.items():
        assert row["email"] != before[cid]["email"] and "@" in row["email"]
        assert row["full_name"] != before[cid]["full_name"]
        assert row["favourite_order_id"] == before[cid]["favourite_order_id"]  # keep
        assert row["created_at"] == before[cid]["created_at"]
    join = ("SELECT count(*) FROM orders o JOIN customers c ON c.email = o.ship_email "
            "AND c.id = o.customer_id")
    (src,) = await _fetch(source, join)
    (dst,) = await _fetch(clone, join)
    assert dst[0] == src[0] > 0  # the same email masked in two tables still joins


async def test_same_key_same_snapshot(full: tuple[SnapshotInfo, list[BuildProgress]],
                                      source: str, pg_admin_url: str, db_prefix: str,
                                      rules_dir: Path) -> None:
    again = await build_snapshot(
        name="full", config=_config(source, write_rules(rules_dir / "full.yaml")),
        target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
    assert again.database != full[0].database
    query = "SELECT id, email, full_name, contact FROM customers ORDER BY id"
    first = await _fetch(await _clone(pg_admin_url, full[0], db_prefix), query)
    second = await _fetch(await _clone(pg_admin_url, again, db_prefix), query)
    assert [tuple(r) for r in first] == [tuple(r) for r in second]


async def test_subset_build_is_consistent(source: str, pg_admin_url: str, db_prefix: str,
                                          rules_dir: Path) -> None:
    rules = write_rules(rules_dir / "subset.yaml", roots="{customers: 10%}",
                        children="[orders, order_items]")
    info = await build_snapshot(name="tenth", config=_config(source, rules, workers=3),
                                target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
    clone = await _clone(pg_admin_url, info, db_prefix)
    constraints = await _constraints(clone)
    assert constraints == await _constraints(source)  # every one exists, and validated:
    assert all(valid for _, valid in constraints.values())
    counts = {t: (await _fetch(clone, f"SELECT count(*) FROM {t}"))[0][0] for t in TABLES}
    assert 0 < counts["customers"] < 200 and 0 < counts["orders"] < 600
    assert counts["order_items"] > 0 and 0 < counts["products"] < 30
    assert counts["audit_log"] == 0 and counts["employees"] == 0  # reached by nothing
    assert counts["schema_migrations"] == 3  # a migration history is always whole
    assert sum(counts.values()) == info.rows
    # Children: every order of a kept customer that is not there only as somebody's
    # favourite's owner is kept with all its items.
    (lonely,) = await _fetch(clone, """
        SELECT count(*) FROM orders o
        WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id)""")
    (favourites,) = await _fetch(clone, "SELECT count(*) FROM customers "
                                        "WHERE favourite_order_id IS NOT NULL")
    assert lonely[0] <= favourites[0]


async def test_refuses_to_build_when_a_flagged_column_has_no_rule(
        source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    path = rules_dir / "missing.yaml"
    path.write_text(rules_text().replace("    email: email\n", ""), encoding="utf-8")
    with pytest.raises(PermanentError, match=r"(?s)no rule.*customers.*email"):
        await build_snapshot(name="missing", config=_config(source, path),
                             target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        assert await golden.databases(admin, prefix=db_prefix, name="missing") == []
    finally:
        await admin.close()


async def test_leak_check_catches_a_kept_copy_and_drops_the_database(
        source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    # `contact` kept knowingly passes the lint (its e-mails and phones are acknowledged), but
    # every third contact is the customer's email, which is masked in `email`: only the leak
    # check can see that.
    rules = write_rules(rules_dir / "leaky.yaml",
                        contact="{keep: {allow: [email, phone]}}")
    with pytest.raises(PermanentError, match="leak check") as err:
        await build_snapshot(name="leaky", config=_config(source, rules),
                             target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
    message = str(err.value)
    assert "of customers.email appear in customers.contact" in message
    emails = {r[0] for r in await _fetch(source, "SELECT email FROM customers")}
    assert not any(e in message for e in emails)  # counts, never values
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        assert await golden.databases(admin, prefix=db_prefix, name="leaky") == []
    finally:
        await admin.close()


async def test_masked_data_breaking_a_constraint_fails_the_build_cleanly(
        source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    path = rules_dir / "redacted.yaml"  # every badge becomes the same text: not unique
    path.write_text(rules_text().replace("badge: keep", "badge: redact"), encoding="utf-8")
    with pytest.raises(PermanentError, match="employees_badge_key"):
        await build_snapshot(name="redacted", config=_config(source, path),
                             target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        assert await golden.databases(admin, prefix=db_prefix, name="redacted") == []
    finally:
        await admin.close()


async def test_retention_keeps_the_newest(source: str, pg_admin_url: str, db_prefix: str,
                                          rules_dir: Path) -> None:
    rules = write_rules(rules_dir / "kept.yaml", roots="{employees: \"id < 4\"}")
    pool = WarmPool(pg_admin_url, prefix=db_prefix)
    built = []
    for _ in range(3):
        built.append(await build_snapshot(
            name="kept", config=_config(source, rules, keep=2), target_admin_url=pg_admin_url,
            prefix=db_prefix, key=KEY))
        assert await pool.fill(built[-1].database, 2) == 2
    listed = await list_snapshots(pg_admin_url, prefix=db_prefix, name="kept")
    assert [i.database for i in listed] == [built[2].database, built[1].database]
    assert await _fetch(pg_admin_url, "SELECT 1 FROM pg_database WHERE datname = $1",
                        built[0].database) == []
    # The dropped snapshot's pool went with it (the build dropped it, not a keeper).
    assert await _fetch(pg_admin_url, "SELECT datname FROM pg_database "
                                      "WHERE starts_with(datname, $1)",
                        pool.member_prefix(built[0].database)) == []
    assert await pool.ready(built[1].database) == 2


async def test_names_are_checked_before_anything_happens(
        source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    config = _config(source, write_rules(rules_dir / "names.yaml"))
    for bad in ("Main", "has space", "x" * 60, "1st"):
        with pytest.raises(PermanentError, match="snapshot name"):
            await build_snapshot(name=bad, config=config, target_admin_url=pg_admin_url,
                                 prefix=db_prefix, key=KEY)


async def test_one_build_per_name_and_leftovers_of_a_crash_are_dropped(
        source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    config = _config(source, write_rules(rules_dir / "once.yaml", roots="{employees: \"id = 1\"}"))
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        # A build that died half-way left a database without metadata behind.
        crashed = golden.family(db_prefix, "once") + "20000101000000"
        await admin.execute(f"CREATE DATABASE {quote_ident(crashed)}")
        # While another build of the name runs (holds the lock), a second one is refused.
        assert await golden.build_lock(admin, prefix=db_prefix, name="once")
        with pytest.raises(TemporaryError, match="being built already"):
            await build_snapshot(name="once", config=config, target_admin_url=pg_admin_url,
                                 prefix=db_prefix, key=KEY)
        await admin.execute("SELECT pg_advisory_unlock_all()")
        info = await build_snapshot(name="once", config=config, target_admin_url=pg_admin_url,
                                    prefix=db_prefix, key=KEY)
        assert [db for db, _ in await golden.databases(admin, prefix=db_prefix, name="once")
                ] == [info.database]
    finally:
        await admin.close()


async def test_tables_copied_in_page_ranges_are_the_same(
        full: tuple[SnapshotInfo, list[BuildProgress]], source: str, pg_admin_url: str,
        db_prefix: str, rules_dir: Path) -> None:
    # Every table split into one range of pages per copier, each range masked and written
    # by its own pool process: the same rows, masked the same, as whole-table copies.
    split = await build_snapshot(
        name="split", config=_config(source, write_rules(rules_dir / "full.yaml")),
        target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY, split_bytes=1)
    whole_db = await _clone(pg_admin_url, full[0], db_prefix)
    split_db = await _clone(pg_admin_url, split, db_prefix)
    assert split.rows == full[0].rows > 0
    (pages,) = await _fetch(source, "SELECT max(pg_relation_size(c.oid)) / 8192 "
                                    "FROM pg_class c WHERE c.relkind = 'r' "
                                    "AND c.relnamespace = 'public'::regnamespace")
    assert pages[0] >= 4  # so a table really was cut between pages holding rows
    for table in TABLES:
        query = f"SELECT t::text FROM {table} t ORDER BY 1"
        assert await _fetch(split_db, query) == await _fetch(whole_db, query), table


async def test_cancelled_mid_copy_drops_the_half_built_database(
        source: str, pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    config = _config(source, write_rules(rules_dir / "cancel.yaml"))
    seen: list[str] = []

    async def progress(p: BuildProgress) -> None:
        seen.append(p.table)
        admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
        try:  # the database exists while the build runs...
            assert len(await golden.databases(admin, prefix=db_prefix, name="cancel")) == 1
        finally:
            await admin.close()
        build.cancel()

    build = asyncio.create_task(build_snapshot(
        name="cancel", config=config, target_admin_url=pg_admin_url, prefix=db_prefix,
        key=KEY, progress=progress))
    with pytest.raises(asyncio.CancelledError):
        await build
    assert 1 <= len(seen) < len(TABLES)
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:  # ...and is gone once the build was cancelled
        assert await golden.databases(admin, prefix=db_prefix, name="cancel") == []
    finally:
        await admin.close()


async def test_the_lint_covers_every_schema_a_snapshot_copies(
        pg_admin_url: str, db_prefix: str, rules_dir: Path) -> None:
    name = f"{db_prefix}snap_other_schema"
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
        url = with_database(pg_admin_url, name)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        await conn.execute("CREATE SCHEMA crm; CREATE TABLE crm.leads (id int PRIMARY KEY, "
                           "email text); INSERT INTO crm.leads VALUES (1, 'a@b.example');"
                           "CREATE SCHEMA ops; CREATE TABLE ops.stages (id int PRIMARY KEY, "
                           "label text); INSERT INTO ops.stages VALUES (1, 'open'), (2, 'won')")
        await conn.close()
        rules = rules_dir / "public_only.yaml"
        rules.write_text("tables: {}\n", encoding="utf-8")
        with pytest.raises(PermanentError, match=r"needs rules first(.|\n)*crm\.leads\.email"):
            await build_snapshot(name="crm", config=_config(url, rules),
                                 target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
        assert await golden.databases(admin, prefix=db_prefix, name="crm") == []
        rules.write_text("tables: {crm.leads: {email: email}}\n", encoding="utf-8")
        info = await build_snapshot(name="crm", config=_config(url, rules),
                                    target_admin_url=pg_admin_url, prefix=db_prefix, key=KEY)
        assert info.rows == 3  # the lead, masked, and ops.stages, which needs no rule
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await admin.close()
