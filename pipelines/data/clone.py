"""Per-environment copies of a golden database: clone, adopt, a warm pool of ready clones, reset.

Why: a snapshot is built once into a *golden* database on the target server (marked
`IS_TEMPLATE true, ALLOW_CONNECTIONS false`, so nobody can be connected to it while it is being
copied). Every environment then gets its own copy made by the server itself
(`CREATE DATABASE … TEMPLATE golden`): files or pages are copied inside PostgreSQL, with no
dump, no restore and no index rebuild, so it costs seconds where `pg_dump | pg_restore` costs
minutes. The copy still grows with the size of the golden database, so a `WarmPool` keeps a few
clones ready per golden database: a new environment takes one by renaming it — a catalog update,
whatever the size. `adopt` then gives every object in the copy to the environment's own role, and
`reset_database` throws an environment's data away and does it all again.

How a copy is made (`clone_database`): PostgreSQL 15 added `STRATEGY`. `WAL_LOG` (the default)
copies page by page through shared buffers and WAL-logs every page: no checkpoint, so it is the
quickest for small databases, but its cost (and the WAL it writes, which replicas and archives
must also swallow) grows with size. `FILE_COPY` copies the files, bracketed by two checkpoints:
a fixed cost that pays off once the database is big. On PostgreSQL 18, `file_copy_method = clone`
makes `FILE_COPY` use `copy_file_range()` — a reflink (copy-on-write, near-instant) on Btrfs, XFS
and ZFS, an in-kernel copy elsewhere (on ext4 no faster than a plain copy) — and when the
filesystem refuses, we fall back to a plain copy and remember that for the server.

`clone_method` finds out once per server which it is: PostgreSQL 18 or later, the setting
accepted, and a data directory on a filesystem that reflinks (read from the server's own
`/proc/self/mountinfo`). Where all three hold, every clone is a reflink `FILE_COPY`, whose time
does not grow with the size of the database; elsewhere the strategy follows the size as above.
`ephem doctor` prints the method and the reason.

Neighbours: `pipelines.data.postgres` creates the environment's role (the owner passed to
`adopt`); `pipelines.data.snapshot` builds the golden databases; the scheduler refills and drains
pools. Failures are `TemporaryError` / `PermanentError` with password-free reasons, like the rest
of the data phase.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from bot.errors import PermanentError
from bot.pg import quote_ident, quote_literal, with_database
from pipelines.data import pgconn

log = logging.getLogger(__name__)


# Below this size a golden database is copied with WAL_LOG, from it on with FILE_COPY. WAL_LOG pays
# per page, and writes the whole copy into WAL a second time (which replicas, archives and backups
# must swallow too). FILE_COPY pays two forced checkpoints plus a file copy, and a checkpoint must
# first write out every dirty buffer of every database on the server. Measured with bench/clone.py
# (ext4; PostgreSQL 15 and 18): on an idle server the two meet near 40 MB and FILE_COPY is 2-5x
# faster from 250 MB on (1 GB: 5.2 s against 1.0 s on 15); with 100 MB of other data dirty,
# FILE_COPY's checkpoints add 0.3-1.5 s and the crossover moves to about 250 MB. So: small clones
# stay off checkpoints even on a busy server, large ones stay out of WAL.
FILE_COPY_THRESHOLD = 256 * 1024 * 1024

WAL_LOG = "WAL_LOG"
FILE_COPY = "FILE_COPY"
FILE_COPY_CLONE = "FILE_COPY+clone"  # FILE_COPY with file_copy_method = clone (PostgreSQL 18)
EXISTING = "existing"  # the target was there already: nothing copied
_STRATEGIES = (WAL_LOG, FILE_COPY)

# Servers (host:port) whose filesystem refused file_copy_method = clone: not tried again.
_CLONE_REFUSED: set[str] = set()

# SQLSTATE classes and codes worth retrying (as in pipelines.data.postgres): connection trouble,
# out of resources, shutting down or starting, an object in use or a lock held, a deadlock.


@dataclass(frozen=True)
class CloneResult:
    """One `clone_database`: how long it took, how it copied, and the template's size."""

    seconds: float
    strategy: str  # WAL_LOG, FILE_COPY, FILE_COPY+clone, or "existing" (nothing to do)
    bytes: int  # size of the golden database (0 if "existing", or if the server would not say)

    @property
    def created(self) -> bool:
        return self.strategy != EXISTING


