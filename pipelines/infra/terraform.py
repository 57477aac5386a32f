"""Terraform/OpenTofu: one workspace per environment, state in PostgreSQL, progress on the card.

Why this shape: state lives in the `pg` backend (by default Ephem's own database, schema
`ephem_tf`), never in local files, so any replica can resume an environment; each environment
gets a working directory of its own (a copy of the module plus three files Ephem writes: a
backend override, the variables, a CLI configuration that allows providers only from the
configured plugin cache or filesystem mirror, so nothing is downloaded at run time). Commands
run only through `bot.proc.run` — streamed, with an explicit environment (`TF_*`, `PG_*`),
SIGINT first on cancellation so Terraform saves its state and releases its lock. python-terraform
builds the command lines; its own runner is not used (it adds `-force` to destroy, leaks
`synchronous=False` into the command line and copies the whole environment into the child).

Failures: a state lock held elsewhere is a `TemporaryError` naming the holder (found through
`pg_locks`: Ephem tags its connections with `application_name`), after waiting up to
`lock_wait` and saying so on the card; any other failure is a `PermanentError` whose details are
Terraform's diagnostics (severity, summary, address). A bot killed mid-apply leaves Terraform
to finish or die on its own: the pg backend writes state in one statement and its lock is a
session advisory lock, so the next attempt waits for the lock and then converges.

Neighbours: `phase.py` composes this provider with the namespace one into the infra phase;
`orphans.py` lists and destroys workspaces no live environment owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from python_terraform import IsFlagged, Terraform

from bot import proc
from bot.config import PLACEHOLDER, TerraformConfig
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, redact
from bot.redaction import register, scrub
from pipelines.base import PhaseContext

log = logging.getLogger(__name__)

WORKSPACE = re.compile(r"^ephem-(?P<id>\d+)-(?P<name>[a-z0-9-]+)$")
_LOCKED = "Error acquiring the state lock"
_EMIT_EVERY = 1.0  # seconds between card updates from the stream
_TICK = 5.0  # a long-running resource's clock is refreshed this often
_QUICK = 120.0  # timeout of the small commands (workspace, output)
_QUIET_LOCK = 5  # seconds an apply waits for a lock before saying it waits
_BACKEND_OVERRIDE = '# Written by Ephem: state in PostgreSQL.\nterraform {\n  backend "pg" {}\n}\n'
_STATE_VERSION = 4  # the state file format the outputs are read from
_OWN_FILES = ("ephem_backend_override.tf", "ephem.auto.tfvars.json", ".terraformrc")


@dataclass(frozen=True)
class Target:
    """The environment a workspace belongs to (from a PhaseContext, or from a workspace name
    when an orphan is destroyed)."""

    env_id: int
    name: str
    owner: str = ""
    expires_at: datetime | None = None
    releases: Mapping[str, str] = field(default_factory=dict)
    lenient: bool = False  # a missing `{release.<c>}` renders empty (destroying an orphan)

    @classmethod
    def of(cls, ctx: PhaseContext) -> Target:
        return cls(ctx.env_id, ctx.name, ctx.owner_id, ctx.expires_at,
                   dict(ctx.release_set.versions))

    @property
    def workspace(self) -> str:
        return workspace_name(self.env_id, self.name)


def workspace_name(env_id: int, name: str) -> str:
    """Ephem's mark on a workspace: `ephem-<environment id>-<name>`."""
    return f"ephem-{env_id}-{name}"


