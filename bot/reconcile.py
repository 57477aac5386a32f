"""Reconciliation: what carries Ephem's marks and belongs to no live environment is reported,
then destroyed after a grace period; nothing is forgotten.

Why: a crash between creating something and recording it, a destroy that failed half-way, a
store restored from a backup — each leaves a workspace, namespace, database or role that costs
money and that nobody will remember. The scheduler runs this on its beat; the finder itself is
the infrastructure phase's (`bot.ports.OrphanFinding`, plugged in by the composition root), the
same one `ephem doctor --orphans` uses.

How, across replicas and restarts:
- a run is claimed by moving a mark in the store (`scheduler_marks`, at most once per
  `every`) and holds an advisory lock while it lasts, so one replica acts at a time;
- every orphan seen is a row (`orphan_sightings`): the first sighting is reported in the
  operators' channel in the same transaction that records it (so it is reported exactly once),
  and starts its grace period; one that is no longer found (someone removed it, or it belongs
  to an environment after all) is forgotten;
- an orphan still found when its grace period is over is destroyed. A destroy that fails is
  reported, counted, and tried again after a capped exponential backoff, for as long as it
  is found. Only what this very run found is destroyed, never a sighting from memory alone.

Every step is an audit event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, literal_column, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import redaction
from bot.ports import Orphan, OrphanFinding
from bot.slack import messages
from bot.store import Store, repo
from bot.store import outbox as rows
from bot.store.models import OrphanSighting
from bot.store.outbox import NewRow

log = logging.getLogger(__name__)

ACTOR = "ephem"
MARK = "reconcile"
_LOCK = 0x657068656D_01  # pg advisory lock key: one reconciliation at a time


class Reporter(Protocol):
    def operators(self, text: str) -> Sequence[NewRow]:
        """The outbox rows of a report for the operators' channel (none without one)."""
        ...

    def added(self, ids: Sequence[int]) -> None: ...


@dataclass
class RunResult:
    found: list[Orphan] = field(default_factory=list)
    new: list[Orphan] = field(default_factory=list)
    removed: list[Orphan] = field(default_factory=list)
    failed: list[Orphan] = field(default_factory=list)