@dataclass(frozen=True)
class ResetResult:
    """One `reset_database`: which way the new copy came, and the seconds of each step."""

    source: str  # "pool" (a ready clone renamed) or "clone" (copied now)
    drop_seconds: float
    create_seconds: float
    adopt_seconds: float
    clone: CloneResult | None  # set when source is "clone"

    @property
    def total_seconds(self) -> float:
        return self.drop_seconds + self.create_seconds + self.adopt_seconds


# ---------------------------------------------------------------------------------------------
# Cloning


async def clone_database(admin_url: str, *, template: str, target: str,
                         strategy: str | None = None) -> CloneResult:
    """`CREATE DATABASE target TEMPLATE template`, with the strategy chosen by the template's size
    (or `strategy`: `WAL_LOG` / `FILE_COPY`). A target that exists already is left as it is."""
    forced = _strategy(strategy)
    async with pgconn.connect(admin_url) as conn:
        return await _clone(conn, template=template, target=target, strategy=forced,
                            where=pgconn.where(admin_url))


def _strategy(strategy: str | None) -> str | None:
    if strategy is None:
        return None
    upper = strategy.upper()
    if upper not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}")
    return upper


def choose_strategy(size: int | None, *, server_version: int) -> str:
    """The STRATEGY for a template of `size` bytes on a server of that major version."""
    if server_version < 15:
        return FILE_COPY  # the only way before 15 (no STRATEGY clause)
    if size is None:
        return WAL_LOG  # the server's own default
    return FILE_COPY if size >= FILE_COPY_THRESHOLD else WAL_LOG


async def _clone(conn: Any, *, template: str, target: str, strategy: str | None, where: str,
                 allow_connections: bool = True) -> CloneResult:
    started = time.monotonic()
    if await _exists(conn, target):
        return CloneResult(seconds=time.monotonic() - started, strategy=EXISTING, bytes=0)
    if not await _exists(conn, template):
        raise PermanentError(f"golden database {template} does not exist on {where}")
    size = await _size(conn, template)
    version = conn.get_server_version().major
    method = await _method(conn, where)
    chosen = strategy or (FILE_COPY if method.reflink else
                          choose_strategy(size, server_version=version))
    sql = f"CREATE DATABASE {quote_ident(target)} TEMPLATE {quote_ident(template)}"
    if version >= 15:
        sql += f" STRATEGY = {chosen}"
    if not allow_connections:
        sql += " ALLOW_CONNECTIONS = false"
    cloning = chosen == FILE_COPY and version >= 18 and await _set_clone(conn, where)
    try:
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            if not cloning or not _clone_refused(exc):
                raise
            # The filesystem cannot clone (or not across these directories); the server removed
            # the half-made copy. Copy plainly, and do not try cloning on this server again.
            log.warning("file_copy_method = clone failed on %s (%s); copying instead",
                        where, _first_line(exc))
            _CLONE_REFUSED.add(where)
            await conn.execute("SET file_copy_method = copy")
            cloning = False
            await conn.execute(sql)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # Made concurrently by another caller (the server says one or the other): fine.
        return CloneResult(seconds=time.monotonic() - started, strategy=EXISTING, bytes=0)
    finally:
        if version >= 18 and chosen == FILE_COPY:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                await conn.execute("RESET file_copy_method")
    seconds = time.monotonic() - started
    used = FILE_COPY_CLONE if cloning else chosen
    log.info("cloned %s into %s: %s, %d bytes, %.2f s", template, target, used, size or 0,
             seconds)
    return CloneResult(seconds=seconds, strategy=used, bytes=size or 0)


