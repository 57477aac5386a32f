"""The migration runner against the real PostgreSQL: discovery, order, checksums, failures,
concurrency, seeds, and the external-command mode.

Every database and role made here starts with the session's `db_prefix`, so the session fixture
drops whatever a failing test leaves behind; each test drops its own as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, quote_literal, with_database
from pipelines.data import sqlscript
from pipelines.data.migrations import (
    LOCK_KEY,
    SEED_HISTORY,
    CommandFailed,
    MigrationType,
    command_environment,
    discover,
    migrate,
    run_command,
)

BY = "ephem:test"


def _write(directory: Path, name: str, sql: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(sql)
    return path


async def _fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _exists(url: str, table: str) -> bool:
    rows = await _fetch(url, "SELECT to_regclass($1) IS NOT NULL AS found", table)
    return bool(rows[0]["found"])


async def _history(url: str, table: str = "ephem_schema_history") -> list[tuple[object, ...]]:
    rows = await _fetch(url, f"SELECT script, type, version, success FROM {table} "
                             "ORDER BY installed_rank")
    return [tuple(r) for r in rows]


async def _new_database(admin_url: str, name: str, *, owner: str | None = None) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        owned = f" OWNER {quote_ident(owner)}" if owner else ""
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}{owned}")
    finally:
        await conn.close()


async def _drop(admin_url: str, name: str, *, role: bool = False) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        if role:
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(name)}")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def shared_db(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    """One database for the module: creating and dropping one per test costs half a second."""
    name = f"{db_prefix}mig_{uuid.uuid4().hex[:8]}"
    await _new_database(pg_admin_url, name)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        await _drop(pg_admin_url, name)


@pytest.fixture
async def db(shared_db: str) -> str:
    """A URL whose search_path is a fresh, empty schema of the shared database: the history
    table and everything a test migrates land there."""
    schema = f"s_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(shared_db))
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    parts = urlsplit(shared_db)
    query = "&".join(q for q in (parts.query, f"search_path={schema}") if q)
    return urlunsplit(parts._replace(query=query))


PASSWORD = "Sup3r-S3cret-" + uuid.uuid4().hex[:8]
NOWHERE = f"postgresql://someone:{PASSWORD}@127.0.0.1:1/nowhere"  # no server listens there


@pytest.fixture(scope="module")
async def owned_db(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    """A database owned by a login role of the same name, as the data phase makes them; its URL
    with that role's password. Shared by the module's tests (they make different tables)."""
    name = f"{db_prefix}mig_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        await conn.execute(f"CREATE ROLE {quote_ident(name)} LOGIN "
                           f"PASSWORD {quote_literal(PASSWORD)}")
    finally:
        await conn.close()
    await _new_database(pg_admin_url, name, owner=name)
    try:
        yield with_database(pg_admin_url, name, user=name, password=PASSWORD)
    finally:
        await _drop(pg_admin_url, name, role=True)


# --------------------------------------------------------------------------- discovery


def test_discovery_orders_versions_numerically_then_repeatables(tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    for name in ("V10__ten.sql", "V2__two.sql", "V1__one.sql", "V1_1__one_point_one.sql",
                 "R__b_views.sql", "R__a_functions.sql", "V1.2__one_point_two.sql"):
        _write(loc, name, f"-- {name}\n")
    _write(loc / "later", "V3__nested.sql", "SELECT 3;\n")
    _write(loc, "README.md", "not a migration")

    found = discover([loc])
    assert [m.script for m in found] == [
        "V1__one.sql", "V1_1__one_point_one.sql", "V1.2__one_point_two.sql", "V2__two.sql",
        "V3__nested.sql", "V10__ten.sql", "R__a_functions.sql", "R__b_views.sql"]
    one_one = found[1]
    assert one_one.version == "1.1"
    assert one_one.description == "one point one"
    assert one_one.type is MigrationType.SQL
    assert one_one.checksum == hashlib.sha256(b"-- V1_1__one_point_one.sql\n").hexdigest()
    assert found[-1].type is MigrationType.REPEATABLE
    assert found[-1].version is None
    assert found[-1].description == "b views"


def test_discovery_merges_locations(tmp_path: Path) -> None:
    _write(tmp_path / "a", "V2__from_a.sql", "")
    _write(tmp_path / "b", "V1__from_b.sql", "")
    assert [m.script for m in discover([tmp_path / "a", tmp_path / "b"])] == [
        "V1__from_b.sql", "V2__from_a.sql"]


def test_discovery_refuses_duplicates_and_unknown_names(tmp_path: Path) -> None:
    _write(tmp_path / "a", "V1__first.sql", "")
    _write(tmp_path / "a", "V1_0__same_version.sql", "")  # 1.0 is 1
    _write(tmp_path / "a", "create_tables.sql", "")
    _write(tmp_path / "a", "v2__lower_case.sql", "")
    _write(tmp_path / "a", "R__views.sql", "")
    _write(tmp_path / "b", "R__views.sql", "")
    with pytest.raises(PermanentError) as caught:
        discover([tmp_path / "a", tmp_path / "b", tmp_path / "missing"])
    reason = caught.value.reason
    assert "duplicate version 1: a/V1_0__same_version.sql, a/V1__first.sql" in reason
    assert "duplicate repeatable description 'views': a/R__views.sql, b/R__views.sql" in reason
    assert "a/create_tables.sql: not a migration file name" in reason
    assert "a/v2__lower_case.sql: not a migration file name" in reason
    assert f"{tmp_path / 'missing'} is missing" in reason


@pytest.mark.parametrize(("script", "texts"), [
    ("SELECT 1; SELECT 2", ["SELECT 1;", " SELECT 2"]),
    ("-- a; comment\n/* b; /* nested; */ c; */ SELECT ';', \"x;\", E'\\';' ;",
     ["-- a; comment\n/* b; /* nested; */ c; */ SELECT ';', \"x;\", E'\\';' ;"]),
    ("DO $body$ BEGIN PERFORM 1; END $body$; SELECT $$;$$;",
     ["DO $body$ BEGIN PERFORM 1; END $body$;", " SELECT $$;$$;"]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true "
     "THEN 1 END; SELECT 2; END; SELECT 3;",
     ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true "
      "THEN 1 END; SELECT 2; END;", " SELECT 3;"]),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); SELECT $1, a$b$c;",
     ["CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b);", " SELECT $1, a$b$c;"]),
    ("BEGIN; SELECT 1; COMMIT;", ["BEGIN;", " SELECT 1;", " COMMIT;"]),
    ("  -- only a comment\n ;; ", []),
    ("SELECT 1;;\n; SELECT 2;", ["SELECT 1;", " SELECT 2;"]),
])
def test_script_splitting_follows_psql(script: str, texts: list[str]) -> None:
    assert [s.text for s in sqlscript.split(script)] == texts


def test_identifier_characters_are_postgresql_s() -> None:
    """The identifier classes, written as what they exclude, are PostgreSQL's: ASCII letters
    and `_` first, digits and `$` after, and anything outside ASCII anywhere."""
    points = [*range(0x800), 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF]
    for point in points:
        char = chr(point)
        start = char == "_" or (char.isascii() and char.isalpha()) or not char.isascii()
        part = start or char in "$0123456789"
        assert bool(sqlscript._WORD.fullmatch(char)) == start, hex(point)
        assert bool(sqlscript._WORD.fullmatch("a" + char)) == part, hex(point)
        assert bool(sqlscript._DOLLAR.fullmatch(f"${char}$")) == start, hex(point)
        assert bool(sqlscript._DOLLAR.fullmatch(f"$a{char}$")) == (part and char != "$"), \
            hex(point)


@pytest.mark.parametrize(("script", "message"), [
    ("SELECT 1;\nSELECT 'open", "line 2: unterminated quoted string"),
    ("SELECT 1;\n\nDO $x$ BEGIN", "line 3: unterminated dollar-quoted string"),
    ("/* never closed", "line 1: unterminated /* comment"),
])
def test_script_splitting_names_the_line_of_an_unterminated_quote(script: str,
                                                                   message: str) -> None:
    with pytest.raises(sqlscript.ScriptError, match=re.escape(message)):
        sqlscript.split(script)


# --------------------------------------------------------------------------- migrate


async def test_applies_in_order_then_a_second_run_applies_nothing(owned_db: str,
                                                                   tmp_path: Path) -> None:
    db = owned_db  # a fresh database owned by the environment's role, as in production
    loc = tmp_path / "sql"
    _write(loc, "V10__add_total.sql", "ALTER TABLE orders ADD COLUMN total int;\n")
    _write(loc, "V2__add_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY);\n")
    _write(loc, "V1__schema.sql", "CREATE SCHEMA shop;\n")  # the owner may
    _write(loc, "R__order_view.sql",
           "CREATE OR REPLACE VIEW order_totals AS SELECT id, total FROM orders;\n")
    said: list[str] = []

    async def emit(line: str) -> None:
        said.append(line)

    first = await migrate(db, discover([loc]), installed_by=BY, emit=emit)
    assert first.applied == ["V1__schema.sql", "V2__add_orders.sql", "V10__add_total.sql",
                             "R__order_view.sql"]
    assert first.already_applied == 0
    assert [line.rsplit(" (", 1)[0] for line in said] == [
        "V1 schema", "V2 add orders", "V10 add total", "R order view"]
    assert all(line.endswith(" ms)") for line in said)
    assert await _history(db) == [
        ("V1__schema.sql", "SQL", "1", True), ("V2__add_orders.sql", "SQL", "2", True),
        ("V10__add_total.sql", "SQL", "10", True),
        ("R__order_view.sql", "REPEATABLE", None, True)]
    row = (await _fetch(db, "SELECT * FROM ephem_schema_history WHERE version = '2'"))[0]
    assert row["installed_by"] == BY
    assert row["description"] == "add orders"
    assert row["checksum"] == hashlib.sha256((loc / "V2__add_orders.sql").read_bytes()).hexdigest()
    assert row["execution_time_ms"] >= 0
    assert row["installed_on"] is not None

    said.clear()
    second = await migrate(db, discover([loc]), installed_by=BY, emit=emit)
    assert second.applied == []
    assert second.already_applied == 4
    assert said == []
    assert len(await _history(db)) == 4


async def test_repeatables_run_after_versioned_and_again_only_when_changed(
        db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__items.sql", "CREATE TABLE items (id int, price int);\n")
    view = _write(loc, "R__cheap_items.sql",
                  "CREATE OR REPLACE VIEW cheap AS SELECT id FROM items WHERE price < 10;\n")
    await migrate(db, discover([loc]), installed_by=BY)

    unchanged = await migrate(db, discover([loc]), installed_by=BY)
    assert unchanged.applied == []

    view.write_text("CREATE OR REPLACE VIEW cheap AS SELECT id FROM items WHERE price < 5;\n")
    _write(loc, "V2__more.sql", "INSERT INTO items VALUES (1, 7), (2, 3);\n")
    changed = await migrate(db, discover([loc]), installed_by=BY)
    assert changed.applied == ["V2__more.sql", "R__cheap_items.sql"]
    assert changed.already_applied == 1
    assert [r["id"] for r in await _fetch(db, "SELECT id FROM cheap")] == [2]
    assert [h[0] for h in await _history(db)] == [
        "V1__items.sql", "R__cheap_items.sql", "V2__more.sql", "R__cheap_items.sql"]


async def test_a_version_merged_late_is_applied_after_newer_ones(db: str,
                                                                 tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__a.sql", "CREATE TABLE a (id int);\n")
    _write(loc, "V3__c.sql", "CREATE TABLE c (id int);\n")
    await migrate(db, discover([loc]), installed_by=BY)
    _write(loc, "V2__b.sql", "CREATE TABLE b (id int);\n")
    late = await migrate(db, discover([loc]), installed_by=BY)
    assert late.applied == ["V2__b.sql"]
    assert late.already_applied == 2
    assert await _exists(db, "b")


async def test_an_applied_file_that_changed_is_refused_before_anything_runs(
        db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    v1 = _write(loc, "V1__accounts.sql", "CREATE TABLE accounts (id int);\n")
    await migrate(db, discover([loc]), installed_by=BY)
    applied_sum = hashlib.sha256(v1.read_bytes()).hexdigest()

    v1.write_text("CREATE TABLE accounts (id bigint);\n")
    edited_sum = hashlib.sha256(v1.read_bytes()).hexdigest()
    _write(loc, "V2__invoices.sql", "CREATE TABLE invoices (id int);\n")
    _write(loc, "R__view.sql", "CREATE VIEW v AS SELECT 1 AS one;\n")
    with pytest.raises(PermanentError) as caught:
        await migrate(db, discover([loc]), installed_by=BY)
    reason = caught.value.reason
    assert "V1__accounts.sql" in reason
    assert f"checksum applied {applied_sum}, file {edited_sum}" in reason
    assert not await _exists(db, "invoices")
    assert not await _exists(db, "v")
    assert await _history(db) == [("V1__accounts.sql", "SQL", "1", True)]


async def test_a_failure_names_file_and_line_keeps_earlier_work_and_is_retried(
        db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__customers.sql", "CREATE TABLE customers (id int PRIMARY KEY);\n")
    v2 = _write(loc, "V2__add_orders.sql",
                "CREATE TABLE orders (id int PRIMARY KEY);\n"
                "INSERT INTO orders VALUES (1);\n"
                "INSERT INTO order_lines SELECT id FROM orders;\n"
                "CREATE INDEX orders_id ON orders (id);\n")
    _write(loc, "V3__later.sql", "CREATE TABLE later (id int);\n")
    with pytest.raises(PermanentError) as caught:
        await migrate(db, discover([loc]), installed_by=BY)
    assert caught.value.reason.startswith("V2__add_orders.sql, line 3: relation \"order_lines\" "
                                          "does not exist (42P01)")
    assert await _exists(db, "customers")
    assert not await _exists(db, "orders")  # nothing of V2 is left
    assert not await _exists(db, "later")  # nothing after it ran
    assert await _history(db) == [("V1__customers.sql", "SQL", "1", True),
                                  ("V2__add_orders.sql", "SQL", "2", False)]

    v2.write_text(v2.read_text().replace("order_lines", "customers"))
    fixed = await migrate(db, discover([loc]), installed_by=BY)
    assert fixed.applied == ["V2__add_orders.sql", "V3__later.sql"]
    assert fixed.already_applied == 1
    assert [r["id"] for r in await _fetch(db, "SELECT id FROM customers")] == [1]
    assert [h[3] for h in await _history(db)] == [True, False, True, True]


async def test_an_error_without_a_position_names_the_statements_line(
        db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__users.sql",
           "CREATE TABLE users (id int PRIMARY KEY);\n"
           "\n"
           "INSERT INTO users VALUES (1);\n"
           "-- the same row again\n"
           "INSERT INTO users\n"
           "  VALUES (1);\n")
    with pytest.raises(PermanentError) as caught:
        await migrate(db, discover([loc]), installed_by=BY)
    reason = caught.value.reason
    assert reason.startswith("V1__users.sql, statement at line 5 (`INSERT INTO users`): "
                             "duplicate key value violates unique constraint")
    assert "(23505)" in reason


async def test_a_deadlock_or_similar_failure_is_temporary(db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__busy.sql",
           "DO $$ BEGIN RAISE EXCEPTION 'try again' USING ERRCODE = '40P01'; END $$;\n")
    with pytest.raises(TemporaryError, match=r"V1__busy.sql, statement at line 1 .*try again"):
        await migrate(db, discover([loc]), installed_by=BY)


async def test_files_psql_accepts_apply_including_their_own_begin_commit(
        db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__routines.sql",
           "BEGIN;\n"
           "CREATE TABLE notes (body text);\n"
           "INSERT INTO notes VALUES ('semi; colon'), (E'it\\'s; here'), ($q$dollar; $q$);\n"
           "CREATE FUNCTION note_count() RETURNS bigint LANGUAGE plpgsql AS $$\n"
           "BEGIN\n  RETURN (SELECT count(*) FROM notes);\nEND;\n$$;\n"
           "CREATE FUNCTION doubled(x int) RETURNS int LANGUAGE sql\n"
           "BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN x * 2 ELSE 0 END;\nEND;\n"
           "COMMIT;\n")
    await migrate(db, discover([loc]), installed_by=BY)
    rows = await _fetch(db, "SELECT note_count() AS n, doubled(4) AS d")
    assert (rows[0]["n"], rows[0]["d"]) == (3, 8)

    # Its COMMIT is skipped: a later failure in the file undoes everything before it.
    _write(loc, "V2__half.sql", "BEGIN;\nCREATE TABLE half (id int);\nCOMMIT;\nSELECT 1/0;\n")
    with pytest.raises(PermanentError, match=r"V2__half.sql, statement at line 4"):
        await migrate(db, discover([loc]), installed_by=BY)
    assert not await _exists(db, "half")


async def test_session_settings_do_not_leak_into_the_next_migration(
        db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__elsewhere.sql", "CREATE SCHEMA other;\nSET search_path = other;\n")
    _write(loc, "V2__table.sql", "CREATE TABLE placed (id int);\n")
    await migrate(db, discover([loc]), installed_by=BY)
    assert await _exists(db, "placed")  # in the URL's search_path, not in `other`
    assert not await _exists(db, "other.placed")
    assert len(await _history(db)) == 2


async def test_concurrent_runs_apply_each_migration_once(db: str, tmp_path: Path) -> None:
    loc = tmp_path / "sql"
    _write(loc, "V1__log.sql", "CREATE TABLE log (n int);\n")
    _write(loc, "V2__entry.sql", "INSERT INTO log VALUES (1);\n")
    _write(loc, "R__count.sql", "INSERT INTO log VALUES (2);\n")
    migrations = discover([loc])

    # Hold the run lock ourselves until both runs are waiting for it, so they overlap.
    holder = await asyncpg.connect(asyncpg_dsn(db))
    waiting = [asyncio.Event(), asyncio.Event()]

    def emitter(ready: asyncio.Event) -> Callable[[str], Awaitable[None]]:
        async def emit(line: str) -> None:
            if line.startswith("waiting for another migration run"):
                ready.set()
        return emit

    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        runs = [asyncio.create_task(migrate(db, migrations, installed_by=f"run {i}",
                                            emit=emitter(waiting[i]))) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in waiting)), timeout=10)
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        results = await asyncio.gather(*runs)
    finally:
        await holder.close()

    applied = sorted(s for r in results for s in r.applied)
    assert applied == ["R__count.sql", "V1__log.sql", "V2__entry.sql"]
    assert sorted(r.already_applied for r in results) == [0, 3]
    assert sorted(r["n"] for r in await _fetch(db, "SELECT n FROM log")) == [1, 2]
    assert len(await _history(db)) == 3


async def test_seeds_have_their_own_history(db: str, tmp_path: Path) -> None:
    schema, seeds = tmp_path / "schema", tmp_path / "seeds"
    _write(schema, "V1__products.sql", "CREATE TABLE products (name text);\n")
    _write(seeds, "V1__demo_products.sql", "INSERT INTO products VALUES ('kettle');\n")
    _write(seeds, "R__featured.sql", "DELETE FROM products WHERE name = 'lamp';\n"
                                     "INSERT INTO products VALUES ('lamp');\n")

    assert (await migrate(db, discover([schema]), installed_by=BY)).applied == [
        "V1__products.sql"]
    seeded = await migrate(db, discover([seeds]), history_table=SEED_HISTORY, installed_by=BY)
    assert seeded.applied == ["V1__demo_products.sql", "R__featured.sql"]
    assert await _history(db) == [("V1__products.sql", "SQL", "1", True)]
    assert await _history(db, SEED_HISTORY) == [
        ("V1__demo_products.sql", "SQL", "1", True), ("R__featured.sql", "REPEATABLE", None, True)]
    again = await migrate(db, discover([seeds]), history_table=SEED_HISTORY, installed_by=BY)
    assert again.applied == []
    assert sorted(r["name"] for r in await _fetch(db, "SELECT name FROM products")) == [
        "kettle", "lamp"]


async def test_an_unreachable_server_is_temporary_and_hides_the_password() -> None:
    with pytest.raises(TemporaryError) as caught:
        await migrate(NOWHERE, [], installed_by=BY)
    assert "127.0.0.1:1/nowhere" in caught.value.reason
    assert PASSWORD not in caught.value.reason


# --------------------------------------------------------------------------- command mode


TOOL = """
import asyncio, os, sys
import asyncpg

