"""Clones of a golden database, adoption by the environment's role, the warm pool and reset — on
the real local PostgreSQL (and, for `file_copy_method = clone`, the embedded PostgreSQL 18).

Every database and role made here starts with `{db_prefix}cl_`; the module's fixture drops them
all at the end, passed or failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import TypeVar, cast

import asyncpg
import pytest
import yaml

from bot.embedded import embedded_postgres
from bot.errors import PermanentError
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data.clone import (
    EXISTING,
    FILE_COPY,
    FILE_COPY_CLONE,
    WAL_LOG,
    WarmPool,
    adopt,
    clone_database,
    clone_method,
    filesystem_of,
    reset_database,
)
from tests.conftest import admin

TABLES = ("app.customers", "public.orders")
ROWS = {"app.customers": 40, "public.orders": 120}
T = TypeVar("T")
PASSWORD = "env-password"  # a test role's, on a trust-auth test server

GOLDEN_SQL = """
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('ok', 'meh');
CREATE DOMAIN app.positive AS integer CHECK (VALUE > 0);
CREATE TYPE app.pair AS (a integer, b integer);
CREATE TYPE app.span AS RANGE (subtype = integer);
CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL, mood app.mood);
CREATE TABLE public.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES app.customers,
    qty app.positive NOT NULL);
CREATE INDEX orders_customer ON public.orders (customer_id);
CREATE SEQUENCE public.invoice_no;
CREATE VIEW public.order_totals AS
    SELECT customer_id, sum(qty) AS qty FROM public.orders GROUP BY customer_id;
CREATE MATERIALIZED VIEW app.busy AS SELECT customer_id FROM public.order_totals WHERE qty > 10;
CREATE FUNCTION public.total_qty() RETURNS bigint LANGUAGE sql
    AS $$ SELECT sum(qty) FROM public.orders $$;
CREATE PROCEDURE app.noop() LANGUAGE sql AS $$ SELECT 1 $$;
INSERT INTO app.customers (name, mood)
    SELECT 'customer ' || i, CASE WHEN i % 2 = 0 THEN 'ok' ELSE 'meh' END::app.mood
      FROM generate_series(1, 40) i;
INSERT INTO public.orders (customer_id, qty)
    SELECT 1 + i % 40, 1 + i % 7 FROM generate_series(1, 120) i;
SELECT nextval('public.invoice_no') FROM generate_series(1, 3);
REFRESH MATERIALIZED VIEW app.busy;
"""


async def _fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _counts(url: str, database: str) -> dict[str, int]:
    conn = await asyncpg.connect(with_database(url, database))
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()


async def _make_golden(url: str, name: str, *, builder: str) -> None:
    """A small golden database: a couple of tables with rows, a sequence, a view, a function and
    some types, one table owned by a second role; then marked template, no connections."""
    await admin(url, f"CREATE DATABASE {quote_ident(name)}")
    await admin(with_database(url, name), GOLDEN_SQL,
                   "CREATE TABLE public.audit (at timestamptz DEFAULT now())",
                   f"ALTER TABLE public.audit OWNER TO {quote_ident(builder)}")
    await admin(url, f"ALTER DATABASE {quote_ident(name)} "
                        "WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")


async def _drop_all(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for (name,) in await conn.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix):
            await conn.execute(f"ALTER DATABASE {quote_ident(name)} IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        for (name,) in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix):
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(name)}")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def prefix(db_prefix: str) -> str:
    return f"{db_prefix}cl_"


@pytest.fixture(scope="module")
async def golden(pg_admin_url: str, prefix: str) -> AsyncIterator[str]:
    """The golden database's name; everything `prefix`ed is dropped after the module."""
    builder = f"{prefix}builder"
    await admin(pg_admin_url, f"CREATE ROLE {quote_ident(builder)}",
                   # Something else the builder owns on the server, that adopt must not move.
                   f"CREATE DATABASE {quote_ident(prefix + 'builder_own')} "
                   f"OWNER {quote_ident(builder)}")
    name = f"{prefix}snap_demo_20260101000000"
    await _make_golden(pg_admin_url, name, builder=builder)
    try:
        yield name
    finally:
        await _drop_all(pg_admin_url, prefix)