# ---------------------------------------------------------------------------------------------
# Which way this server copies: reflink (constant time), or by size


# Filesystems whose copy_file_range() shares extents instead of copying them: Btrfs always, XFS
# when made with reflink=1 (mkfs.xfs's default since xfsprogs 5.1), ZFS with block cloning
# (OpenZFS 2.2 and later), bcachefs.
REFLINK_FILESYSTEMS = frozenset({"btrfs", "xfs", "zfs", "bcachefs"})


@dataclass(frozen=True)
class CloneMethod:
    """How `clone_database` copies on a server, and why (for `ephem doctor` and the log)."""

    reflink: bool  # FILE_COPY with file_copy_method = clone for every size
    filesystem: str | None  # of the data directory, when the server lets us read it
    reason: str

    def __str__(self) -> str:
        how = ("FILE_COPY with file_copy_method = clone: a reflink copy, constant time at any "
               "size" if self.reflink else
               f"WAL_LOG below {FILE_COPY_THRESHOLD // 2**20} MB, FILE_COPY from there on "
               "(time grows with size; the warm pool hides it)")
        return f"{how} — {self.reason}"


_METHODS: dict[str, CloneMethod] = {}  # per server (host:port), found once per process


async def clone_method(admin_url: str) -> CloneMethod:
    """How this server's clones are made, and why: PostgreSQL 18 or later, `file_copy_method
    = clone` accepted, and a data directory on a filesystem that reflinks (read from the
    server's own `/proc/self/mountinfo`, which needs superuser or pg_read_server_files)."""
    async with pgconn.connect(admin_url) as conn:
        return await _method(conn, pgconn.where(admin_url), fresh=True)


async def _method(conn: Any, where: str, *, fresh: bool = False) -> CloneMethod:
    if not fresh and where in _METHODS:
        return _METHODS[where]
    method = await _detect_method(conn)
    _METHODS[where] = method
    return method


async def _detect_method(conn: Any) -> CloneMethod:
    version = conn.get_server_version()
    if version.major < 18:
        return CloneMethod(False, None, f"PostgreSQL {version.major} has no "
                                        "file_copy_method (PostgreSQL 18 and later)")
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL file_copy_method = clone")
    except asyncpg.PostgresError as exc:
        return CloneMethod(False, None, f"this server refuses file_copy_method = clone "
                                        f"({_first_line(exc)})")
    try:
        directory = str(await conn.fetchval("SELECT current_setting('data_directory')"))
        mounts = str(await conn.fetchval("SELECT pg_read_file('/proc/self/mountinfo')"))
    except asyncpg.PostgresError as exc:
        return CloneMethod(False, None, "cannot tell whether the data directory's filesystem "
                                        f"reflinks ({_first_line(exc)}; it takes superuser or "
                                        "pg_read_server_files)")
    filesystem, mount_point = filesystem_of(directory, mounts)
    if filesystem is None:
        return CloneMethod(False, None, f"no mount found for the data directory {directory}")
    where = f"data directory {directory} on {filesystem} ({mount_point})"
    if filesystem in REFLINK_FILESYSTEMS:
        return CloneMethod(True, filesystem, f"PostgreSQL {version.major}, {where}")
    return CloneMethod(False, filesystem, f"{where}, which cannot reflink (Btrfs, XFS with "
                                          "reflink, ZFS and bcachefs can)")


def filesystem_of(path: str, mountinfo: str) -> tuple[str | None, str]:
    """(filesystem type, mount point) of the mount holding `path`, from /proc/self/mountinfo
    text: the longest mount point that is `path` or one of its parents."""
    best: tuple[str | None, str] = (None, "")
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        fstype = fields[fields.index("-") + 1]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (fstype, point)
    return best


