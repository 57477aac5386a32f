"""An environment's schema and seed data, from the project's migrations.

Why: a fresh environment database is empty; the project describes its schema as Flyway-style
files, and this module brings a database up to date with them — the same files, the same
order, every time, so every environment (and a re-run after a crash) ends up alike:

- `V<version>__<description>.sql` is applied once, in version order (`1` < `1.1` < `2` < `10`;
  `_` in a version is a `.`; `1.0` is `1`). `R__<description>.sql` is applied after all
  versioned ones whenever its checksum differs from the last time it was applied.
- The checksum is the SHA-256 of the file's bytes. A versioned file edited after it was
  applied is refused — before anything runs — since the database can no longer match it.
- Each migration runs in a transaction of its own together with its history row, statement by
  statement (`sqlscript` splits the file the way psql does), so a failure leaves no trace of the
  migration but a `success = false` row, and names the file and line. Its BEGIN/COMMIT
  statements, if it has any, are skipped: the migration is already one transaction. A later
  run retries it. A versioned file older than the newest applied one but not applied itself
  (a branch merged late) is applied too: environments are throw-away, refusing would only block.
- A run holds a session advisory lock on the database, so two runs on one database (two
  workers, a retry racing a slow attempt) apply each migration once. Session settings a
  migration changes (`SET search_path`, `SET ROLE`) are reset before the next one.
- Seeds are a second set of files with their own history table (`SEED_HISTORY`).
- The `command` kind instead runs the project's own tool (`run_command`) with the database's
  URL in `DATABASE_URL` and the libpq `PG*` variables; its output tail, passwords scrubbed, is
  the failure reason. The tool holds a fence on the database while it runs (`bot.proc.Fence`,
  `migrations_fence`): the advisory lock above only protects runs in this process's sessions,
  while a tool's run must also keep out a successor when the bot that started it is gone.

Neighbours: the data phase (`postgres.py` creates the database) calls `discover`, `migrate` and
`run_command`; `bot.proc` runs the command. The runner retries `TemporaryError`s only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import asyncpg

from bot import proc, redaction
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, scrub
from pipelines.data import pgconn, sqlscript

log = logging.getLogger(__name__)

Emit = Callable[[str], Awaitable[None]]

SCHEMA_HISTORY = "ephem_schema_history"
SEED_HISTORY = "ephem_seed_history"
CONNECT_TIMEOUT = 10.0
TAIL_LINES = 20  # lines of a failed command's output in its error

# Held for a whole run, per database ("ephem_mg"); the bot's own schema uses another key.
LOCK_KEY = 0x6570_6865_6D5F_6D67
_VERSIONED = re.compile(r"V(?P<version>\d+(?:[._]\d+)*)__(?P<description>.+)\.sql")
_REPEATABLE = re.compile(r"R__(?P<description>.+)\.sql")
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TEMPORARY_CLASSES = ("08", "40", "53")  # connection, rollback (deadlock…), resources
_TEMPORARY_CODES = ("55P03", "57P01", "57P02", "57P03")  # lock busy, shutting down, starting
_SKIPPED = ("begin", "start", "commit", "end")  # transaction control a migration may contain
_EMIT_EVERY = 1.0  # seconds between progress lines forwarded from a command's output


class MigrationType(StrEnum):
    SQL = "SQL"
    REPEATABLE = "REPEATABLE"


@dataclass(frozen=True)
class Migration:
    path: Path
    type: MigrationType
    version: str | None  # "1.1" for V1_1__…; None for repeatables
    description: str  # "add orders" for V2__add_orders.sql
    checksum: str  # SHA-256 of the file's bytes, hex
    sql: str
    version_key: tuple[int, ...] = ()  # (1, 1) for 1.1; the order and identity of versions

    @property
    def script(self) -> str:
        """The file name, as recorded in the history table."""
        return self.path.name

    @property
    def label(self) -> str:
        return f"V{self.version}" if self.version is not None else "R"


@dataclass(frozen=True)
class MigrateResult:
    applied: list[str]  # script names, in the order applied
    already_applied: int  # migrations that needed nothing
    seconds: float


class CommandFailed(PermanentError):
    """The migration command exited non-zero; `output` is its scrubbed output tail."""

    def __init__(self, reason: str, *, returncode: int, output: str) -> None:
        super().__init__(reason, details=output)
        self.returncode = returncode
        self.output = output


# --------------------------------------------------------------------------- discovery


def discover(locations: Sequence[Path]) -> list[Migration]:
    """Every migration file under `locations` (directories, searched recursively), versioned
    ones by version, then repeatables by description.

    Raises PermanentError naming the files when a location is missing, a `.sql` file's name
    fits neither pattern, two files share a version (or a repeatable's description), or a file
    cannot be read as UTF-8. Other files (a README) are ignored.
    """
    problems: list[str] = []
    found: list[tuple[Migration, str]] = []  # with the name shown in messages
    for location in locations:
        if not location.is_dir():
            problems.append(f"migrations location {location} is missing or not a directory")
            continue
        for path in sorted(p for p in location.rglob("*.sql") if p.is_file()):
            shown = f"{location.name}/{path.relative_to(location)}"
            try:
                migration = _load(path)
            except PermanentError as exc:
                problems.append(f"{shown}: {exc.reason}")
                continue
            found.append((migration, shown))
    problems += _duplicates(found)
    if problems:
        raise PermanentError("; ".join(problems))
    return sorted((m for m, _ in found), key=_order)


def _load(path: Path) -> Migration:
    if m := _VERSIONED.fullmatch(path.name):
        mtype, version = MigrationType.SQL, m.group("version").replace("_", ".")
        key = _version_key(version)
    elif m := _REPEATABLE.fullmatch(path.name):
        mtype, version, key = MigrationType.REPEATABLE, None, ()
    else:
        raise PermanentError("not a migration file name (expected V<version>__<description>.sql "
                             "or R__<description>.sql)")
    try:
        raw = path.read_bytes()
        sql = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PermanentError("not UTF-8 text") from None
    except OSError as exc:
        raise PermanentError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    return Migration(path=path, type=mtype, version=version,
                     description=m.group("description").replace("_", " "),
                     checksum=hashlib.sha256(raw).hexdigest(), sql=sql, version_key=key)


def _version_key(version: str) -> tuple[int, ...]:
    """Numeric parts without trailing zeros, so 1.0 == 1 and 1.10 > 1.9."""
    parts = [int(p) for p in re.split(r"[._]", version)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _order(m: Migration) -> tuple[int, tuple[int, ...], str]:
    return (0, m.version_key, "") if m.version is not None else (1, (), m.description)


def _duplicates(found: Iterable[tuple[Migration, str]]) -> list[str]:
    groups: dict[tuple[int, tuple[int, ...], str], list[tuple[Migration, str]]] = {}
    for m, shown in found:
        groups.setdefault(_order(m), []).append((m, shown))
    problems = []
    for same in groups.values():
        if len(same) > 1:
            first = same[0][0]
            number = ".".join(map(str, first.version_key))
            what = (f"version {number}" if first.version is not None
                    else f"repeatable description {first.description!r}")
            problems.append(f"duplicate {what}: " + ", ".join(shown for _, shown in same))
    return problems


# --------------------------------------------------------------------------- migrate


async def migrate(
    dsn: str,
    migrations: Sequence[Migration],
    *,
    history_table: str = SCHEMA_HISTORY,
    installed_by: str,
    emit: Emit | None = None,
) -> MigrateResult:
    """Bring the database at `dsn` up to date with `migrations` (see the module docstring).

    Raises PermanentError when an applied versioned file was changed (before applying
    anything), when a migration fails (naming its file and line; it is recorded with
    success = false), or when the server refuses; TemporaryError when the server cannot be
    reached or the connection is lost.
    """
    if not _TABLE_NAME.fullmatch(history_table):
        raise ValueError(f"history table name {history_table!r}: lower-case letters, digits, _")
    try:
        where = pgconn.location(dsn)
    except ValueError:
        raise PermanentError("the database URL is not a postgresql:// URL") from None
    started = time.monotonic()
    say = emit or _quiet
    conn = await _connect(dsn, where)
    try:
        table = await _prepare(conn, history_table, where=where, say=say)
        try:
            history = await conn.fetch(
                f"SELECT version, description, checksum, success FROM {table} "
                "ORDER BY installed_rank")
        except asyncpg.PostgresError as exc:
            raise _refused(exc, f"cannot read {history_table} at {where}") from None
        pending, up_to_date = _plan(migrations, history)
        scripts = [(m, _statements(m)) for m in pending]  # every file splits, or none runs
        applied: list[str] = []
        for m, statements in scripts:
            ms = await _apply(conn, table, m, statements, installed_by=installed_by)
            log.info("applied %s to %s in %d ms", m.script, where, ms)
            applied.append(m.script)
            await say(f"{m.label} {m.description} ({ms} ms)")
        return MigrateResult(applied=applied, already_applied=up_to_date,
                             seconds=time.monotonic() - started)
    except (OSError, asyncpg.InterfaceError) as exc:
        raise TemporaryError(f"lost the connection to PostgreSQL at {where} "
                             f"({type(exc).__name__})") from None
    finally:
        await pgconn.close(conn)  # also releases the advisory lock


async def _quiet(_: str) -> None:
    return None


async def _connect(dsn: str, where: str) -> Any:
    try:
        return await asyncpg.connect(asyncpg_dsn(dsn), timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise TemporaryError(f"cannot reach PostgreSQL at {where} "
                             f"({type(exc).__name__})") from None
    except asyncpg.PostgresError as exc:
        raise _refused(exc, f"cannot connect to {where}") from None


async def _prepare(conn: Any, history_table: str, *, where: str, say: Emit) -> str:
    """Take the run's lock and make sure the history table exists; its qualified name."""
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            await say("waiting for another migration run on this database to finish")
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        # Qualified, so a migration's own `SET search_path` cannot move it.
        schema = await conn.fetchval("SELECT current_schema()")
        if schema is None:
            raise PermanentError(f"no schema for {history_table} at {where}: "
                                 "the search_path names no existing schema")
        table = f"{quote_ident(schema)}.{quote_ident(history_table)}"
        await conn.execute(f"""
            CREATE TABLE IF NOT EXISTS {table} (
                installed_rank serial PRIMARY KEY,
                version text,
                description text NOT NULL,
                type text NOT NULL CHECK (type IN ('SQL', 'REPEATABLE')),
                script text NOT NULL,
                checksum text NOT NULL,
                installed_by text NOT NULL,
                installed_on timestamptz NOT NULL DEFAULT now(),
                execution_time_ms integer NOT NULL,
                success boolean NOT NULL
            )""")
    except asyncpg.PostgresError as exc:
        raise _refused(exc, f"cannot prepare {history_table} at {where}") from None
    return table


def _plan(migrations: Sequence[Migration],
          history: Sequence[Mapping[str, Any]]) -> tuple[list[Migration], int]:
    """What to apply, in order, and how many need nothing. Refuses edited applied files."""
    versions: dict[tuple[int, ...], str] = {}  # version → checksum applied
    repeatables: dict[str, str] = {}  # description → checksum last applied
    for row in history:
        if not row["success"]:
            continue  # a failure never blocks: the next run retries it
        if row["version"] is None:
            repeatables[row["description"]] = row["checksum"]
        elif re.fullmatch(r"\d+(?:[._]\d+)*", row["version"]):
            versions[_version_key(row["version"])] = row["checksum"]

    pending: list[Migration] = []
    changed: list[str] = []
    up_to_date = 0
    for m in sorted(migrations, key=_order):
        stored = versions.get(m.version_key) if m.version is not None else (
            repeatables.get(m.description))
        if stored is None or (m.version is None and stored != m.checksum):
            pending.append(m)
        elif stored != m.checksum:
            changed.append(f"{m.script} was changed after it was applied "
                           f"(checksum applied {stored}, file {m.checksum})")
        else:
            up_to_date += 1
    if changed:
        raise PermanentError("refusing to migrate, nothing applied: " + "; ".join(changed)
                             + "; restore the file(s) and put the change in a new migration")
    return pending, up_to_date


def _statements(m: Migration) -> list[sqlscript.Statement]:
    """The file's statements to send, without transaction control (the migration is already
    one transaction). Raises PermanentError for a file that cannot be split or rolls back."""
    try:
        statements = sqlscript.split(m.sql)
    except sqlscript.ScriptError as exc:
        raise PermanentError(f"{m.script}, line {exc.line}: {exc.message}") from None
    kept = []
    for st in statements:
        head = st.words[:1]
        if head and head[0] in _SKIPPED and "prepared" not in st.words[:2]:
            continue
        if head and head[0] in ("rollback", "abort") and not {"to", "prepared"} & {*st.words}:
            line = sqlscript.line_of(m.sql, st.start)
            raise PermanentError(f"{m.script}, line {line}: ROLLBACK is not allowed in a "
                                 "migration (it runs in a transaction of its own)")
        kept.append(st)
    return kept


async def _apply(conn: Any, table: str, m: Migration,
                 statements: Sequence[sqlscript.Statement], *, installed_by: str) -> int:
    """One migration and its history row in one transaction; its duration in ms."""
    insert = (f"INSERT INTO {table} (version, description, type, script, checksum, "
              "installed_by, execution_time_ms, success) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
    row = (m.version, m.description, str(m.type), m.script, m.checksum, installed_by)
    started = time.monotonic()
    current: sqlscript.Statement | None = None
    try:
        async with conn.transaction():
            for current in statements:
                await conn.execute(current.text)
            current = None
            ms = _ms(started)
            await conn.execute(insert, *row, ms, True)
    except asyncpg.PostgresError as exc:
        failure = _failure(m, current, exc)
        try:
            await conn.execute(insert, *row, _ms(started), False)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as again:
            log.warning("could not record the failure of %s (%s)", m.script,
                        type(again).__name__)
        raise failure from None
    await conn.execute("RESET ALL; RESET ROLE")
    return ms


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _failure(m: Migration, st: sqlscript.Statement | None,
             exc: asyncpg.PostgresError) -> PermanentError | TemporaryError:
    """The error naming the file and line; temporary when the server says so (a deadlock)."""
    message = _message(exc)
    position = str(getattr(exc, "position", "") or "")
    if st is None:
        reason = f"{m.script}: recording it in the history failed: {message}"
    elif position.isdigit():
        line = sqlscript.line_of(m.sql, st.offset + int(position) - 1)
        reason = f"{m.script}, line {line}: {message}"
    else:
        line = sqlscript.line_of(m.sql, st.start)
        reason = f"{m.script}, statement at line {line} (`{st.snippet}`): {message}"
        context = str(getattr(exc, "context", "") or "").split("\n")[0]
        if context:
            reason += f" [{context[:100]}]"
    return _sorted(exc, scrub(reason))


def _message(exc: asyncpg.PostgresError) -> str:
    text = str(getattr(exc, "message", "") or type(exc).__name__).split("\n")[0][:200]
    state = getattr(exc, "sqlstate", None)
    detail = str(getattr(exc, "detail", "") or "").split("\n")[0][:120]
    return text + (f" ({state})" if state else "") + (f"; {detail}" if detail else "")


def _refused(exc: asyncpg.PostgresError, what: str) -> PermanentError | TemporaryError:
    return _sorted(exc, scrub(f"{what}: {_message(exc)}"))


def _sorted(exc: asyncpg.PostgresError, reason: str) -> PermanentError | TemporaryError:
    state = str(getattr(exc, "sqlstate", "") or "")
    if state.startswith(_TEMPORARY_CLASSES) or state in _TEMPORARY_CODES:
        return TemporaryError(reason)
    return PermanentError(reason)


# --------------------------------------------------------------------------- command


_LIBPQ_QUERY = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
                "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME",
                "options": "PGOPTIONS"}


def command_environment(dsn: str) -> dict[str, str]:
    """`DATABASE_URL` and the libpq variables for `dsn`. All of PGHOST, PGPORT, PGDATABASE,
    PGUSER and PGPASSWORD are set — empty when the URL has none (libpq then uses its default) —
    so none is inherited from Ephem's own environment. Raises ValueError for a non-PostgreSQL
    URL."""
    url = asyncpg_dsn(dsn)
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    env = {
        "DATABASE_URL": url,
        "PGHOST": parts.hostname or query.get("host", ""),
        "PGPORT": str(parts.port or query.get("port", "")),
        "PGDATABASE": unquote(parts.path.lstrip("/")) or query.get("dbname", ""),
        "PGUSER": unquote(parts.username or "") or query.get("user", ""),
        "PGPASSWORD": unquote(parts.password or "") or query.get("password", ""),
    }
    env.update({var: query[key] for key, var in _LIBPQ_QUERY.items() if key in query})
    return env


def migrations_fence(dsn: str, environment: str) -> proc.Fence:
    """The lock a migration command of `environment` holds on its database while it runs
    (see `bot.proc.Fence`): a second run — a retry, another replica taking the job over, an
    orphan of a killed bot on another host — waits for the first instead of running beside it.
    """
    database = command_environment(dsn)["PGDATABASE"]
    return proc.Fence(url=dsn, name=f"migrations:{database}",
                      what=f"the migrations of {environment}")


async def run_command(
    command: Sequence[str],
    *,
    dsn: str,
    timeout: float,
    emit: Emit | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    pass_env: Sequence[str] = (),
    environment: str | None = None,
) -> str:
    """Run the project's migration tool against `dsn`; its output tail (scrubbed) on success.

    The tool's environment: the allow-list of `bot.proc`, the variables named in `pass_env`
    and set in `env` (the blueprint's), then `DATABASE_URL` and the libpq variables, which win.
    With `environment` (its name), the run holds `migrations_fence` on the database, waiting —
    and saying so through `emit` — while an earlier run holds it.

    Raises `CommandFailed` (a PermanentError) on a non-zero exit, its reason naming the command
    and exit code and holding the last TAIL_LINES lines of output, passwords scrubbed;
    PermanentError when it times out or cannot be started; TemporaryError when its fence could
    not be taken or was lost while it ran.
    """
    if not command:
        raise PermanentError("the migration command is empty")
    name = Path(command[0]).name
    try:
        phase_env = command_environment(dsn)
    except ValueError:
        raise PermanentError("the database URL is not a postgresql:// URL") from None
    password = phase_env["PGPASSWORD"]
    redaction.register(password, quote(password, safe=""))
    fence = migrations_fence(dsn, environment) if environment else None

    def clean(text: str) -> str:
        return _hide(scrub(text), password)

    last_emit = float("-inf")

    async def on_line(line: str) -> None:
        nonlocal last_emit
        if emit is not None and line.strip() and time.monotonic() - last_emit >= _EMIT_EVERY:
            last_emit = time.monotonic()
            await emit(clean(line)[:200])

    async def on_wait() -> None:
        if emit is not None and fence is not None:
            await emit(fence.waiting_text())

    if emit is not None:
        await emit(f"running {name}")
    try:
        result = await proc.run(command, env={**(env or {}), **phase_env}, pass_env=pass_env,
                                cwd=cwd, timeout=timeout, on_line=on_line, fence=fence,
                                on_wait=on_wait)
    except proc.ProcTimeoutError as exc:
        tail = clean("\n".join(exc.output[-TAIL_LINES:]))
        raise PermanentError(clean(exc.reason) + (f"; last lines:\n{tail}" if tail else "")
                             ) from None
    tail = clean(result.tail(TAIL_LINES))
    if result.returncode != 0:
        how = (f"was killed by {_signal_name(-result.returncode)}" if result.returncode < 0
               else f"exited with code {result.returncode}")
        shown = f"; last lines:\n{tail}" if tail else " and printed nothing"
        raise CommandFailed(f"migration command {name} {how}{shown}",
                            returncode=result.returncode, output=tail)
    return tail


_RELEASE_REF = re.compile(r"\{release\.([A-Za-z0-9][A-Za-z0-9._-]*)\}")


def with_releases(command: Sequence[str], versions: Mapping[str, str]) -> list[str]:
    """`{release.<component>}` in the command's arguments replaced by the component's version in
    the environment's release set, so the schema matches the code being deployed. Raises
    PermanentError naming a component the set does not have."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in versions:
            known = ", ".join(sorted(versions)) or "none"
            raise PermanentError(f"the migration command uses {m.group(0)}, but the release set "
                                 f"has no component {m.group(1)} (it has: {known})")
        return versions[m.group(1)]

    return [_RELEASE_REF.sub(sub, arg) for arg in command]


def _hide(text: str, secret: str) -> str:
    """`secret` (and its URL-encoded form) replaced by `***` wherever it appears."""
    if not secret:
        return text
    for form in {secret, quote(secret, safe="")}:
        text = text.replace(form, "***")
    return text


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