async def _all(*calls: Awaitable[T]) -> list[T]:
    """Run concurrently; every call finishes before the first failure is raised, so none is
    still creating databases while the module's cleanup runs."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


def _name(prefix: str, what: str) -> str:
    return f"{prefix}{what}_{uuid.uuid4().hex[:6]}"


async def _role(url: str, prefix: str) -> str:
    role = _name(prefix, "env")
    await admin(url, f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '{PASSWORD}'")
    return role


def _pool(url: str, prefix: str) -> WarmPool:
    """A pool of its own per test (a fresh prefix), so one test's leftovers never count in
    another's; its members still start with the module's prefix."""
    return WarmPool(url, prefix=_name(prefix, "p") + "_")


def _as(url: str, database: str, role: str) -> str:
    return with_database(url, database, user=role, password=PASSWORD)


# --- clone_database --------------------------------------------------------------------------


async def test_clone_is_an_identical_independent_copy(pg_admin_url: str, golden: str,
                                                      prefix: str) -> None:
    target = _name(prefix, "env")
    result = await clone_database(pg_admin_url, template=golden, target=target)

    assert result.created
    size = await _fetchval(pg_admin_url, "SELECT pg_database_size($1::text)", golden)
    assert result.bytes == size
    version = await _fetchval(pg_admin_url, "SHOW server_version_num")
    assert result.strategy == (WAL_LOG if int(str(version)) >= 150000 else FILE_COPY)
    assert await _counts(pg_admin_url, target) == ROWS
    clone_url = with_database(pg_admin_url, target)
    assert await _fetchval(clone_url, "SELECT nextval('public.invoice_no')") == 4
    assert await _fetchval(clone_url, "SELECT public.total_qty()") == await _fetchval(
        clone_url, "SELECT sum(qty) FROM public.orders")

    await admin(clone_url, "DELETE FROM public.orders",
                   "INSERT INTO app.customers (name) VALUES ('only in the clone')")
    assert await _counts(pg_admin_url, target) == {"app.customers": 41, "public.orders": 0}
    # The golden database is untouched: a fresh clone has the original rows.
    again = _name(prefix, "env")
    await clone_database(pg_admin_url, template=golden, target=again)
    assert await _counts(pg_admin_url, again) == ROWS


async def test_clone_twice_is_idempotent(pg_admin_url: str, golden: str, prefix: str) -> None:
    target = _name(prefix, "env")
    first = await clone_database(pg_admin_url, template=golden, target=target)
    await admin(with_database(pg_admin_url, target), "DELETE FROM public.orders")

    second = await clone_database(pg_admin_url, template=golden, target=target)

    assert first.created
    assert not second.created
    assert second.strategy == EXISTING
    assert await _counts(pg_admin_url, target) == {"app.customers": 40, "public.orders": 0}


async def test_racing_clones_of_one_target_make_it_once(pg_admin_url: str, golden: str,
                                                        prefix: str) -> None:
    target = _name(prefix, "env")

    results = await _all(*(
        clone_database(pg_admin_url, template=golden, target=target) for _ in range(4)))

    assert sorted(r.strategy == EXISTING for r in results) == [False, True, True, True]
    assert await _counts(pg_admin_url, target) == ROWS


async def test_a_forced_strategy_is_used(pg_admin_url: str, golden: str, prefix: str) -> None:
    target = _name(prefix, "env")
    result = await clone_database(pg_admin_url, template=golden, target=target,
                                  strategy="file_copy")

    assert result.strategy in (FILE_COPY, FILE_COPY_CLONE)
    assert await _counts(pg_admin_url, target) == ROWS
    with pytest.raises(ValueError, match="strategy"):
        await clone_database(pg_admin_url, template=golden, target=target, strategy="rsync")


async def test_a_missing_golden_database_is_a_permanent_error(pg_admin_url: str,
                                                              prefix: str) -> None:
    target = _name(prefix, "env")
    with pytest.raises(PermanentError, match="does not exist"):
        await clone_database(pg_admin_url, template=_name(prefix, "nosuch"), target=target)
    assert not await _fetchval(pg_admin_url, "SELECT 1 FROM pg_database WHERE datname = $1",
                               target)


async def test_concurrent_clones_from_one_golden_database_all_succeed(
        pg_admin_url: str, golden: str, prefix: str) -> None:
    targets = [_name(prefix, "env") for _ in range(6)]

    results = await _all(*(
        clone_database(pg_admin_url, template=golden, target=t) for t in targets))

    assert all(r.created for r in results)
    for target in targets:
        assert await _counts(pg_admin_url, target) == ROWS


# --- adopt -----------------------------------------------------------------------------------

NOT_OWNED_SQL = """
SELECT 'schema ' || n.nspname FROM pg_namespace n
 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' AND n.nspowner <> $1