async def _exists(conn: Any, database: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database))


async def _size(conn: Any, database: str) -> int | None:
    """pg_database_size needs CONNECT on the database (or pg_read_all_stats); None without."""
    try:
        return int(await conn.fetchval("SELECT pg_database_size($1::text)", database))
    except asyncpg.InsufficientPrivilegeError:
        return None


async def _set_clone(conn: Any, where: str) -> bool:
    """Whether this session now has file_copy_method = clone (PostgreSQL 18, built with
    copy_file_range or copyfile, on a server whose filesystem has not refused it before)."""
    if where in _CLONE_REFUSED:
        return False
    try:
        await conn.execute("SET file_copy_method = clone")
    except asyncpg.PostgresError:
        return False  # unknown setting, or "not supported on this platform"
    return True


def _clone_refused(exc: asyncpg.PostgresError) -> bool:
    """A copy that failed because of cloning. PostgreSQL says "could not clone file …" with a
    SQLSTATE taken from errno (EOPNOTSUPP and EXDEV give XX000), so the text is what tells."""
    return str(getattr(exc, "message", "") or exc).startswith("could not clone file")


# ---------------------------------------------------------------------------------------------
# Adopting: the environment's role owns everything in its copy

_OWNER = "(SELECT oid FROM pg_roles WHERE rolname = $1::text)"
_NOT_SYSTEM = "n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
            f"AND e.objid = {oid} AND e.deptype = 'e')")


# One statement per object whose owner is not the new owner ($1), schema-qualified because the
# query runs with an empty search_path. Left to their parents: indexes and TOAST tables (tables),
# sequences owned by a column (serial, identity: ALTER TABLE moves them and ALTER SEQUENCE
# refuses), row types of tables, array types (their element type), and everything an extension
# owns. Multiranges only when $2: PostgreSQL 18 moves a range's multirange with it and refuses to
# alter one directly, PostgreSQL 15 does neither — so they are asked for in a second pass, after
# the ranges moved, and only the ones left behind come back. Schemas come first: a non-superuser
# admin may give an object only to a role with CREATE on its schema.
_OWNERSHIP_SQL = f"""
SELECT 1, format('ALTER SCHEMA %I OWNER TO %I', n.nspname, $1::text)
  FROM pg_namespace n
 WHERE {_NOT_SYSTEM} AND n.nspowner <> {_OWNER}
   AND {_not_extension_member('pg_namespace', 'n.oid')}
UNION ALL
SELECT 2, format('ALTER %s %s OWNER TO %I',
              CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype, $1::text)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE {_NOT_SYSTEM} AND t.typowner <> {_OWNER}
   AND t.typisdefined AND (t.typtype <> 'm' OR $2)
   AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
   AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.typarray = t.oid)
   AND {_not_extension_member('pg_type', 't.oid')}
UNION ALL
SELECT 3, format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END,
              c.oid::regclass, $1::text)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {_NOT_SYSTEM} AND c.relowner <> {_OWNER}
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND NOT (c.relkind = 'S' AND EXISTS (
            SELECT 1 FROM pg_depend d
             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
   AND {_not_extension_member('pg_class', 'c.oid')}
UNION ALL
SELECT 4, format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, $1::text)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE {_NOT_SYSTEM} AND p.proowner <> {_OWNER}
   AND {_not_extension_member('pg_proc', 'p.oid')}
ORDER BY 1
"""


