"""Building a snapshot: a masked, subsetted copy of the source in a new golden database.

Why: environments get production-like data in seconds only if the expensive part — reading
production, masking it, building indexes — happens once, ahead of time, into a template the
server can copy (`pipelines.data.clone`). This module is that once:

1. lint: every column the detector flags needs a rule, or nothing is copied (and a schema the
   lint did not look at stops the build too); it runs beside steps 2 and 3 up to the copy;
2. read the source in one `REPEATABLE READ READ ONLY` transaction whose snapshot is exported
   and imported by every session that reads rows (as `pg_dump -j` does), so parallel copiers
   see one consistent state; compute the subset there (`subset`);
3. create `{prefix}snap_{name}_{YYYYmmddHHMMSS}` from `template0` (while the catalog is read)
   with bare tables (`schema`), sample the source's personal values for the leak check
   (`leaks`), and copy every table's kept rows through the maskers with COPY, biggest tables
   first (`copy`; memory stays flat: bounded queues, nothing fetched whole), searching the
   masked rows for the sampled values on the way. A full copy hands each table — a big one in
   ranges of pages — to a masking process that reads, masks and writes on connections of its
   own (`copy.run_job`); a subset streams through this process's sessions and is masked in
   the same processes block by block. As soon as a table is loaded, its keys, checks and
   indexes are built and it is ANALYZEd while others still load;
4. refuse the snapshot if the leak search found anything, then foreign keys (validated),
   views, triggers, sequence positions;
5. record the metadata as the database's comment, make it a template nobody may connect to,
   and drop all but the newest `config.keep` snapshots of this name (`golden`) together with
   their warm pools (`clone.WarmPool`) — wherever the build runs: `serve`, the CLI, the demo.

Any failure, cancellation included, drops the half-built database. One build per name runs at a
time (an advisory lock on the target server). The masking key and the source's password never
appear in a log line or an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from bot.config import SnapshotConfig
from bot.errors import ConfigError, PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, quote_literal, scrub, with_database
from pipelines.data import golden, leaks, pgconn, schema, subset
from pipelines.data.catalog import Catalog, Table, read_catalog
from pipelines.data.clone import WarmPool
from pipelines.data.copy import (
    ColumnMaskingError,
    CopyJob,
    CopyStats,
    Finder,
    MaskPlan,
    RowMasker,
    first_error,
    install_finder,
    join_snapshot,
    pipe,
    run_job,
)
from pipelines.data.detect import lint
from pipelines.data.golden import SnapshotInfo, latest_snapshot, list_snapshots
from pipelines.data.masking import make_masker
from pipelines.data.rules import ColumnRule, Rules, load_rules

__all__ = ["BuildProgress", "SnapshotInfo", "build_snapshot", "latest_snapshot",
           "list_snapshots"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
SPLIT_BYTES = 32 * 1024 * 1024  # a table copied whole and bigger is copied in parts (`_parts`)
SAMPLERS = 3  # source sessions reading a full copy's leak sample at once
LOCK_TIMEOUT = "60s"  # waiting for the source's tables (a migration holding them, say)
_TEMPORARY_CLASSES = ("08", "53", "57", "40")
_TEMPORARY_CODES = ("55006", "55P03")

W = TypeVar("W")
T = TypeVar("T")


@dataclass(frozen=True)
class BuildProgress:
    """Sent after each table is copied."""

    tables_done: int
    tables_total: int
    rows: int
    rows_per_second: float
    eta_seconds: float | None
    table: str


Progress = Callable[[BuildProgress], Awaitable[None]]


async def build_snapshot(*, name: str, config: SnapshotConfig, target_admin_url: str,
                         prefix: str, key: bytes,
                         progress: Progress | None = None,
                         split_bytes: int = SPLIT_BYTES) -> SnapshotInfo:
    """Build snapshot `name` from `config` into a new golden database on the server behind
    `target_admin_url`. Raises PermanentError (lint findings, a leak, a constraint that the
    masked data breaks, …) or TemporaryError (a server unreachable or busy); either way,
    nothing is left behind."""
    started, clock = datetime.now(UTC), time.monotonic()
    golden.database_name(prefix, name, at=started)  # the name is valid and fits
    if not key:
        raise PermanentError("the masking key is empty (set EPHEM_MASKING_KEY)")
    try:
        rules = load_rules(config.rules)
    except ConfigError as exc:
        raise PermanentError(str(exc)) from None

    async def linted() -> tuple[set[tuple[str, str]], float]:
        report = await lint(asyncpg_dsn(config.source), rules)
        if not report.ok:
            raise PermanentError(f"snapshot {name} needs rules first:\n{report.render()}")
        return {(f.table, f.column) for f in report.findings}, time.monotonic()

    # The lint runs while the build opens the source and makes the tables; nothing is copied
    # before it passed (a failing lint drops what was made, as any failure does).
    checked = asyncio.ensure_future(linted())
    build = _Build(name=name, config=config, rules=rules, key=key, prefix=prefix,
                   target_admin_url=target_admin_url, progress=progress, lint=checked,
                   split_bytes=split_bytes)
    try:
        return await build.run(started=started, clock=clock)
    except (PermanentError, TemporaryError):
        raise
    except asyncpg.PostgresError as exc:
        raise _classify(exc) from None
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        raise TemporaryError(f"lost a database connection during the build "
                             f"({type(exc).__name__}: {scrub(str(exc))[:200]})") from None
    finally:
        await _settled(checked)


def _classify(exc: asyncpg.PostgresError) -> TemporaryError | PermanentError:
    state = str(getattr(exc, "sqlstate", "") or "")
    message = scrub(str(getattr(exc, "message", "") or type(exc).__name__)).splitlines()[0]
    reason = f"snapshot build failed: {message[:200]}"
    if state.startswith(_TEMPORARY_CLASSES) or state in _TEMPORARY_CODES:
        return TemporaryError(reason)
    return PermanentError(f"{reason} ({state or type(exc).__name__})")


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise TemporaryError(f"cannot reach PostgreSQL at {pgconn.location(url)} "
                             f"({type(exc).__name__})") from None


async def _settled(task: asyncio.Future[Any]) -> None:
    """A task started beside the build is over when the build leaves: cancelled if it still
    runs, and waited for. Its error, if any, was raised where it was awaited."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _close(conns: Iterable[Any]) -> None:
    for conn in conns:
        try:
            await asyncio.wait_for(conn.close(), timeout=CONNECT_TIMEOUT)
        except asyncio.CancelledError:
            conn.terminate()
            raise
        except Exception:
            conn.terminate()


