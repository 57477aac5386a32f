"""`ephem doctor`: validate the configuration and check every configured connection.

One line per check, `ok` or `FAIL` and what to do; the exit status says whether all passed.
Nothing here prints a secret: URLs are shown with their password redacted.
"""

from __future__ import annotations

import asyncio
import difflib
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from alembic.script import ScriptDirectory
from sqlalchemy import text

from bot.config import INFRA_OUTPUT, Blueprint, Settings, masking_key
from bot.domain import format_duration
from bot.errors import EphemError
from bot.pg import asyncpg_dsn, redact, scrub
from bot.store import Store
from bot.store.migrate import alembic_config
from pipelines.data.clone import clone_method
from pipelines.data.rules import load_rules
from pipelines.infra.terraform import find_binary


class CheckFailed(EphemError):
    """A probe's own verdict, written for the reader: its line is the message, nothing else."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def unreachable(url: str, exc: BaseException) -> str:
    """Why a PostgreSQL URL did not answer, and what to do — the URL's password hidden."""
    parts = urlsplit(url)
    where = f"{parts.hostname or 'the local socket'}" + (f":{parts.port}" if parts.port else "")
    shown = redact(url)
    if isinstance(exc, socket.gaierror):
        return (f"cannot reach {shown}: the host {parts.hostname} is not known; check the "
                "host name")
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
        return (f"cannot reach {shown}: nothing listens at {where}; is the server running, and "
                "is the port right?")
    if isinstance(exc, TimeoutError):
        return (f"cannot reach {shown}: no answer from {where} within 10 s; a firewall, or the "
                "wrong host?")
    if isinstance(exc, asyncpg.InvalidPasswordError
                  | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{shown} refused the login ({scrub(str(exc))}); check the user and password"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{shown}: {scrub(str(exc))}; create it, or fix the database name"
    if isinstance(exc, OSError):
        return f"cannot reach {shown}: {scrub(exc.strerror or str(exc))}"
    return f"{shown}: {type(exc).__name__}: {scrub(str(exc))}"


async def _guard(name: str, probe: Callable[[], Awaitable[str]], *, url: str | None = None
                 ) -> Check:
    try:
        return Check(name, True, await asyncio.wait_for(probe(), timeout=10))
    except TimeoutError as exc:
        return Check(name, False, unreachable(url, exc) if url else "no answer within 10 s")
    except CheckFailed as exc:
        return Check(name, False, scrub(str(exc)))
    except (OSError, asyncpg.PostgresError) as exc:
        return Check(name, False, unreachable(url, exc) if url
                     else f"{type(exc).__name__}: {scrub(str(exc))}")
    except Exception as exc:  # every failure becomes a line, never a trace
        return Check(name, False, f"{type(exc).__name__}: {scrub(str(exc))}")


def _close(word: str, known: list[str]) -> str:
    found = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean `{found[0]}`?" if found else ""


def defaults_checks(blueprint: Blueprint) -> list[Check]:
    """What in `defaults` would make every create fail."""
    d = blueprint.defaults
    checks = []
    if d.ttl > d.max_ttl:
        checks.append(Check("defaults", False, f"ttl {format_duration(d.ttl)} is longer than "
                            f"max_ttl {format_duration(d.max_ttl)}: every create without --ttl "
                            "is refused; lower ttl or raise max_ttl"))
    if d.reference is not None and d.reference not in blueprint.references:
        known = list(blueprint.references)
        checks.append(Check("defaults", False, f"reference `{d.reference}` is not among the "
                            f"references ({', '.join(known) or 'none'})"
                            f"{_close(d.reference, known)}"))
    return checks or [Check("defaults", True, f"ttl {format_duration(d.ttl)}, max_ttl "
                            f"{format_duration(d.max_ttl)}, reference {d.reference or '-'}")]


def files_checks(blueprint: Blueprint) -> list[Check]:
    """The migration folders and rules files the data phase reads, present and readable."""
    data = blueprint.phases.data
    if data is None:
        return []
    checks = []
    migrations = data.migrations
    if migrations is not None:
        folders = [*migrations.locations, *migrations.seed_locations]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            checks.append(Check("migrations", False, f"no folder {', '.join(missing)}: every "
                                "create fails; fix the path (relative to the blueprint)"))
        elif migrations.command and not shutil.which(migrations.command[0]):
            checks.append(Check("migrations", False,
                                f"`{migrations.command[0]}` is not on PATH"))
        else:
            checks.append(Check("migrations", True, f"{len(folders)} folder(s)"
                                if folders else f"command {migrations.command}"))
    for name, snap in data.snapshots.items():
        try:
            load_rules(snap.rules)
        except (OSError, EphemError, ValueError) as exc:
            checks.append(Check(f"snapshot {name} rules", False, scrub(str(exc))))
        else:
            checks.append(Check(f"snapshot {name} rules", True, str(snap.rules)))
    return checks


async def snapshot_checks(settings: Settings, blueprint: Blueprint) -> list[Check]:
    """Each snapshot's source answers, and masking has a key."""
    data = blueprint.phases.data
    if data is None or not data.snapshots:
        return []
    checks = []
    if not masking_key(settings):
        checks.append(Check("masking key", False, "snapshots are configured, and neither "
                            "EPHEM_MASKING_KEY nor EPHEM_SECRET_KEY is set: every build refuses; "
                            "set EPHEM_MASKING_KEY (and keep it)"))
    checks.append(masking_check())
    for name, snap in data.snapshots.items():
        async def source(url: str = snap.source) -> str:
            conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
            return f"{redact(url)} answers"

        checks.append(await _guard(f"snapshot {name} source", source, url=snap.source))
        checks.append(approval_check(blueprint, name))
    return checks


def masking_check() -> Check:
    """Whether snapshot builds mask with the compiled code (built at install where a C
    compiler is) or in Python, which gives the same values several times slower."""
    from pipelines.data import copy, masking

    if copy.COMPILED and masking.COMPILED:
        return Check("masking", True, "compiled: the row loop and the keyed transformers "
                                      f"(SHA-256: {masking.sha256_kind()})")
    missing = [name for name, built in (("the row loop", copy.COMPILED),
                                        ("the keyed transformers", masking.COMPILED)) if not built]
    return Check("masking", False, f"{' and '.join(missing)} run in Python: same values, "
                                   "several times slower builds; reinstall where gcc and the "
                                   "Python headers are (pip builds the C extensions then)")


def approval_check(blueprint: Blueprint, snapshot: str) -> Check:
    """Who decides on the snapshot's data: a line to read, not a failure — a blueprint that
    names nobody is a choice (the example's), but it should be seen."""
    rule = blueprint.approvals.rule_for(snapshot, blueprint.admins)
    if rule is None:
        return Check(f"snapshot {snapshot} approvals", True,
                     "nobody is asked: no approvers, user group or admins are configured "
                     "(set `approvals` to have masked production data approved)")
    who = [*rule.users, *([f"user group {rule.usergroup}"] if rule.usergroup else [])]
    where = blueprint.channels.approvals or "the requester's channel"
    return Check(f"snapshot {snapshot} approvals", True,
                 f"{rule.required} of {', '.join(who)} decide(s), in {where}; requests "
                 f"expire after {format_duration(blueprint.approvals.expire_after)}")


async def data_checks(settings: Settings, blueprint: Blueprint) -> list[Check]:
    """The data server (may it create databases and roles), each snapshot's source and
    the clone method."""
    data = blueprint.phases.data
    if data is None:
        return []
    server = data.server or settings.database_url

    async def data_server() -> str:
        if INFRA_OUTPUT.match(server):
            return (f"`{server}`: an infrastructure output, known once an environment's "
                    "infra phase has run")
        if not server:
            raise CheckFailed("no server to create environments' databases on: set "
                              "phases.data.server in the blueprint, or EPHEM_DATABASE_URL")
        conn = await asyncpg.connect(asyncpg_dsn(server))
        try:
            row = await conn.fetchrow(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                "WHERE rolname = current_user")
        finally:
            await conn.close()
        if row is None or not (row[0] or (row[1] and row[2])):
            raise CheckFailed(f"{redact(server)}: the user needs CREATEDB and CREATEROLE")
        return f"{redact(server)} (may create databases and roles)"

    checks = [await _guard("data server", data_server, url=server or None)]
    checks += await snapshot_checks(settings, blueprint)

    async def clone_method_line() -> str:
        return str(await clone_method(server))

    if checks[0].ok and not INFRA_OUTPUT.match(server):
        # An unreachable server is said once, on its own line.
        checks.append(await _guard("clone method", clone_method_line))
    return checks


async def run_checks(settings: Settings, blueprint: Blueprint, *, source: str) -> list[Check]:
    checks = [Check("blueprint", True, f"{source} is valid (project {blueprint.project})")]
    checks += defaults_checks(blueprint)
    checks += files_checks(blueprint)

    async def state_db() -> str:
        if not settings.database_url:
            raise CheckFailed("EPHEM_DATABASE_URL is not set: it names Ephem's own database "
                              "(`ephem shell` and `ephem demo` work without it)")
        store = Store(settings.database_url, pool_size=1, max_overflow=0)
        try:
            async with store.engine.connect() as conn:
                current = (await conn.execute(
                    text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
        finally:
            await store.close()
        head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
        if current != head:
            raise CheckFailed(f"schema at {current}, code expects {head}: run `ephem db upgrade`")
        return f"{redact(settings.database_url)} (schema at {head})"

    checks.append(await _guard("state database", state_db, url=settings.database_url or None))

    checks += await data_checks(settings, blueprint)

    if settings.slack_bot_token.get_secret_value():
        async def slack() -> str:
            async with aiohttp.ClientSession() as http, http.post(
                settings.slack_api_url + "auth.test",
                headers={"Authorization": f"Bearer {settings.slack_bot_token.get_secret_value()}"},
            ) as resp:
                body = await resp.json(content_type=None)
            if not body.get("ok"):
                raise CheckFailed(f"auth.test said {body.get('error', 'not ok')}: check "
                                  "SLACK_BOT_TOKEN")
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
    infra = blueprint.phases.infra
    if infra is not None and infra.terraform is not None:
        tf = find_binary(infra.terraform.binary)
        checks.append(Check("terraform", tf is not None,
                            tf or f"{infra.terraform.binary or 'neither tofu nor terraform'} "
                                  "is not on PATH"))
    return checks


async def orphans(settings: Settings, blueprint: Blueprint, *, fix: bool) -> int:
    """`ephem doctor --orphans [--fix]`: one line per object with Ephem's marks and no live
    environment; with `--fix`, one line per object destroyed. Exit 0 when nothing is left."""
    from bot.cli.app import orphan_finder

    if not settings.database_url:
        print(Check("state database", False, "EPHEM_DATABASE_URL is not set").line())
        return 1
    store = Store(settings.database_url, pool_size=1, max_overflow=0)
    finder = orphan_finder(settings, blueprint, store)
    try:
        try:
            found = await finder.find()
        except Exception as exc:  # an unreachable server is a line, never a trace
            print(Check("orphans", False, f"{type(exc).__name__}: {scrub(str(exc))}").line())
            return 1
        if not found:
            print(Check("orphans", True, "none: everything Ephem made belongs to a live "
                                         "environment").line())
            return 0
        left = 0
        for orphan in found:
            if not fix:
                print(f"orphan  {orphan.line()}")
                left += 1
                continue
            try:
                print(f"fixed   {await finder.remove(orphan)}")
            except Exception as exc:
                reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                print(f"FAIL    {orphan.line()}: {scrub(str(reason))}")
                left += 1
        if left and not fix:
            print(f"{left} orphan(s); `ephem doctor --orphans --fix` destroys them")
        return 1 if left else 0
    finally:
        if finder.namespace is not None:
            finder.namespace.close()
        await store.close()