async def main():
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    await conn.execute("CREATE TABLE made_by_tool (id int)")
    await conn.close()
    for var in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
        print(var, os.environ[var])
    print("password given:", bool(os.environ["PGPASSWORD"]))

asyncio.run(main())
"""


async def test_command_runs_with_the_database_url_and_libpq_variables(owned_db: str) -> None:
    said: list[str] = []

    async def emit(line: str) -> None:
        said.append(line)

    out = await run_command([sys.executable, "-c", TOOL], dsn=owned_db, timeout=60, emit=emit)
    env = command_environment(owned_db)
    assert await _exists(owned_db, "made_by_tool")
    assert out.splitlines() == [f"PGHOST {env['PGHOST']}", f"PGPORT {env['PGPORT']}",
                                f"PGDATABASE {env['PGDATABASE']}", f"PGUSER {env['PGUSER']}",
                                "password given: True"]
    assert env["PGPASSWORD"] == PASSWORD
    assert env["PGUSER"] == env["PGDATABASE"]
    assert said[0] == f"running {Path(sys.executable).name}"
    assert all(PASSWORD not in line for line in said)


FAILING_TOOL = """
import os, sys
for i in range(1, 31):
    print(f"step {i}")
print("connecting to", os.environ["DATABASE_URL"])
print("PGPASSWORD is", os.environ["PGPASSWORD"], file=sys.stderr)
print("error: migration 0042 failed", file=sys.stderr)
sys.exit(3)
"""


async def test_a_failing_command_reports_its_output_tail_without_the_password(
        owned_db: str) -> None:
    with pytest.raises(CommandFailed) as caught:
        await run_command([sys.executable, "-c", FAILING_TOOL], dsn=owned_db, timeout=60)
    reason = caught.value.reason
    assert reason.startswith(f"migration command {Path(sys.executable).name} exited with code 3")
    assert caught.value.returncode == 3
    assert reason.endswith("PGPASSWORD is ***\nerror: migration 0042 failed")
    assert "step 30" in reason
    assert "step 9\n" not in reason  # only the last lines
    assert "connecting to postgresql://" in reason
    assert PASSWORD not in reason
    assert PASSWORD not in caught.value.output


async def test_a_command_past_its_deadline_is_stopped() -> None:
    script = "echo applying; exec sleep 30"
    with pytest.raises(PermanentError) as caught:
        await run_command(["sh", "-c", script], dsn=NOWHERE, timeout=0.5)
    assert caught.value.reason == "sh timed out after 0.5 s; last lines:\napplying"


async def test_a_missing_command_is_named() -> None:
    with pytest.raises(PermanentError, match="ephem-missing-migrator: executable not found"):
        await run_command(["ephem-missing-migrator", "up"], dsn=NOWHERE, timeout=5)