UNION ALL
SELECT 'relation ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('app', 'public') AND c.relowner <> $1
UNION ALL
SELECT 'routine ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('app', 'public') AND p.proowner <> $1
UNION ALL
SELECT 'type ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname IN ('app', 'public') AND t.typowner <> $1
"""


async def _not_owned_by(url: str, database: str, role: str) -> list[str]:
    conn = await asyncpg.connect(with_database(url, database))
    try:
        oid = await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", role)
        return sorted(row[0] for row in await conn.fetch(NOT_OWNED_SQL, oid))
    finally:
        await conn.close()


async def test_adopt_gives_the_role_everything_and_nobody_else_gets_in(
        pg_admin_url: str, golden: str, prefix: str) -> None:
    role = await _role(pg_admin_url, prefix)
    target = _name(prefix, "env")
    await clone_database(pg_admin_url, template=golden, target=target)
    before = await _not_owned_by(pg_admin_url, target, role)
    assert "relation customers" in before and "routine total_qty" in before

    await adopt(pg_admin_url, database=target, owner=role)
    await adopt(pg_admin_url, database=target, owner=role)  # idempotent

    assert await _not_owned_by(pg_admin_url, target, role) == []
    assert await _fetchval(
        pg_admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
        target) == role
    # Only the database's own objects changed hands: the builder keeps its other database.
    assert await _fetchval(
        pg_admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
        prefix + "builder_own") == prefix + "builder"

    conn = await asyncpg.connect(_as(pg_admin_url, target, role))
    try:
        await conn.execute("CREATE TABLE app.notes (id serial PRIMARY KEY, body text)")
        await conn.execute("ALTER TABLE public.orders ADD COLUMN note text")
        await conn.execute("INSERT INTO public.orders (customer_id, qty) VALUES (1, 2)")
        await conn.execute("INSERT INTO app.customers (name) VALUES ('new')")
        await conn.execute("REFRESH MATERIALIZED VIEW app.busy")
        await conn.execute("CALL app.noop()")
        await conn.execute("ALTER TYPE app.mood ADD VALUE 'great'")
        await conn.execute("DROP TABLE public.audit")
        assert await conn.fetchval("SELECT count(*) FROM public.order_totals") == 40
    finally:
        await conn.close()

    other = await _role(pg_admin_url, prefix)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(_as(pg_admin_url, target, other))


async def test_adopt_of_a_missing_database_is_a_permanent_error(pg_admin_url: str,
                                                                prefix: str) -> None:
    role = await _role(pg_admin_url, prefix)
    with pytest.raises(PermanentError, match="does not exist"):
        await adopt(pg_admin_url, database=_name(prefix, "nosuch"), owner=role)


# --- the warm pool ---------------------------------------------------------------------------


async def _pool_members(url: str, pool: WarmPool, template: str) -> list[tuple[str, bool, str]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT datname, datallowconn, shobj_description(oid, 'pg_database') "
            "FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
            pool.member_prefix(template))
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        await conn.close()


async def test_pool_fill_take_ready_drain(pg_admin_url: str, golden: str, prefix: str) -> None:
    pool = _pool(pg_admin_url, prefix)
    assert await pool.fill(golden, 2) == 2
    assert await pool.fill(golden, 2) == 0
    assert await pool.fill(golden, 3) == 1
    assert await pool.ready(golden) == 3

    members = await _pool_members(pg_admin_url, pool, golden)
    assert len(members) == 3
    for name, allow_connections, comment in members:
        assert re.fullmatch(re.escape(prefix) + r"p_[0-9a-f]{6}_pool_[0-9a-f]{12}_[123]", name)
        assert len(name) <= 63
        assert not allow_connections
        assert json.loads(comment) == {"pool_of": golden}

    target = _name(prefix, "env")
    assert await pool.take(golden, target)
    assert await pool.ready(golden) == 2
    assert await _counts(pg_admin_url, target) == ROWS  # connectable again, the full copy
    assert await _fetchval(pg_admin_url,
                           "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = $1", target) is None
    # A target that exists already takes nothing from the pool.
    assert not await pool.take(golden, target)
    assert await pool.ready(golden) == 2

    assert await pool.drain(golden) == 2
    assert await pool.ready(golden) == 0
    assert await _pool_members(pg_admin_url, pool, golden) == []
    assert not await pool.take(golden, _name(prefix, "env"))
    assert await _counts(pg_admin_url, target) == ROWS  # a taken clone is no longer the pool's


async def test_concurrent_fills_do_not_overshoot(pg_admin_url: str, golden: str,
                                                 prefix: str) -> None:
    pool = _pool(pg_admin_url, prefix)

    made = await _all(pool.fill(golden, 3), pool.fill(golden, 3))

    assert sum(made) == 3
    assert await pool.ready(golden) == 3
    assert await pool.drain(golden) == 3


async def test_pool_members_are_told_apart_from_look_alikes(pg_admin_url: str, golden: str,
                                                            prefix: str) -> None:
    pool = _pool(pg_admin_url, prefix)
    members = pool.member_prefix(golden)
    # An environment's database that happens to be named like a member (it allows connections).
    lookalike = f"{members}7"
    await clone_database(pg_admin_url, template=golden, target=lookalike)
    # A member a fill made but did not get to comment (it stopped in between).
    await admin(pg_admin_url, f"CREATE DATABASE {quote_ident(members + '1')} "
                                 f"TEMPLATE {quote_ident(golden)} ALLOW_CONNECTIONS false")
    assert await pool.ready(golden) == 0

    assert await pool.fill(golden, 2) == 1  # the stopped one counts, once commented

    assert await pool.ready(golden) == 2
    assert await pool.drain(golden) == 2
    assert await _counts(pg_admin_url, lookalike) == ROWS


async def test_concurrent_takes_never_share_a_clone(pg_admin_url: str, golden: str,
                                                    prefix: str) -> None:
    pool = _pool(pg_admin_url, prefix)
    assert await pool.fill(golden, 4) == 4
    targets = [_name(prefix, "env") for _ in range(5)]

    taken = await _all(*(pool.take(golden, t) for t in targets))

    assert sorted(taken) == [False, True, True, True, True]
    winners = [t for t, ok in zip(targets, taken, strict=True) if ok]
    oids = set()
    for target in winners:
        oids.add(await _fetchval(pg_admin_url,
                                 "SELECT oid FROM pg_database WHERE datname = $1", target))
        assert await _counts(pg_admin_url, target) == ROWS
    assert len(oids) == 4
    assert await pool.ready(golden) == 0


async def test_drain_without_a_template_drops_pools_of_vanished_templates(
        pg_admin_url: str, golden: str, prefix: str) -> None:
    pool = _pool(pg_admin_url, prefix)
    old = _name(prefix, "snap_old")
    await clone_database(pg_admin_url, template=golden, target=old)
    await admin(pg_admin_url, f"ALTER DATABASE {quote_ident(old)} "
                                 "WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
    assert await pool.fill(old, 2) == 2
    assert await pool.fill(golden, 1) == 1

    assert await pool.drain() == 0  # both templates still exist
    await admin(pg_admin_url, f"ALTER DATABASE {quote_ident(old)} IS_TEMPLATE false",
                   f"DROP DATABASE {quote_ident(old)}")
    assert await pool.drain() == 2

    assert await pool.ready(old) == 0
    assert await pool.ready(golden) == 1
    assert await pool.drain(golden) == 1


# --- reset -----------------------------------------------------------------------------------


async def test_reset_takes_from_the_pool_then_falls_back_to_a_clone(
        pg_admin_url: str, golden: str, prefix: str) -> None:
    role = await _role(pg_admin_url, prefix)
    env = _name(prefix, "env")
    await clone_database(pg_admin_url, template=golden, target=env)
    await adopt(pg_admin_url, database=env, owner=role)
    pool = _pool(pg_admin_url, prefix)
    assert await pool.fill(golden, 1) == 1

    async def scribble() -> asyncpg.Connection:
        """Change the data as the role, and stay connected (reset must cut the connection)."""
        conn = await asyncpg.connect(_as(pg_admin_url, env, role))
        await conn.execute("DELETE FROM public.orders")
        await conn.execute("CREATE TABLE public.scratch (x integer)")
        return conn

    held = await scribble()
    first = await reset_database(pg_admin_url, database=env, template=golden, pool=pool,
                                 owner=role)
    held.terminate()

    assert first.source == "pool" and first.clone is None
    assert await pool.ready(golden) == 0
    assert await _counts(pg_admin_url, env) == ROWS
    assert await _not_owned_by(pg_admin_url, env, role) == []
    assert not await _fetchval(with_database(pg_admin_url, env),
                               "SELECT to_regclass('public.scratch') IS NOT NULL")
    assert min(first.drop_seconds, first.create_seconds, first.adopt_seconds) >= 0
    assert first.total_seconds == pytest.approx(
        first.drop_seconds + first.create_seconds + first.adopt_seconds)

    (await scribble()).terminate()
    second = await reset_database(pg_admin_url, database=env, template=golden, pool=pool,
                                  owner=role)

    assert second.source == "clone"
    assert second.clone is not None and second.clone.created
    assert await _counts(pg_admin_url, env) == ROWS
    assert await _not_owned_by(pg_admin_url, env, role) == []
    conn = await asyncpg.connect(_as(pg_admin_url, env, role))  # the role can still get in
    await conn.close()


# --- PostgreSQL 18: file_copy_method = clone -------------------------------------------------


@pytest.fixture(scope="module")
def pg18_url() -> Iterator[str]:
    """The embedded server, when it is PostgreSQL 18 or later (file_copy_method is new in 18)."""
    with embedded_postgres() as url:
        version = asyncio.run(_fetchval(url, "SHOW server_version_num"))
        if int(str(version)) < 180000:
            pytest.fail("the embedded PostgreSQL is older than 18 (embedded-postgres>=18 is a "
                        "dependency): file_copy_method needs 18")
        yield url


async def test_file_copy_uses_clone_on_postgresql_18(pg18_url: str, prefix: str) -> None:
    builder = f"{prefix}builder"
    await admin(pg18_url, f"CREATE ROLE {quote_ident(builder)}")
    golden = f"{prefix}snap_pg18"
    await _make_golden(pg18_url, golden, builder=builder)
    target = _name(prefix, "env")

    result = await clone_database(pg18_url, template=golden, target=target, strategy="FILE_COPY")

    # copy_file_range() works on every Linux filesystem (a reflink on Btrfs/XFS, an in-kernel
    # copy elsewhere), so PostgreSQL 18 on Linux clones.
    assert result.strategy == FILE_COPY_CLONE
    assert await _counts(pg18_url, target) == ROWS
    # PostgreSQL 18 moves a range's multirange along with the range, and refuses it alone.
    role = await _role(pg18_url, prefix)
    await adopt(pg18_url, database=target, owner=role)
    assert await _not_owned_by(pg18_url, target, role) == []
    small = await clone_database(pg18_url, template=golden, target=_name(prefix, "env"))
    assert small.strategy == WAL_LOG


# --- reflink clones on a copy-on-write filesystem ------------------------------------------


def _root(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` failed: {(done.stderr or done.stdout).strip()[:300]}. "
                    "The reflink clone test makes a loop-mounted btrfs image: it needs root, "
                    "loop devices (/dev/loop*) and btrfs-progs (`apt-get install -y "
                    "btrfs-progs`; .ci/run installs it).")


@pytest.fixture(scope="module")
def btrfs_pg18(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded PostgreSQL 18 with its data directory on a loop-mounted btrfs image, as a
    production target server would be on Btrfs, XFS (reflink) or ZFS."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.fail("mkfs.btrfs is not installed: the reflink clone test needs btrfs-progs "
                    "(`apt-get install -y btrfs-progs`; .ci/run installs it)")
    work = tmp_path_factory.mktemp("btrfs")
    image, mount = work / "fs.img", work / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(512 * 2**20)
    _root("mkfs.btrfs", "-q", str(image))
    _root("mount", "-o", "loop", str(image), str(mount))
    try:
        pgdata = mount / "pgdata"
        pgdata.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import PostgresServer

            server = PostgresServer(pgdata, cleanup_mode="delete")
        try:
            yield str(server.get_uri("postgres"))
        finally:
            server._cleanup()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)


async def test_on_btrfs_postgresql_18_clones_by_reflink_at_every_size(
        btrfs_pg18: str, pg_admin_url: str, prefix: str, tmp_path: Path) -> None:
    method = await clone_method(btrfs_pg18)
    assert method.reflink and method.filesystem == "btrfs"
    assert "PostgreSQL 18, data directory " in method.reason and " on btrfs " in method.reason
    builder = f"{prefix}builder"
    await admin(btrfs_pg18, f"CREATE ROLE {quote_ident(builder)}")
    golden = f"{prefix}snap_btrfs"
    await _make_golden(btrfs_pg18, golden, builder=builder)
    target = _name(prefix, "env")

    # A small golden database would be copied with WAL_LOG anywhere else; here it is cloned.
    result = await clone_database(btrfs_pg18, template=golden, target=target)

    assert result.strategy == FILE_COPY_CLONE
    assert await _counts(btrfs_pg18, target) == ROWS
    await admin(with_database(btrfs_pg18, target), "DELETE FROM public.orders")
    again = _name(prefix, "env")
    await clone_database(btrfs_pg18, template=golden, target=again)
    assert await _counts(btrfs_pg18, again) == ROWS  # the clone shares nothing it changes

    # Elsewhere the method says why not: the version, or the filesystem.
    here = await clone_method(pg_admin_url)
    version = int(str(await _fetchval(pg_admin_url, "SHOW server_version_num"))) // 10000
    assert not here.reflink or version >= 18
    if version < 18:
        assert f"PostgreSQL {version} has no file_copy_method" in here.reason

    # `ephem doctor` shows the method and why, one line.
    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({"phases": {"data": {"server": btrfs_pg18}}}))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot.cli", "doctor"], capture_output=True,
        text=True, env={**os.environ, "EPHEM_CONFIG": str(blueprint)}, check=False, timeout=120)
    (line,) = [x for x in done.stdout.splitlines() if "clone method" in x]
    assert line.startswith("ok") and "file_copy_method = clone: a reflink copy" in line
    assert " on btrfs " in line


def test_filesystem_of_a_path_is_its_longest_mount() -> None:
    mounts = ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
              "40 22 0:39 / /srv/pg rw,relatime - btrfs /dev/loop0 rw\n"
              "41 22 0:40 / /srv/pg\\040old rw - xfs /dev/sdb rw\n")
    assert filesystem_of("/srv/pg/18/main", mounts) == ("btrfs", "/srv/pg")
    assert filesystem_of("/srv/pg old/main", mounts) == ("xfs", "/srv/pg old")
    assert filesystem_of("/srv/pgx", mounts) == ("ext4", "/")
    assert filesystem_of("/var/lib", "") == (None, "")


def test_a_pool_prefix_too_long_for_postgresql_names_is_refused(pg_admin_url: str) -> None:
    WarmPool(pg_admin_url, prefix="p" * 42)
    with pytest.raises(ValueError, match="at most 42"):
        WarmPool(pg_admin_url, prefix="p" * 43)