async def adopt(admin_url: str, *, database: str, owner: str) -> None:
    """Make `database` wholly `owner`'s: the database, and in it every schema (but the system
    ones), table, sequence, view, materialized view, function and type; and no CONNECT for
    PUBLIC. Statements come from the catalogs (REASSIGN OWNED would also move whatever else the
    old owner owns on the server). Safe to repeat."""
    where = pgconn.where(admin_url)
    db, role = quote_ident(database), quote_ident(owner)
    async with pgconn.connect(admin_url) as conn:
        if not await _exists(conn, database):
            raise PermanentError(f"database {database} does not exist on {where}")
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner):
            raise PermanentError(f"role {owner} does not exist on {where}")
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            # A non-superuser may only give objects to a role it is a member of.
            await conn.execute(f"GRANT {role} TO CURRENT_USER")
        await conn.execute(f"ALTER DATABASE {db} OWNER TO {role}")
        # A pool clone is made without connections; a take cut short may have left it so.
        await conn.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
    async with pgconn.connect(with_database(admin_url, database)) as conn, conn.transaction():
        await conn.execute("SELECT set_config('search_path', '', true)")
        moved = 0
        for multiranges in (False, True):
            statements = [row[1] for row in await conn.fetch(_OWNERSHIP_SQL, owner, multiranges)]
            if statements:
                await conn.execute(";\n".join(statements))
            moved += len(statements)
    log.info("adopted %s for %s: %d objects", database, owner, moved)


# ---------------------------------------------------------------------------------------------
# The warm pool


# A member's name is prefix + "pool_" + 12 hex digits + "_" + a number: within PostgreSQL's
# 63 characters for up to 999 members.
_MAX_POOL_PREFIX = 63 - len("pool_") - 12 - len("_999")


class WarmPool:
    """Ready clones of golden databases, taken by renaming so a new environment waits for no copy.

    A member is `{prefix}pool_{hash of the template name}_{n}`, made with ALLOW_CONNECTIONS false
    (so nothing can be connected to it, which a rename and a drop both need) and commented
    `{"pool_of": template}`. It counts as ready once commented. Taking is a rename: of two takers
    racing for one member, the server lets exactly one rename it and tells the other it no longer
    exists, so that one moves on to the next member. Filling and draining a template hold a
    session advisory lock on it, so two fillers never overshoot and a drain never races a fill.
    """

    def __init__(self, admin_url: str, *, prefix: str) -> None:
        if len(prefix) > _MAX_POOL_PREFIX:
            raise ValueError(f"a pool prefix has at most {_MAX_POOL_PREFIX} characters")
        self._admin_url = admin_url
        self._prefix = prefix
        self._where = pgconn.where(admin_url)

    def member_prefix(self, template: str) -> str:
        """Names of `template`'s pool members start with this."""
        digest = hashlib.sha256(template.encode()).hexdigest()[:12]
        return f"{self._prefix}pool_{digest}_"

    async def ready(self, template: str) -> int:
        """How many clones of `template` are ready to take."""
        async with pgconn.connect(self._admin_url) as conn:
            return len(await self._members(conn, template, ready_only=True))

    async def fill(self, template: str, size: int) -> int:
        """Clone `template` until `size` clones are ready; how many were made now."""
        made = 0
        async with pgconn.connect(self._admin_url) as conn, self._locked(conn, template):
            members = await self._members(conn, template, ready_only=False)
            numbers = {_number(name) for name, _ in members}
            for name, pool_of in members:
                if pool_of is None:  # made by a fill that stopped before commenting it
                    await self._mark(conn, name, template)
            ready = len(members)
            n = 0
            while ready + made < size:
                n += 1
                if n in numbers:
                    continue
                name = f"{self.member_prefix(template)}{n}"
                result = await _clone(conn, template=template, target=name, strategy=None,
                                      where=self._where, allow_connections=False)
                if result.created:
                    await self._mark(conn, name, template)
                    made += 1
        return made

    async def take(self, template: str, target: str) -> bool:
        """Claim a ready clone of `template` and rename it `target`. False when none was taken:
        the pool is empty, or `target` exists already (then there is nothing to make)."""
        async with pgconn.connect(self._admin_url) as conn:
            if await _exists(conn, target):
                return False
            for name, _ in await self._members(conn, template, ready_only=True):
                try:
                    async with conn.transaction():
                        await conn.execute(f"ALTER DATABASE {quote_ident(name)} "
                                           f"RENAME TO {quote_ident(target)}")
                        await conn.execute(f"ALTER DATABASE {quote_ident(target)} "
                                           "ALLOW_CONNECTIONS true")
                        await conn.execute(f"COMMENT ON DATABASE {quote_ident(target)} IS NULL")
                except asyncpg.InvalidCatalogNameError:
                    continue  # another taker (or a drain) got there first
                except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                    return False  # target made meanwhile by someone else
                log.info("took %s from the pool of %s as %s", name, template, target)
                return True
        return False

    async def drain(self, template: str | None = None) -> int:
        """Drop the pool of `template` — or, with None, the pools of templates that no longer
        exist. How many databases were dropped."""
        dropped = 0
        async with pgconn.connect(self._admin_url) as conn:
            if template is not None:
                templates = [template]
            else:
                rows = await conn.fetch(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE starts_with(datname, $1) AND NOT datallowconn",
                    f"{self._prefix}pool_")
                gone = {t for t in (_pool_of(r[0]) for r in rows) if t is not None}
                templates = [t for t in sorted(gone) if not await _exists(conn, t)]
            force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
            for name_of in templates:
                async with self._locked(conn, name_of):
                    for name, _ in await self._members(conn, name_of, ready_only=False):
                        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}{force}")
                        dropped += 1
        return dropped

    async def _members(self, conn: Any, template: str, *,
                       ready_only: bool) -> list[tuple[str, str | None]]:
        """(name, pool_of) of the template's members, lowest number first; a member not yet
        commented has pool_of None and is ready only once it is. Members never allow
        connections, so an environment's database is never mistaken for one, whatever its
        name."""
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE starts_with(datname, $1) AND NOT datallowconn", self.member_prefix(template))
        members = [(row[0], _pool_of(row[1])) for row in rows if _number(row[0]) > 0]
        members = [(name, of) for name, of in members if of in (template, None)]
        if ready_only:
            members = [(name, of) for name, of in members if of == template]
        return sorted(members, key=lambda member: _number(member[0]))

    async def _mark(self, conn: Any, name: str, template: str) -> None:
        comment = quote_literal(json.dumps({"pool_of": template}))
        await conn.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {comment}")

    @asynccontextmanager
    async def _locked(self, conn: Any, template: str) -> AsyncIterator[None]:
        key = _lock_key(template)
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        try:
            yield
        finally:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                await conn.execute("SELECT pg_advisory_unlock($1)", key)


