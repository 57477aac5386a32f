"""`ephem doctor`: validate the configuration and check every configured connection.

One line per check, `ok` or `FAIL` and what to do; the exit status says whether all passed.
Nothing here prints a secret: URLs are shown with their password redacted.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import asyncpg
from alembic.script import ScriptDirectory
from sqlalchemy import text

from bot.config import Blueprint, Settings
from bot.pg import asyncpg_dsn, redact, scrub
from bot.store import Store
from bot.store.migrate import alembic_config
from pipelines.data.clone import clone_method


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


async def _guard(name: str, probe: Callable[[], Awaitable[str]]) -> Check:
    try:
        return Check(name, True, await asyncio.wait_for(probe(), timeout=10))
    except TimeoutError:
        return Check(name, False, "no answer within 10 s")
    except Exception as exc:  # every failure becomes a line, never a trace
        return Check(name, False, f"{type(exc).__name__}: {scrub(str(exc))}")


async def run_checks(settings: Settings, blueprint: Blueprint, *, source: str) -> list[Check]:
    checks = [Check("blueprint", True, f"{source} is valid (project {blueprint.project})")]

    async def state_db() -> str:
        if not settings.database_url:
            raise RuntimeError("EPHEM_DATABASE_URL is not set")
        store = Store(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with store.engine.connect() as conn:
                current = (await conn.execute(
                    text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
        finally:
            await store.close()
        head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
        if current != head:
            raise RuntimeError(f"schema at {current}, code expects {head}: run `ephem db upgrade`")
        return f"{redact(settings.database_url)} (schema at {head})"

    checks.append(await _guard("state database", state_db))

    data = blueprint.phases.data
    if data is not None:
        server = data.server or settings.database_url

        async def data_server() -> str:
            conn = await asyncpg.connect(asyncpg_dsn(server))
            try:
                row = await conn.fetchrow(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                    "WHERE rolname = current_user")
            finally:
                await conn.close()
            if row is None or not (row[0] or (row[1] and row[2])):
                raise RuntimeError("the user needs CREATEDB and CREATEROLE")
            return f"{redact(server)} (may create databases and roles)"

        checks.append(await _guard("data server", data_server))

        async def clone_method_line() -> str:
            return str(await clone_method(server))

        checks.append(await _guard("clone method", clone_method_line))

    if settings.slack_bot_token.get_secret_value():
        async def slack() -> str:
            async with aiohttp.ClientSession() as http, http.post(
                settings.slack_api_url + "auth.test",
                headers={"Authorization": f"Bearer {settings.slack_bot_token.get_secret_value()}"},
            ) as resp:
                body = await resp.json(content_type=None)
            if not body.get("ok"):
                raise RuntimeError(f"auth.test said {body.get('error', 'not ok')}")
            return f"{settings.slack_api_url} as {body.get('user', '?')} in {body.get('team', '?')}"

        checks.append(await _guard("slack", slack))
    else:
        checks.append(Check("slack", False, "SLACK_BOT_TOKEN is not set (the shell and demo "
                                            "work without it; `serve` does not)"))
    if not settings.slack_signing_secret.get_secret_value() and not settings.socket_mode:
        checks.append(Check("slack signing", False, "SLACK_SIGNING_SECRET is not set"))
    checks.append(Check("secret key", bool(settings.secret_key.get_secret_value()),
                        "EPHEM_SECRET_KEY is set" if settings.secret_key.get_secret_value()
                        else "EPHEM_SECRET_KEY is not set: passwords change on every restart"))
    if blueprint.phases.infra is not None:
        tf = shutil.which("tofu") or shutil.which("terraform")
        checks.append(Check("terraform", tf is not None,
                            tf or "neither tofu nor terraform is on PATH"))
    return checks