def render(value: object, target: Target) -> object:
    """Fill `{env.name}`, `{env.owner}`, `{env.expires_at}`, `{env.id}`, `{release.<c>}`."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("release."):
            component = key.removeprefix("release.")
            if component not in target.releases and not target.lenient:
                raise PermanentError(f"variable needs {{{key}}} but the release set has no "
                                     f"`{component}`")
            return target.releases.get(component, "")
        return {"env.name": target.name, "env.owner": target.owner, "env.id": str(target.env_id),
                "env.expires_at": target.expires_at.isoformat() if target.expires_at else ""
                }[key]

    return PLACEHOLDER.sub(sub, value)


def find_binary(configured: str | None) -> str | None:
    """The configured binary (a name on PATH or a path), else `tofu`, else `terraform`."""
    if configured:
        return shutil.which(configured) or (configured if Path(configured).is_file() else None)
    return shutil.which("tofu") or shutil.which("terraform")


def backend_url(url: str, *, application_name: str) -> str:
    """The URL Terraform's pg backend (lib/pq) connects with: no driver in the scheme, tagged
    with `application_name` (so a lock's holder can be named), and `sslmode=disable` on a
    loopback host when none is given (lib/pq's default is `require`)."""
    parts = urlsplit(asyncpg_dsn(url))
    query = dict(parse_qsl(parts.query))
    query["application_name"] = application_name
    if "sslmode" not in query and (parts.hostname or "127.0.0.1") in (
            "127.0.0.1", "localhost", "::1"):
        query["sslmode"] = "disable"
    return urlunsplit(parts._replace(query=urlencode(query)))


# --------------------------------------------------------------------------- the -json stream


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    summary: str
    address: str = ""
    detail: str = ""

    def line(self) -> str:
        where = f" ({self.address})" if self.address else ""
        detail = " ".join(self.detail.split())
        detail = f": {detail[:300]}" if detail else ""
        return f"{self.severity}: {self.summary}{where}{detail}"


class Stream:
    """Reads `terraform … -json` line by line: progress to the card (coalesced), diagnostics
    and the change summary kept for the end."""

    def __init__(self, emit: Callable[[str], Awaitable[None]], *, verb: str) -> None:
        self.emit = emit
        self.verb = verb
        self.total = 0
        self.done = 0
        self.running: dict[str, float] = {}  # address → when it started
        self.diagnostics: list[Diagnostic] = []
        self.summary = ""
        self._said = 0.0
        self._last = ""

    async def line(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return  # Terraform's few plain lines (e.g. a crash) reach the tail anyway
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        hook = msg.get("hook") or {}
        address = str((hook.get("resource") or {}).get("addr", ""))
        if kind == "change_summary":
            changes = msg.get("changes") or {}
            if changes.get("operation") == "plan":
                self.total = sum(int(changes.get(k, 0)) for k in ("add", "change", "remove"))
            else:
                self.summary = str(msg.get("@message", ""))
        elif kind == "apply_start" and address:
            self.running[address] = time.monotonic()
        elif kind in ("apply_complete", "apply_errored") and address:
            self.running.pop(address, None)
            self.done += 1
        elif kind == "diagnostic":
            diag = msg.get("diagnostic") or {}
            self.diagnostics.append(Diagnostic(
                severity=str(diag.get("severity", "error")),
                summary=str(diag.get("summary", "")),
                address=str(diag.get("address", "")),
                detail=str(diag.get("detail", ""))))
            return
        else:
            return
        await self.say()

    def text(self) -> str:
        if self.running:
            address, since = min(self.running.items(), key=lambda item: item[1])
            doing = f": {address} ({time.monotonic() - since:.0f} s)"
        else:
            doing = ""
        count = f" {min(self.done + 1, self.total)}/{self.total}" if self.total else ""
        return f"{self.verb}{count}{doing}"

    async def say(self, *, force: bool = False) -> None:
        now = time.monotonic()
        text = self.text()
        if text != self._last and (force or now - self._said >= _EMIT_EVERY):
            self._said, self._last = now, text
            await self.emit(text)

    async def tick(self) -> None:
        """Say what the coalescing held back, within a second; refresh the clock of a long
        resource every few seconds."""
        while True:
            await asyncio.sleep(_EMIT_EVERY)
            stale = self.running and time.monotonic() - self._said >= _TICK
            if self.text() != self._last or stale:
                await self.say(force=True)

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def locked(self) -> bool:
        return any(d.summary.startswith(_LOCKED) for d in self.diagnostics)


# --------------------------------------------------------------------------- the provider


class TerraformProvider:
    """Applies and destroys one environment's workspace."""

    label = "terraform"

    def __init__(self, config: TerraformConfig, *, state_url: str,
                 holder: str | None = None, quiet_lock: float = _QUIET_LOCK) -> None:
        self.config = config
        self.quiet_lock = quiet_lock  # seconds a held lock is waited for before saying so
        conn = config.backend.conn_str or state_url
        if not conn:
            raise PermanentError("terraform needs a state database: set EPHEM_DATABASE_URL or "
                                 "phases.infra.terraform.backend.conn_str")
        self.holder = holder or f"ephem:{socket.gethostname()}:{os.getpid()}"
        self._state_url = asyncpg_dsn(conn)
        self._conn_str = backend_url(conn, application_name=self.holder)
        register(self._conn_str, self._state_url)
        self.schema = config.backend.schema_name
        # Per installation (state database and schema): two Ephems on one machine (a serve
        # and a shell, say) both have an environment 1, and one directory would init and apply
        # against the other's backend.
        where = f"{redact(self._state_url)}\0{self.schema}"  # no password in it
        installation = hashlib.sha256(where.encode()).hexdigest()
        self.root = config.workdir or (Path(tempfile.gettempdir()) / "ephem-terraform"
                                       / installation[:12])
        self.binary = find_binary(config.binary)
        self._init_lock = asyncio.Lock()
        self._schema_ready = False

    # ------------------------------------------------------------------ the phase's parts

    async def describe(self, ctx: PhaseContext) -> str:
        return f"terraform workspace {Target.of(ctx).workspace}"

    async def apply(self, ctx: PhaseContext) -> tuple[dict[str, Any], dict[str, str], str]:
        """Apply; (public outputs, secret outputs, summary)."""
        target = Target.of(ctx)
        workdir = await self._ready(target, ctx.emit)
        assert workdir is not None  # made when missing
        stream = await self._locked_run(
            ["apply", "-auto-approve", "-json", "-input=false",
             f"-parallelism={self.config.parallelism}"],
            workdir=workdir, emit=ctx.emit, verb="applying", target=target)
        self._raise_for(stream, action="apply", target=target)
        public, secret = self._split(await self._outputs(target.workspace) or {})
        summary = stream.summary or "applied"
        return public, secret, f"{target.workspace}: {summary.removesuffix('.')}"

    async def secrets(self, ctx: PhaseContext) -> dict[str, str]:
        """The secret outputs again, read from the workspace's state (none once it is gone)."""
        if not self.config.outputs.secret:
            return {}
        return self._split(await self._outputs(Target.of(ctx).workspace) or {})[1]

    async def destroy(self, ctx: PhaseContext) -> None:
        await self.destroy_target(Target.of(ctx), ctx.emit)

    async def destroy_target(self, target: Target,
                             emit: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Destroy what the workspace holds, then delete it; done if it is already gone."""
        say = emit or _quiet
        workdir = await self._ready(target, say, create=False)
        if workdir is None:
            await say(f"workspace {target.workspace} is already gone")
            await asyncio.to_thread(shutil.rmtree, self._workdir(target), True)
            return
        stream = await self._locked_run(
            ["destroy", "-auto-approve", "-json", "-input=false",
             f"-parallelism={self.config.parallelism}"],
            workdir=workdir, emit=say, verb="destroying", target=target)
        self._raise_for(stream, action="destroy", target=target)
        await self._delete_workspace(target, workdir)
        await asyncio.to_thread(shutil.rmtree, workdir, True)
        await say(f"workspace {target.workspace} deleted")

    # ------------------------------------------------------------------ workspaces

    async def workspaces(self) -> list[str]:
        """Every workspace in the state schema (none when the schema does not exist yet)."""
        conn = await _connect(self._state_url)
        try:
            exists = await conn.fetchval("SELECT to_regclass($1)", f"{self.schema}.states")
            if exists is None:
                return []
            rows = await conn.fetch(f"SELECT name FROM {quote_ident(self.schema)}.states "
                                    "ORDER BY name")
        finally:
            await conn.close()
        return [str(r[0]) for r in rows]

    async def lock_holder(self, workspace: str) -> str | None:
        """Who holds the workspace's lock (the pg backend's advisory lock on its state row)."""
        conn = await _connect(self._state_url)
        try:
            if await conn.fetchval("SELECT to_regclass($1)", f"{self.schema}.states") is None:
                return None
            state_id = await conn.fetchval(
                f"SELECT id FROM {quote_ident(self.schema)}.states WHERE name = $1", workspace)
            if state_id is None:
                return None
            row = await conn.fetchrow(
                "SELECT a.application_name, a.usename, a.client_addr, a.backend_start, a.pid "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = $1 "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())", int(state_id))
        finally:
            await conn.close()
        if row is None:
            return None
        who = row["application_name"] or f"{row['usename']}@{row['client_addr'] or 'local'}"
        since = row["backend_start"].strftime("%H:%M:%S UTC") if row["backend_start"] else "?"
        return f"{who} (since {since})"

    # ------------------------------------------------------------------ running terraform

    def _workdir(self, target: Target) -> Path:
        return self.root / f"{target.name}-{target.env_id}"

    async def _ready(self, target: Target, emit: Callable[[str], Awaitable[None]] | None, *,
                     create: bool = True) -> Path | None:
        """Copy the module, write Ephem's files, `init`, and make the workspace when `create`
        (None when it does not exist and `create` is false). Nothing selects it: every command
        names its workspace in `TF_WORKSPACE`, so no run depends on what an earlier one in
        this directory selected."""
        if self.binary is None:
            raise PermanentError(f"no {self.config.binary or 'tofu or terraform'} binary found "
                                 "on PATH: install one or set phases.infra.terraform.binary")
        if not create and target.workspace not in await self.workspaces():
            return None
        workdir = self._workdir(target)
        await asyncio.to_thread(self._write_workdir, workdir, target)
        if emit is not None:
            await emit(f"terraform init ({target.workspace})")
        init = await self._init(workdir)
        if init.returncode != 0:
            raise PermanentError("terraform init failed", details=_init_hint(init.tail(30)))
        if create:
            await self._new_workspace(target, workdir)
        return workdir

    async def _init(self, workdir: Path) -> proc.ProcResult:
        """`init`. The first one against a schema without its table runs alone (an in-process
        lock and an advisory lock across replicas): the pg backend creates its schema and table
        then, and two doing so at once fail with a duplicate key."""
        args = ["init", "-input=false", "-no-color", "-reconfigure"]
        if not self._schema_ready:
            async with self._init_lock:
                if not self._schema_ready:
                    self._schema_ready = await self._has_state_table()
                if not self._schema_ready:
                    conn = await _connect(self._state_url)
                    key = zlib.crc32(f"ephem-terraform-init:{self.schema}".encode())
                    try:
                        await conn.execute("SELECT pg_advisory_lock($1)", key)
                        result = await self._command(args, workdir=workdir)
                    finally:
                        with contextlib.suppress(Exception):
                            await conn.execute("SELECT pg_advisory_unlock($1)", key)
                        await conn.close()
                    self._schema_ready = result.returncode == 0
                    return result
        return await self._command(args, workdir=workdir)

    async def _has_state_table(self) -> bool:
        conn = await _connect(self._state_url)
        try:
            return await conn.fetchval("SELECT to_regclass($1)",
                                       f"{self.schema}.states") is not None
        finally:
            await conn.close()

    async def _delete_workspace(self, target: Target, workdir: Path) -> None:
        """Delete the (destroyed) workspace, from the default one. Deletions of two
        workspaces at once can fail on the backend's locks (seen with two destroys in one
        process); one that fails while the workspace still exists is tried again soon, at a
        jittered interval, until `lock_wait` has passed."""
        deadline = time.monotonic() + self.config.lock_wait.total_seconds()
        delay = 0.1
        while True:
            deleted = await self._command(
                ["workspace delete", f"-lock-timeout={_seconds(self.config.lock_wait)}s",
                 target.workspace], workdir=workdir, workspace="default")
            if deleted.returncode == 0 or target.workspace not in await self.workspaces():
                return
            if time.monotonic() > deadline:
                raise TemporaryError(f"could not delete workspace {target.workspace}",
                                     details=scrub(deleted.tail(20)))
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _new_workspace(self, target: Target, workdir: Path) -> None:
        """Make the workspace unless it exists.

        The pg backend creates workspaces under one global lock, held for a moment, and fails
        at once when another creation holds it ("Already locked for workspace creation"),
        whatever -lock-timeout says: a busy lock is tried again soon, at a jittered interval,
        until `lock_wait` has passed."""
        deadline = time.monotonic() + self.config.lock_wait.total_seconds()
        delay = 0.05
        while True:
            made = await self._command(["workspace new", target.workspace], workdir=workdir,
                                       workspace=target.workspace)
            text = made.tail(20)
            if made.returncode == 0 or "already exists" in text:
                return
            if "locked for workspace creation" not in text or time.monotonic() > deadline:
                raise TemporaryError(f"could not create workspace {target.workspace}",
                                     details=scrub(text))
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _write_workdir(self, workdir: Path, target: Target) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        for old in workdir.iterdir():  # the module may have lost files since the last run
            if old.name not in (".terraform", ".terraform.lock.hcl"):  # providers, kept
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink()
        shutil.copytree(self.config.module, workdir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*"))
        (workdir / _OWN_FILES[0]).write_text(_BACKEND_OVERRIDE, encoding="utf-8")
        variables = {k: render(v, target) for k, v in self.config.variables.items()}
        tfvars = workdir / _OWN_FILES[1]
        tfvars.touch(mode=0o600)
        tfvars.write_text(json.dumps(variables, indent=2), encoding="utf-8")
        (workdir / _OWN_FILES[2]).write_text(self._cli_config(workdir), encoding="utf-8")

    def _cli_config(self, workdir: Path) -> str:
        """Providers from the mirror or the plugin cache only: nothing is downloaded."""
        source = self.config.provider_mirror or self.config.plugin_cache
        mirror = source or (workdir / ".terraform" / "no-provider-downloads")
        lines = ["# Written by Ephem: providers come only from this directory.",
                 "provider_installation {",
                 f"  filesystem_mirror {{\n    path = {json.dumps(str(mirror))}\n  }}", "}"]
        if self.config.plugin_cache is not None:
            lines += [f"plugin_cache_dir = {json.dumps(str(self.config.plugin_cache))}",
                      "plugin_cache_may_break_dependency_lock_file = true"]
        return "\n".join(lines) + "\n"

    def _env(self, workdir: Path, workspace: str) -> dict[str, str]:
        env = {
            "TF_WORKSPACE": workspace,
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "TF_CLI_CONFIG_FILE": str(workdir / _OWN_FILES[2]),
            "PG_CONN_STR": self._conn_str,
            "PG_SCHEMA_NAME": self.schema,
        }
        if self.config.plugin_cache is not None:
            env["TF_PLUGIN_CACHE_DIR"] = str(self.config.plugin_cache)
        return env

    def _argv(self, args: list[str]) -> list[str]:
        """`[command (words), -options…, arguments…]` as a command line (python-terraform's
        builder puts the options between the command and its arguments)."""
        assert self.binary is not None
        command, *rest = args
        options: dict[str, Any] = {}
        positional: list[str] = []
        for arg in rest:
            if arg.startswith("-"):
                key, sep, value = arg[1:].partition("=")
                options[key.replace("-", "_")] = value if sep else IsFlagged
            else:
                positional.append(arg)
        builder = Terraform(terraform_bin_path=self.binary, is_env_vars_included=False)
        argv: list[str] = builder.generate_cmd_string(command, *positional, **options)
        return argv

    async def _command(self, args: list[str], *, workdir: Path, workspace: str = "default",
                       on_line: Callable[[str], Awaitable[None]] | None = None,
                       timeout: float = _QUICK) -> proc.ProcResult:
        return await proc.run(self._argv(args), env=self._env(workdir, workspace), cwd=workdir,
                              timeout=timeout, on_line=on_line, interrupt_first=True,
                              kill_grace=10.0)

    async def _locked_run(self, args: list[str], *, workdir: Path,
                          emit: Callable[[str], Awaitable[None]], verb: str,
                          target: Target) -> Stream:
        """Run an apply or destroy; when the state is locked elsewhere, say so and wait for up
        to `lock_wait`; a lock still held then is a TemporaryError naming the holder."""
        timeout = self.config.timeout.total_seconds()
        # A few seconds first, quietly: the pg backend also refuses every lock while any
        # workspace is being created, which passes at once.
        quiet = int(min(self.quiet_lock, _seconds(self.config.lock_wait)))
        stream = await self._streamed([*args, f"-lock-timeout={quiet}s"], workdir=workdir,
                                      workspace=target.workspace, emit=emit, verb=verb,
                                      timeout=timeout + quiet)
        if not stream.locked():
            return stream
        holder = await self.lock_holder(target.workspace) or "another process"
        wait = _seconds(self.config.lock_wait)
        await emit(f"state of {target.workspace} is locked by {holder}; waiting up to {wait} s")
        stream = await self._streamed([*args, f"-lock-timeout={wait}s"], workdir=workdir,
                                      workspace=target.workspace, emit=emit, verb=verb,
                                      timeout=timeout + wait)
        if stream.locked():
            holder = await self.lock_holder(target.workspace) or "another process"
            raise TemporaryError(f"state of {target.workspace} is locked by {holder}",
                                 delay=30.0)
        return stream

    async def _streamed(self, args: list[str], *, workdir: Path, workspace: str,
                        emit: Callable[[str], Awaitable[None]], verb: str,
                        timeout: float) -> Stream:
        stream = Stream(emit, verb=verb)
        ticker = asyncio.ensure_future(stream.tick())
        try:
            result = await self._command(args, workdir=workdir, workspace=workspace,
                                         on_line=stream.line,
                                         timeout=timeout)
        except proc.ProcTimeoutError as exc:
            raise PermanentError(f"terraform {args[0]} timed out after {timeout:g} s "
                                 "(interrupted: state saved, lock released)",
                                 details=scrub(_diagnostics(stream) or "\n".join(exc.output[-20:]))
                                 ) from None
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if result.returncode != 0 and not stream.diagnostics:
            stream.diagnostics.append(Diagnostic("error", f"terraform {args[0]} exited with "
                                                 f"{result.returncode}", detail=result.tail(10)))
        return stream

    @staticmethod
    def _raise_for(stream: Stream, *, action: str, target: Target) -> None:
        errors = stream.errors()
        if not errors:
            return
        first = errors[0]
        where = f" ({first.address})" if first.address else ""
        raise PermanentError(f"terraform {action} of {target.workspace} failed: "
                             f"{first.summary}{where}", details=scrub(_diagnostics(stream)))

    async def _outputs(self, workspace: str) -> dict[str, Any] | None:
        """The workspace's outputs as its state holds them, sensitive ones with their values
        (what `terraform output -json` prints, without starting Terraform: `init` and a run per
        read, while the credentials are asked for again and again); None when the workspace
        does not exist. The state is read, never locked, so a running apply does not hold
        this up: it gives the outputs of the last state written."""
        conn = await _connect(self._state_url)
        try:
            if await conn.fetchval("SELECT to_regclass($1)", f"{self.schema}.states") is None:
                return None
            data = await conn.fetchval(
                f"SELECT data FROM {quote_ident(self.schema)}.states WHERE name = $1", workspace)
        finally:
            await conn.close()
        if data is None:
            return None
        try:
            state = json.loads(data)
        except ValueError:
            raise TemporaryError(f"the state of {workspace} is not JSON") from None
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise PermanentError(f"the state of {workspace} is in format version {version}; "
                                 f"Ephem reads format {_STATE_VERSION} (Terraform 0.12 and "
                                 "later, OpenTofu)")
        outputs = state.get("outputs") or {}
        return outputs if isinstance(outputs, dict) else {}

    def _split(self, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """(persisted outputs: not sensitive, not secret; secrets for the owner)."""
        secret_names = set(self.config.outputs.secret)
        public: dict[str, Any] = {}
        secret: dict[str, str] = {}
        for name, out in outputs.items():
            value = out.get("value") if isinstance(out, Mapping) else None
            if name in secret_names:
                text = value if isinstance(value, str) else json.dumps(value)
                register(text)
                secret[name] = text
            elif not (isinstance(out, Mapping) and out.get("sensitive")):
                public[name] = value
        return public, secret

    def shown(self, outputs: Mapping[str, Any]) -> dict[str, str]:
        """The outputs the thread shows (`outputs.show`; all public ones when not set)."""
        names = self.config.outputs.show
        chosen = outputs if names is None else {n: outputs[n] for n in names if n in outputs}
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in chosen.items()}


async def _quiet(_: str) -> None:
    return None


def _seconds(delta: Any) -> int:
    return max(int(delta.total_seconds()), 0)


def _diagnostics(stream: Stream) -> str:
    return "\n".join(d.line() for d in stream.diagnostics)


def _init_hint(tail: str) -> str:
    text = scrub(tail)
    if "provider" in text.lower() and ("mirror" in text.lower() or "registry" in text.lower()):
        text += ("\n\nProviders are installed only from phases.infra.terraform.provider_mirror "
                 "or plugin_cache (README: preparing the provider mirror).")
    return text


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise TemporaryError(f"cannot reach the terraform state database "
                             f"({type(exc).__name__})") from None