def _number(name: str) -> int:
    """The member number at the end of a pool name (0 when it has none)."""
    tail = name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else 0


def _pool_of(comment: str | None) -> str | None:
    if not comment:
        return None
    try:
        value = json.loads(comment)
    except ValueError:
        return None
    of = value.get("pool_of") if isinstance(value, dict) else None
    return of if isinstance(of, str) else None


def _lock_key(template: str) -> int:
    digest = hashlib.sha256(b"ephem-pool:" + template.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# ---------------------------------------------------------------------------------------------
# Reset


async def reset_database(admin_url: str, *, database: str, template: str,
                         pool: WarmPool | None, owner: str) -> ResetResult:
    """Throw the environment's database away and make it again from `template`: a ready clone
    from `pool` when there is one, else a copy now; then `adopt` it for `owner`."""
    started = time.monotonic()
    async with pgconn.connect(admin_url) as conn:
        await pgconn.drop_database(conn, database)
    dropped = time.monotonic()
    clone: CloneResult | None = None
    if pool is None or not await pool.take(template, database):
        clone = await clone_database(admin_url, template=template, target=database)
    created = time.monotonic()
    await adopt(admin_url, database=database, owner=owner)
    adopted = time.monotonic()
    return ResetResult(source="clone" if clone is not None else "pool",
                       drop_seconds=dropped - started, create_seconds=created - dropped,
                       adopt_seconds=adopted - created, clone=clone)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