class Reconciler:
    def __init__(self, *, store: Store, finder: OrphanFinding, report: Reporter,
                 grace: timedelta, every: timedelta, retry_base: timedelta,
                 retry_cap: timedelta,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.finder = finder
        self.report = report
        self.grace = grace
        self.every = every
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.clock = clock
        self._running: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """The scheduler's periodic hook: start a run, when one is due, as a task of its own
        (a destroy may take minutes; reminders in this process do not wait for it)."""
        if self._running is not None and not self._running.done():
            return
        self._running = asyncio.get_running_loop().create_task(self._logged(),
                                                               name="ephem-reconcile")

    async def _logged(self) -> None:
        try:
            await self.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconciliation failed; it runs again at its next turn")

    async def stop(self) -> None:
        """Cut a run short (shutting down); what it had not removed yet stays in the store."""
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
            self._running = None

    def backoff(self, attempt: int) -> timedelta:
        wait: timedelta = self.retry_base * (2 ** min(attempt - 1, 30))
        return min(self.retry_cap, wait)

    async def run(self, *, force: bool = False) -> RunResult | None:
        """One reconciliation, if it is due (`force`: whenever) and no other replica runs one;
        None when it did not run."""
        now = self.clock()
        if not force and not await self._claim(now):
            return None
        async with self.store.engine.connect() as conn:
            got = await conn.scalar(select(func.pg_try_advisory_lock(_LOCK)))
            await conn.commit()
            if not got:
                return None
            try:
                return await self._run(now)
            finally:
                await asyncio.shield(self._unlock(conn))

    @staticmethod
    async def _unlock(conn: AsyncConnection) -> None:
        await conn.scalar(select(func.pg_advisory_unlock(_LOCK)))
        await conn.commit()

    async def _claim(self, now: datetime) -> bool:
        async with self.store.transaction() as s:
            claimed = await s.execute(text("""
                INSERT INTO scheduler_marks (name, at) VALUES (:name, :now)
                ON CONFLICT (name) DO UPDATE SET at = :now
                WHERE scheduler_marks.at <= CAST(:now AS timestamptz) - CAST(:every AS interval)
                RETURNING name
            """), {"name": MARK, "now": now, "every": self.every})
            return claimed.scalar_one_or_none() is not None

    async def _run(self, now: datetime) -> RunResult:
        result = RunResult(found=list(await self.finder.find()))
        keys = [(o.kind, o.name) for o in result.found]
        order = {key: i for i, key in enumerate(keys)}
        by_key = dict(zip(keys, result.found, strict=True))
        added: list[int] = []
        async with self.store.transaction() as s:
            gone = delete(OrphanSighting)
            if keys:
                gone = gone.where(tuple_(OrphanSighting.kind, OrphanSighting.name).not_in(keys))
            await s.execute(gone)
            if keys:
                inserted: Sequence[Any] = (await s.execute(
                    insert(OrphanSighting).values([
                        {"kind": o.kind, "name": o.name, "env_id": o.env_id,
                         "env_name": o.env_name, "first_seen_at": now, "last_seen_at": now,
                         "next_try_at": now} for o in result.found])
                    .on_conflict_do_update(index_elements=["kind", "name"],
                                           set_={"last_seen_at": now})
                    .returning(OrphanSighting.kind, OrphanSighting.name,
                               literal_column("xmax = 0").label("inserted"))
                )).all()
                result.new = sorted((by_key[(r.kind, r.name)] for r in inserted if r.inserted),
                                    key=lambda o: order[(o.kind, o.name)])
            if result.new:
                added += await rows.add_many(s, self.report.operators(messages.orphans_found(
                    [o.line() for o in result.new], grace=self.grace)))
                for o in result.new:
                    await repo.audit(s, actor=ACTOR, action="orphan-found", source="scheduler",
                                     details={"kind": o.kind, "name": o.name,
                                              "env_id": o.env_id})
            due = (await s.execute(select(OrphanSighting).where(
                OrphanSighting.first_seen_at <= now - self.grace,
                OrphanSighting.next_try_at <= now,
            ))).scalars().all() if keys else []
            due_keys = sorted(((d.kind, d.name, d.attempts) for d in due
                               if (d.kind, d.name) in by_key),
                              key=lambda k: order[(k[0], k[1])])
        if added:
            self.report.added(added)
        for kind, name, attempts in due_keys:
            await self._remove(by_key[(kind, name)], attempts=attempts, now=now, result=result)
        return result

    async def _remove(self, orphan: Orphan, *, attempts: int, now: datetime,
                      result: RunResult) -> None:
        key = (OrphanSighting.kind == orphan.kind, OrphanSighting.name == orphan.name)
        details = {"kind": orphan.kind, "name": orphan.name, "env_id": orphan.env_id}
        try:
            await self.finder.remove(orphan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            tries = attempts + 1
            wait = self.backoff(tries)
            error = redaction.scrub(str(exc) or type(exc).__name__).splitlines()[0][:300]
            log.warning("reconciliation: could not destroy %s (try %d): %s", orphan.line(),
                        tries, error)
            async with self.store.transaction() as s:
                await s.execute(update(OrphanSighting).where(*key).values(
                    attempts=tries, next_try_at=now + wait, last_error=error))
                await repo.audit(s, actor=ACTOR, action="orphan-remove-failed",
                                 source="scheduler", details={**details, "attempt": tries,
                                                              "error": error})
                added = await rows.add_many(s, self.report.operators(
                    messages.orphan_remove_failed(orphan.line(), error=error, attempt=tries,
                                                  again_in=wait)))
            self.report.added(added)
            result.failed.append(orphan)
            return
        async with self.store.transaction() as s:
            await s.execute(delete(OrphanSighting).where(*key))
            await repo.audit(s, actor=ACTOR, action="orphan-removed", source="scheduler",
                             details=details)
            added = await rows.add_many(s, self.report.operators(
                messages.orphan_removed(orphan.line())))
        self.report.added(added)
        result.removed.append(orphan)
