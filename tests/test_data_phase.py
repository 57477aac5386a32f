"""The data phase's database and role, on the real local PostgreSQL server.

Every database and role made here starts with the session's `db_prefix`, so the session fixture
drops whatever a failing test leaves behind.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import text

from bot.config import Blueprint
from bot.domain import DataMode, DataRequest, PhaseName, ReleaseSet
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, quote_literal, with_database
from bot.ports import OutcomeKind, RecordedEvents
from bot.store import Store
from pipelines.base import PhaseContext
from pipelines.data.postgres import DatabasePhase
from pipelines.runner import Runner
from tests.phases import blueprint, make_env, new_job

KEY = b"test-secret-key"


def _ctx(env_id: int, name: str, emitted: list[str] | None = None) -> PhaseContext:
    said = emitted if emitted is not None else []

    async def emit(detail: str) -> None:
        said.append(detail)

    return PhaseContext(
        env_id=env_id, name=name, owner_id="U1", release_set=ReleaseSet({}),
        data=DataRequest(DataMode.SEED), blueprint=Blueprint(), outputs={}, emit=emit,
        secret_key=KEY,
    )


def _verifies(verifier: str, password: str) -> bool:
    """Does a stored SCRAM-SHA-256 verifier accept `password`? (RFC 5802: StoredKey check)"""
    method, _, rest = verifier.partition("$")
    assert method == "SCRAM-SHA-256"
    params, _, keys = rest.partition("$")
    iterations, _, salt = params.partition(":")
    stored_key = keys.partition(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                                 int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)


@asynccontextmanager
async def _admin(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        yield conn
    finally:
        await conn.close()


async def _fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
def phase(pg_admin_url: str, db_prefix: str) -> DatabasePhase:
    return DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix)


@pytest.fixture
async def cleanup(phase: DatabasePhase) -> AsyncIterator[list[PhaseContext]]:
    """Contexts appended here are destroyed after the test, passed or not."""
    made: list[PhaseContext] = []
    yield made
    for ctx in made:
        await phase.destroy(ctx)


async def test_apply_creates_a_database_and_role_reachable_with_the_derived_password(
    phase: DatabasePhase, pg_admin_url: str, db_prefix: str, cleanup: list[PhaseContext]
) -> None:
    emitted: list[str] = []
    ctx = _ctx(1, "pr-142", emitted)
    cleanup.append(ctx)
    result = await phase.apply(ctx)

    db = f"{db_prefix}pr_142"
    password = ctx.derive_secret("db-password")
    assert result.outputs == {"host": phase.host, "port": phase.port, "database": db, "user": db,
                              "data": "seed", "migrations": [], "seconds": {}}
    assert password not in repr(result.outputs) and password not in result.summary
    url = result.secrets["database_url"]
    assert password in url
    assert await _fetchval(url, "SELECT current_user || '@' || current_database()") == f"{db}@{db}"
    assert await _fetchval(pg_admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database "
                           "WHERE datname = $1", db) == db
    verifier = await _fetchval(pg_admin_url, "SELECT rolpassword FROM pg_authid "
                               "WHERE rolname = $1", db)
    assert isinstance(verifier, str)
    assert _verifies(verifier, password)
    assert not _verifies(verifier, password[:-1] + "x")
    assert any("creating database" in d for d in emitted)


async def test_apply_twice_keeps_the_same_database_and_password(
    phase: DatabasePhase, pg_admin_url: str, cleanup: list[PhaseContext]
) -> None:
    ctx = _ctx(2, "twice")
    cleanup.append(ctx)
    first = await phase.apply(ctx)
    # Someone changed the password behind Ephem's back; re-applying restores the derived one.
    db = first.outputs["database"]
    async with _admin(pg_admin_url) as conn:
        await conn.execute(f"ALTER ROLE {quote_ident(db)} PASSWORD {quote_literal('other')}")
    second = await phase.apply(ctx)

    assert second.outputs == first.outputs
    assert second.secrets == first.secrets
    verifier = await _fetchval(pg_admin_url, "SELECT rolpassword FROM pg_authid "
                               "WHERE rolname = $1", db)
    assert isinstance(verifier, str) and _verifies(verifier, ctx.derive_secret("db-password"))
    assert await _fetchval(second.secrets["database_url"], "SELECT 1") == 1


async def test_another_environments_role_cannot_connect(
    phase: DatabasePhase, cleanup: list[PhaseContext]
) -> None:
    a, b = _ctx(3, "env-a"), _ctx(4, "env-b")
    cleanup += [a, b]
    res_a, res_b = await phase.apply(a), await phase.apply(b)
    b_role, b_password = res_b.outputs["user"], b.derive_secret("db-password")
    into_a = with_database(res_b.secrets["database_url"], res_a.outputs["database"],
                           user=b_role, password=b_password)

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await _fetchval(into_a, "SELECT 1")
    assert await _fetchval(res_a.secrets["database_url"], "SELECT 1") == 1  # its own role can


async def test_destroy_with_an_open_connection_and_destroy_twice(
    phase: DatabasePhase, pg_admin_url: str
) -> None:
    ctx = _ctx(5, "busy")
    result = await phase.apply(ctx)
    db = result.outputs["database"]
    held = await asyncpg.connect(asyncpg_dsn(result.secrets["database_url"]))
    try:
        await phase.destroy(ctx)
        assert held.is_closed() or not await _alive(held)
    finally:
        held.terminate()
    assert await _fetchval(pg_admin_url, "SELECT count(*) FROM pg_database WHERE datname = $1",
                           db) == 0
    assert await _fetchval(pg_admin_url, "SELECT count(*) FROM pg_roles WHERE rolname = $1",
                           db) == 0
    await phase.destroy(ctx)  # already gone: fine
    await phase.destroy(_ctx(6, "never-applied"))


async def test_unreachable_server_is_temporary(db_prefix: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    phase = DatabasePhase(admin_url=f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres",
                          prefix=db_prefix)
    with pytest.raises(TemporaryError, match=f"127.0.0.1:{port}") as caught:
        await phase.apply(_ctx(7, "nowhere"))
    assert "hunter2" not in str(caught.value)


async def test_missing_privileges_are_permanent_and_name_no_password(
    pg_admin_url: str, db_prefix: str
) -> None:
    weak = f"{db_prefix}weak_admin"
    async with _admin(pg_admin_url) as conn:
        await conn.execute(f"CREATE ROLE {quote_ident(weak)} LOGIN")
    phase = DatabasePhase(admin_url=with_database(pg_admin_url, "postgres", user=weak),
                          prefix=db_prefix)
    ctx = _ctx(8, "denied")
    with pytest.raises(PermanentError, match="refused: permission denied") as caught:
        await phase.apply(ctx)
    assert ctx.derive_secret("db-password") not in str(caught.value)


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def test_credentials_are_said_again_without_being_stored(
    store: Store, pg_admin_url: str, db_prefix: str
) -> None:
    """`Runner.credentials` derives the owner's URL again: the one delivered at apply time,
    nowhere in the store, and nothing before the phase has applied."""
    env_id = await make_env(store, "creds-1")
    phase = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix)
    events = RecordedEvents()
    runner = Runner(store=store, phases={PhaseName.DATA: phase}, blueprint=blueprint(),
                    events=events, secret_key=KEY)
    assert await runner.credentials(env_id) == {}

    outcome = await runner(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    again = await runner.credentials(env_id)
    url = again["data"]["database_url"]
    assert events.credentials == [(env_id, PhaseName.DATA)]
    assert await _fetchval(url, "SELECT current_user") == phase.database_name("creds-1")
    password = url.partition("://")[2].partition("@")[0].partition(":")[2]
    async with store.transaction() as s:
        dumped = (await s.execute(text(
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM environments) t"))).scalar()
    assert password and password not in str(dumped)
