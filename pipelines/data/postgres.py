"""The data phase's first part: each environment's own database and login role on a PostgreSQL
server.

Why: an environment's data must never be shared, so every environment gets a database owned by
a role of its own, with PUBLIC's CONNECT revoked so no other environment's role can get in. Both
names are the configured prefix plus the environment name (`pr-142` → `ephem_pr_142`). The
password is derived (`PhaseContext.derive_secret`), so re-applying yields the same one and nothing
secret is stored; it is sent to the server only as a SCRAM-SHA-256 verifier, so it appears in no
statement text and so in no server log either. The connection URL with the password goes to the
owner only, as a `PhaseResult` secret.

What fills the database depends on the environment's data mode:
- `none`: the schema only (the project's migrations);
- `seed`: the schema, then the seed migrations;
- `snapshot`: a clone of the newest golden database of the snapshot (from the warm pool when
  one is ready — a rename, no copy — else `CREATE DATABASE … TEMPLATE`), handed over to the
  environment's role, then the migrations newer than production on top.
Migrations run as the environment's own role, so everything they create is the environment's.
`reset_data` throws the database away and makes it again the same way.

Neighbours: `migrations` (schema and seeds), `clone` (copies and the pool), `snapshot` (golden
databases). The runner retries `TemporaryError`s and stops on `PermanentError`s.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from bot.config import MigrationsConfig, SnapshotConfig
from bot.domain import DataMode, PhaseName
from bot.errors import PermanentError
from bot.pg import quote_ident, quote_literal, with_database
from pipelines.base import PhaseContext, PhaseResult
from pipelines.data import pgconn
from pipelines.data.clone import WarmPool, adopt, clone_database
from pipelines.data.golden import latest_snapshot
from pipelines.data.migrations import (
    SEED_HISTORY,
    discover,
    migrate,
    run_command,
    with_releases,
)

_PASSWORD_PURPOSE = "db-password"  # noqa: S105 - a derivation label, not a password



def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677).

    `ALTER ROLE … PASSWORD '<verifier>'` sets the password without the server ever seeing it.
    """
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class DatabasePhase:
    """A database and a login role per environment on the server behind `admin_url`."""

    name = PhaseName.DATA

    def __init__(
        self,
        *,
        admin_url: str,
        prefix: str,
        migrations: MigrationsConfig | None = None,
        snapshots: Mapping[str, SnapshotConfig] | None = None,
        pool: WarmPool | None = None,
    ) -> None:
        self._admin_url = admin_url
        self._prefix = prefix
        self._migrations = migrations
        self._snapshots = dict(snapshots or {})
        self._pool = pool
        self.host, self.port = pgconn.server(admin_url)

    def database_name(self, env_name: str) -> str:
        """Also the role's name: `prefix` + the environment name with `-` → `_`."""
        return self._prefix + env_name.replace("-", "_")

    async def describe(self, ctx: PhaseContext) -> str:
        db = self.database_name(ctx.name)
        return f"database {db} (role {db}) on {self.host}:{self.port}"

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        db = self.database_name(ctx.name)
        password = ctx.derive_secret(_PASSWORD_PURPOSE)
        steps: dict[str, float] = {}
        outputs: dict[str, Any] = {"host": self.host, "port": self.port, "database": db,
                                   "user": db, "data": str(ctx.data)}
        async with self._admin() as conn:
            await ctx.emit(f"creating role {db}")
            await _ensure_role(conn, db, scram_verifier(password))
            if ctx.reset_data:
                await ctx.emit(f"dropping database {db} to reset it")
                await pgconn.drop_database(conn, db)
            exists = bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db))
            if ctx.data.mode is DataMode.SNAPSHOT:
                outputs["snapshot"] = await self._from_snapshot(ctx, conn, db, exists=exists,
                                                                 steps=steps)
            else:
                await ctx.emit(f"creating database {db}")
                await _ensure_database(conn, db)
        url = self._owner_url(ctx)
        applied = await self._migrate(ctx, url, steps=steps)
        outputs["migrations"] = applied
        outputs["seconds"] = {k: round(v, 3) for k, v in steps.items()}
        took = ", ".join(f"{k} {v:.1f}s" for k, v in steps.items())
        return PhaseResult(
            outputs=outputs,
            secrets={"database_url": url},
            summary=f"database {db} ({ctx.data}) on {self.host}:{self.port}"
                    + (f" — {took}" if took else ""),
        )

    async def secrets(self, ctx: PhaseContext) -> Mapping[str, str]:
        """The owner's connection URL again (`HasSecrets`): derived, never stored."""
        if not ctx.outputs.get(PhaseName.DATA):
            return {}
        return {"database_url": self._owner_url(ctx)}

    def _owner_url(self, ctx: PhaseContext) -> str:
        db = self.database_name(ctx.name)
        return with_database(self._admin_url, db, user=db,
                             password=ctx.derive_secret(_PASSWORD_PURPOSE))

    async def _from_snapshot(self, ctx: PhaseContext, conn: Any, db: str, *, exists: bool,
                             steps: dict[str, float]) -> str:
        """Make `db` a clone of the snapshot's newest golden database; returns its name."""
        name = ctx.data.snapshot or ""
        if name not in self._snapshots:
            raise PermanentError(f"snapshot `{name}` is not configured in the blueprint")
        golden = await latest_snapshot(self._admin_url, prefix=self._prefix, name=name)
        if golden is None:
            raise PermanentError(f"snapshot `{name}` has not been built yet: "
                                 f"run `ephem snapshot build {name}`")
        if exists:
            return golden.database  # made by an earlier attempt; adopt below is idempotent
        started = time.monotonic()
        await ctx.emit(f"cloning {golden.database}")
        if self._pool is not None and await self._pool.take(golden.database, db):
            steps["pool"] = time.monotonic() - started
        else:
            await clone_database(self._admin_url, template=golden.database, target=db)
            steps["clone"] = time.monotonic() - started
        started = time.monotonic()
        await adopt(self._admin_url, database=db, owner=db)
        steps["adopt"] = time.monotonic() - started
        return golden.database

    async def _migrate(self, ctx: PhaseContext, url: str, *, steps: dict[str, float]
                       ) -> list[str]:
        """Run the project's migrations (and seeds with `--data seed`) as the environment's
        role; returns what was applied."""
        cfg = self._migrations
        if cfg is None:
            return []
        started = time.monotonic()
        timeout = cfg.timeout.total_seconds()
        if cfg.kind == "command":
            assert cfg.command is not None
            command = with_releases(cfg.command, ctx.release_set.versions)
            await run_command(command, dsn=url, timeout=timeout, emit=ctx.emit,
                              env=cfg.env, pass_env=cfg.pass_env, environment=ctx.name)
            steps["migrate"] = time.monotonic() - started
            return [" ".join(command)]
        result = await migrate(url, discover(cfg.locations), installed_by="ephem",
                               emit=ctx.emit)
        applied = list(result.applied)
        steps["migrate"] = time.monotonic() - started
        if ctx.data.mode is DataMode.SEED and cfg.seed_locations:
            started = time.monotonic()
            seeded = await migrate(url, discover(cfg.seed_locations), installed_by="ephem",
                                   history_table=SEED_HISTORY, emit=ctx.emit)
            applied += seeded.applied
            steps["seed"] = time.monotonic() - started
        return applied

    async def destroy(self, ctx: PhaseContext) -> None:
        db = self.database_name(ctx.name)
        async with self._admin() as conn:
            await ctx.emit(f"dropping database {db}")
            await pgconn.drop_database(conn, db)
            await ctx.emit(f"dropping role {db}")
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(db)}")

    def _admin(self) -> AbstractAsyncContextManager[Any]:
        """An admin connection; failures arrive as Temporary/PermanentError naming the server."""
        return pgconn.connect(self._admin_url)


async def _ensure_role(conn: Any, role: str, verifier: str) -> None:
    ident, secret = quote_ident(role), quote_literal(verifier)
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        try:
            await conn.execute(f"CREATE ROLE {ident} LOGIN PASSWORD {secret}")
            return
        except asyncpg.DuplicateObjectError:
            pass  # created concurrently: set the password below
    await conn.execute(f"ALTER ROLE {ident} WITH LOGIN PASSWORD {secret}")


async def _ensure_database(conn: Any, db: str) -> None:
    ident = quote_ident(db)
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        # A non-superuser admin may only give a database to a role it is a member of.
        await conn.execute(f"GRANT {ident} TO CURRENT_USER")
    exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db)
    if not exists:
        # CREATE DATABASE cannot run inside a transaction; asyncpg runs it on its own.
        # A duplicate means another apply created it concurrently: fine.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await conn.execute(f"CREATE DATABASE {ident} OWNER {ident}")
    await conn.execute(f"ALTER DATABASE {ident} OWNER TO {ident}")
    await conn.execute(f"REVOKE ALL ON DATABASE {ident} FROM PUBLIC")