async def _parallel(workers: Sequence[W], items: Iterable[T], *,
                    job: Callable[[W, T], Awaitable[None]]) -> None:
    """Run `job` over `items`, each worker taking the next item when it is free."""
    todo = collections.deque(items)

    async def run(worker: W) -> None:
        while todo:
            await job(worker, todo.popleft())

    async with first_error(), asyncio.TaskGroup() as group:
        for worker in workers:
            group.create_task(run(worker))


class _Steps:
    """Logs how long each step of a build took, and keeps it for `SnapshotInfo.steps`."""

    def __init__(self, name: str) -> None:
        self.name, self.last = name, time.monotonic()
        self.seconds: dict[str, float] = {}

    def done(self, step: str, what: str = "") -> None:
        now = time.monotonic()
        self.seconds[step] = round(now - self.last, 3)
        log.info("snapshot %s: %s took %.2f s", self.name, what or step, now - self.last)
        self.last = now


class _Build:
    """One build's connections and state (see the module docstring for the steps)."""

    def __init__(self, *, name: str, config: SnapshotConfig, rules: Rules, key: bytes,
                 prefix: str, target_admin_url: str, progress: Progress | None,
                 lint: Awaitable[tuple[set[tuple[str, str]], float]],
                 split_bytes: int = SPLIT_BYTES) -> None:
        self.name, self.config, self.rules, self.key = name, config, rules, key
        self.lint = lint  # the lint: (table, column) the detector flagged, and when it ended
        self.flagged: set[tuple[str, str]] = set()
        self.prefix, self.admin_url, self.progress = prefix, target_admin_url, progress
        self.coordinator: Any = None
        self.readers: list[Any] = []
        self.writers: list[Any] = []
        self.database: str | None = None
        self.coordinator_lock = asyncio.Lock()
        self.snapshot_id = ""  # the coordinator's exported snapshot
        self.split_bytes = split_bytes
        self.pool: ProcessPoolExecutor | None = None
        self.finder: Finder | None = None  # the leak search, when anything was sampled
        self.found: list[leaks.Leak] = []  # leaks found so far

    async def run(self, *, started: datetime, clock: float) -> SnapshotInfo:
        try:
            return await self._run(started=started, clock=clock)
        finally:
            if self.pool is not None:
                # Waited for: its processes hold at most one block each by now (milliseconds),
                # and a pool left running breaks the interpreter's exit ("Bad file
                # descriptor" from the executor's exit hook).
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None

    def _start_pool(self, finder: Finder | None) -> None:
        """Masking and the leak search are CPU-bound Python: they run in worker processes
        (one per core) while this process streams rows in and out. Forked, so the workers
        start at once; each gets the leak finder once, as it starts."""
        self.pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 2,
                                        mp_context=multiprocessing.get_context("fork"),
                                        initializer=install_finder, initargs=(finder,))

    async def _run(self, *, started: datetime, clock: float) -> SnapshotInfo:
        admin = await _connect(self.admin_url)
        try:
            if not await golden.build_lock(admin, prefix=self.prefix, name=self.name):
                raise TemporaryError(f"snapshot {self.name} is being built already", delay=60)
            for db in await golden.leftovers(admin, prefix=self.prefix, name=self.name):
                log.warning("dropping %s, left behind by a build that did not finish", db)
                await golden.drop(admin, db)
            try:
                info = await self._build(admin, started=started, clock=clock)
            except BaseException:
                await self._abandon(admin)
                raise
            await self._retain(admin)
            return info
        finally:
            await _close([admin])

    async def _retain(self, admin: Any) -> None:
        """Drop all but the newest `keep` snapshots of this name, each with its warm pool, and
        any pool whose golden database is gone (left by an earlier build or a crash)."""
        try:
            dropped = await golden.retain(admin, prefix=self.prefix, name=self.name,
                                          keep=self.config.keep)
            pool = WarmPool(self.admin_url, prefix=self.prefix)
            clones = 0
            for database in dropped:
                clones += await pool.drain(database)
            clones += await pool.drain()
            if dropped or clones:
                log.info("snapshot %s: dropped older %s and %d pooled clone(s)", self.name,
                         ", ".join(dropped) or "snapshots: none", clones)
        except (asyncpg.PostgresError, PermanentError, TemporaryError) as exc:
            log.warning("snapshot %s: retention failed, retried after the next build: %s",
                        self.name, scrub(str(exc)))

    async def _abandon(self, admin: Any) -> None:
        """Cut every connection and drop the half-built database (also when cancelled)."""
        for conn in (self.coordinator, *self.readers, *self.writers):
            if conn is not None:
                conn.terminate()  # mid-COPY, a polite close could wait; nothing to keep
        self.coordinator, self.readers, self.writers = None, [], []
        if self.database is not None:
            database, self.database = self.database, None
            try:
                await asyncio.shield(golden.drop(admin, database))
                log.info("dropped the half-built snapshot database %s", database)
            except Exception as exc:
                log.error("could not drop the half-built snapshot database %s: %s",
                          database, scrub(str(exc)))

    async def _build(self, admin: Any, *, started: datetime, clock: float) -> SnapshotInfo:
        step = _Steps(self.name)
        step.seconds["lint"] = 0.0  # filled in below: the lint runs alongside the next steps
        # The database is made while the source's catalog is read (it needs only the
        # source's encoding).
        opening = asyncio.ensure_future(self._open_source())
        try:
            self.database = await golden.free_name(admin, prefix=self.prefix, name=self.name,
                                                   at=started)
            await self._create_database(admin, await self._source_encoding())
            catalog, kept = await opening
        finally:
            await _settled(opening)
        step.done("source", "source schema and subset, and the database")
        # The leak sample is taken while the tables are made and the lint finishes: of every
        # column it could need, since which flagged columns it needs is the lint's answer.
        every = {(t.display, c) for t in catalog.tables.values() for c in t.copy_columns}
        sampling = asyncio.ensure_future(self._sample(
            catalog, kept, leaks.sampled_columns(catalog, self.rules, flagged=every)))
        try:
            values, self.found = await self._tables_and_sample(
                catalog, kept, step, clock=clock, sampling=sampling)
        finally:
            await _settled(sampling)
        if any(values.values()):
            self.finder = functools.partial(leaks.find, leaks.Haystack.build(values))
        self._start_pool(self.finder)
        step.done("leak sample", "sampling the source for the leak check")
        rows = await self._copy(catalog, kept)
        step.done("copy", f"copy, leak search, keys and indexes ({rows} rows)")
        assert self.database is not None
        await _close([self.coordinator, *self.readers])
        self.coordinator, self.readers = None, []
        if self.found:
            raise PermanentError(f"leak check failed, the snapshot was discarded: "
                                 f"{leaks.describe(sorted(self.found, key=str))}")
        await self._post_data(catalog)
        step.done("constraints", "foreign keys, views, triggers, sequences")
        await _close(self.writers)
        self.writers = []
        info = SnapshotInfo(
            name=self.name, database=self.database, built_at=started,
            tables=len(catalog.tables), rows=rows,
            bytes=await admin.fetchval("SELECT pg_database_size($1)", self.database),
            seconds=round(time.monotonic() - clock, 3), steps=step.seconds)
        await golden.finish(admin, info, source=pgconn.location(self.config.source),
                            rules_sha256=hashlib.sha256(self.config.rules.read_bytes()
                                                        ).hexdigest())
        log.info("snapshot %s built: %s (%d tables, %d rows, %.1f s)", self.name,
                 info.database, info.tables, info.rows, info.seconds)
        return info

    async def _tables_and_sample(
            self, catalog: Catalog, kept: subset.Subset, step: _Steps, *, clock: float,
            sampling: Awaitable[tuple[dict[str, list[str]], list[leaks.Leak]]]
    ) -> tuple[dict[str, list[str]], list[leaks.Leak]]:
        """Make the tables, wait for the lint, and keep what the sample found in the columns
        the lint's findings make it look at."""
        assert self.database is not None
        url = with_database(self.admin_url, self.database)
        for _ in range(self.config.workers):
            self.writers.append(await _connect(url))
            await schema.prepare_session(self.writers[-1])
        await schema.apply_in_order(self.writers[0], schema.pre_data(catalog))
        step.done("tables", "database and tables")
        self.flagged, lint_ended = await self.lint
        step.seconds["lint"] = round(lint_ended - clock, 3)
        step.last = time.monotonic()  # what waiting for the lint took is part of the lint
        wanted = {f"{t.display}.{c}" for t, c, _ in
                  leaks.sampled_columns(catalog, self.rules, flagged=self.flagged)}
        values, unchanged = await sampling
        return ({source: found for source, found in values.items() if source in wanted},
                [leak for leak in unchanged if leak.column in wanted])

    async def _open_source(self) -> tuple[Catalog, subset.Subset]:
        """The coordinator's transaction, its exported snapshot imported by the readers; the
        catalog and the subset, read in it."""
        self.coordinator = conn = await _connect(self.config.source)
        await subset.prepare_coordinator(conn)
        await conn.execute(
            "SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; "
            f"SET lock_timeout = '{LOCK_TIMEOUT}'; "
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = ''")
        tables = await conn.fetch(
            "SELECT c.oid::regclass::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%'")
        if tables:  # as pg_dump does: no DDL on them until the build has read them
            await conn.execute(f"LOCK TABLE {', '.join(r[0] for r in tables)} "
                               "IN ACCESS SHARE MODE")
        snapshot_id = self.snapshot_id = await conn.fetchval("SELECT pg_export_snapshot()")
        catalog = await read_catalog(conn)
        kept = await subset.compute(conn, catalog, roots=self.rules.roots,
                                    children=self.rules.children)
        # A full copy's rows are read by the masking processes on connections of their own
        # (`copy.run_job`); a subset's by these sessions, which its kept keys are shipped to.
        for _ in range(0 if kept.everything else self.config.workers):
            reader = await _connect(self.config.source)
            self.readers.append(reader)
            await subset.prepare_worker(reader)
            await join_snapshot(reader, snapshot_id)
        return catalog, kept

    async def _source_encoding(self) -> str:
        conn = await _connect(self.config.source)
        try:
            return str(await conn.fetchval(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database "
                "WHERE datname = current_database()"))
        finally:
            await _close([conn])

    async def _create_database(self, admin: Any, encoding: str) -> None:
        assert self.database is not None
        ident = quote_ident(self.database)
        try:
            await admin.execute(f"CREATE DATABASE {ident} TEMPLATE template0 "
                                f"ENCODING {quote_literal(encoding)}")
        except asyncpg.InvalidParameterValueError:  # the encoding does not fit the locale
            await admin.execute(f"CREATE DATABASE {ident} TEMPLATE template0")

    def _masker(self, table: Table) -> RowMasker | None:
        """The table's row masker: its masked columns, and the columns searched for leaks
        (none when nothing was sampled); None when there is nothing to do to its rows."""
        columns = table.copy_columns
        masked = set(self.rules.masked_columns(table.display))
        searched = {c for t, c in leaks.searched_columns_of(table, self.rules)} \
            if self.finder is not None else set()
        rules: dict[int, ColumnRule] = {}
        search: dict[int, ColumnRule | None] = {}
        for i, column in enumerate(columns):
            rule = self.rules.rule_for(table.display, column)
            if column in masked and rule is not None:
                rules[i] = rule
            if column in searched:
                search[i] = rule
        if not rules and not search:
            return None
        plan = MaskPlan.of(columns, rules, key=self.key, search=search)
        return plan.row_masker(self.finder)

    async def _copy(self, catalog: Catalog, kept: subset.Subset) -> int:
        """Every table's kept rows, biggest first, then its keys, checks and indexes, and
        ANALYZE; progress after each table's rows. Returns the rows copied."""
        def expected(table: Table) -> int:
            rows = kept.rows(table.key)
            return table.estimated_rows if rows is None else rows

        tables = sorted(catalog.tables.values(), key=lambda t: (-expected(t), -t.size, t.key))
        parts = await self._parts(tables, kept)
        left = collections.Counter(table.key for table, _ in parts)  # parts not copied yet
        remaining = {t.key: expected(t) for t in tables}
        done, total_rows, start = 0, 0, time.monotonic()

        async def job(pair: tuple[Any, Any], part: tuple[Table, str | None]) -> None:
            nonlocal done, total_rows
            reader, writer = pair
            table, pages = part
            stats = await self._copy_table(reader, writer, table=table, kept=kept, pages=pages)
            total_rows += stats.rows
            left[table.key] -= 1
            if left[table.key]:
                return  # another part of the table is still loading
            done += 1
            remaining.pop(table.key, None)
            if self.progress is not None:
                elapsed = max(time.monotonic() - start, 1e-6)
                rate = total_rows / elapsed
                rows_left = sum(remaining.values())
                await self.progress(BuildProgress(
                    tables_done=done, tables_total=len(tables), rows=total_rows,
                    rows_per_second=rate,
                    eta_seconds=(rows_left / rate if rate > 0 else None) if rows_left else 0.0,
                    table=table.display))
            # The table's own keys, checks and indexes while other tables are still loading.
            await schema.apply(writer, schema.table_post_data(table))
            await writer.execute(f"ANALYZE {table.ident}")

        readers = self.readers or [None] * len(self.writers)
        await _parallel(list(zip(readers, self.writers, strict=True)), parts, job=job)
        return total_rows

    async def _parts(self, tables: Sequence[Table], kept: subset.Subset
                     ) -> list[tuple[Table, str | None]]:
        """The copy jobs, biggest first: a table whole (None), or a range of its pages per
        copier, as a condition on `ctid`, so that a big table is masked by every core rather
        than one (`_copy_table` hands whole-table jobs to the pool). Pages are read by TID
        range scans (PostgreSQL 14 and newer); the last range is open-ended, so pages added
        since the snapshot are read too. Subsets are copied whole: their kept rows are shipped
        per copier (`subset.ship_keys`)."""
        workers = self.config.workers
        if workers < 2 or not kept.everything or \
                self.coordinator.get_server_version().major < 14:
            return [(table, None) for table in tables]
        parts: list[tuple[Table, str | None]] = []
        for table in tables:
            if table.size < self.split_bytes:
                parts.append((table, None))
                continue
            pages = await self.coordinator.fetchval(
                "SELECT pg_relation_size($1::oid) / current_setting('block_size')::int",
                table.oid)
            edges = [None, *(pages * i // workers for i in range(1, workers)), None]
            for low, high in itertools.pairwise(edges):
                parts.append((table, " AND ".join(
                    ([f"t.ctid >= '({low},0)'::tid"] if low is not None else [])
                    + ([f"t.ctid < '({high},0)'::tid"] if high is not None else []))))
        return parts

    async def _copy_table(self, reader: Any, writer: Any, *, table: Table,
                          kept: subset.Subset, pages: str | None = None) -> CopyStats:
        """Copy a table's kept rows (those on `pages`, when given). A whole table goes to a
        pool process with connections of its own (`copy.run_job`); a subset's rows, which
        need the keys shipped to `reader`, stream through this process, masked in the pool
        block by block."""
        query = subset.select_rows(table, subset=kept)
        if query is None:
            return CopyStats(rows=0, bytes=0)
        if pages is not None:
            query += f" WHERE {pages}"
        masker = self._masker(table)
        try:
            if kept.everything:
                assert self.pool is not None
                stats, hits = await asyncio.get_running_loop().run_in_executor(
                    self.pool, run_job, CopyJob(
                        source=asyncpg_dsn(self.config.source),
                        target=asyncpg_dsn(with_database(self.admin_url, self.database or "")),
                        snapshot=self.snapshot_id, query=query, schema=table.schema,
                        table=table.name, columns=tuple(table.copy_columns),
                        plan=None if masker is None else masker.plan,
                        session=schema.SESSION, timeout=CONNECT_TIMEOUT))
            else:
                await subset.ship_keys(self.coordinator, reader, table=table,
                                       lock=self.coordinator_lock)
                stats = await pipe(reader, query, target=writer, table=table.name,
                                   schema=table.schema, columns=table.copy_columns,
                                   masker=masker, pool=self.pool)
                hits = {} if masker is None else masker.take_hits()
        except ColumnMaskingError as exc:
            raise PermanentError(f"masking {table.display}: {exc}") from None
        if masker is not None:
            for position, found in sorted(hits.items()):
                found_in = f"{table.display}.{masker.column(position)}"
                self.found.extend(leaks.Leak(column=source, found_in=found_in,
                                             values=len(values))
                                  for source, values in sorted(found.items()))
        return stats

    async def _sample(self, catalog: Catalog, kept: subset.Subset,
                      columns: Iterable[tuple[Table, str, ColumnRule]]
                      ) -> tuple[dict[str, list[str]], list[leaks.Leak]]:
        """Sensitive values of the kept rows of `columns`, from the source's snapshot; and
        the values a replacing rule passed through unchanged. A full copy's sample is read on
        SAMPLERS sessions at once, each in the exported snapshot (a subset's needs the
        coordinator's kept keys, so it is read there)."""
        values: dict[str, list[str]] = {}
        unchanged: list[leaks.Leak] = []
        limit = self.config.leak_sample
        todo = collections.deque((t, c, r) for t, c, r in columns if kept.rows(t.key) != 0)
        if limit <= 0 or not todo:
            return values, unchanged
        sessions = [self.coordinator]
        try:
            if kept.everything:
                opened = await asyncio.gather(*(
                    self._snapshot_session() for _ in range(min(SAMPLERS, len(todo)) - 1)),
                    return_exceptions=True)
                sessions += [c for c in opened if not isinstance(c, BaseException)]
                for failed in opened:
                    if isinstance(failed, BaseException):
                        raise failed

            async def take(conn: Any) -> None:
                while todo:
                    table, column, rule = todo.popleft()
                    keep_filter = None if kept.everything else (
                        f"t.ctid IN (SELECT k.tid FROM {subset.KEEP} k "
                        f"WHERE k.rel = {table.oid})")
                    rows = await conn.fetch(
                        leaks.sample_query(table, column, keep_filter=keep_filter, limit=limit))
                    source = f"{table.display}.{column}"
                    found, passed = leaks.needles(rule, [r[0] for r in rows],
                                                  masker=make_masker(rule, key=self.key))
                    values[source] = found
                    if passed:
                        unchanged.append(leaks.Leak(column=source, found_in=source,
                                                    values=passed))

            async with first_error(), asyncio.TaskGroup() as group:
                for conn in sessions:
                    group.create_task(take(conn))
        finally:
            await _close(sessions[1:])
        return values, sorted(unchanged, key=str)

    async def _snapshot_session(self) -> Any:
        """A session on the source in the build's exported snapshot."""
        conn = await _connect(self.config.source)
        try:
            await join_snapshot(conn, self.snapshot_id)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _post_data(self, catalog: Catalog) -> None:
        """What spans tables: foreign keys, views, triggers, sequences (each table's own keys
        and indexes were built right after its rows)."""
        first = self.writers[0]
        await schema.apply(first, schema.foreign_keys(catalog))
        await _parallel(self.writers, schema.validations(catalog), job=schema.apply)
        await schema.apply_in_order(first, schema.after_data(catalog))
        await schema.set_sequences(first, catalog)
