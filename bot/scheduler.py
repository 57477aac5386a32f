"""Time-driven work: expiry reminders, the reaper, database sizes, and the beat others use.

Why here and not in a handler: nobody types these; they happen because time passed. A tick is
a few short transactions, safe to run in several bot processes at once: rows are locked with
SKIP LOCKED, so two schedulers never remind or reap the same environment twice.

Reminders. Each environment gets two: the first `remind_before` ahead of its expiry, or a
quarter of its lifetime ahead when that is shorter (a 2-hour environment with `remind_before:
4h` is reminded 30 minutes before it goes, not the moment it is ready); the last
`last_remind_before` ahead, or a sixteenth of its lifetime when shorter. The decision to remind
(`reminded_at`, `last_reminded_at`) and the outbox rows that say it (`Announcer`) are written
in one transaction, and Slack is written after it commits by any replica's outbox drainer: a
crash before the commit leaves the reminder to the next tick, a crash after it leaves the rows
to be sent. A scheduler that was away and finds both due sends only the last one.

Cost of a tick. Each kind of work is one query whatever the number of environments, and
environments that need nothing are not read at all (`bench/lifecycle.py` measures it).

Neighbours: `bot.slack.lifecycle` says the reminders and the expiry (the `Announcer`),
`bot.reconcile` runs on this beat (`periodic`), `bot.cost` uses the sizes measured here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import DateTime, Interval, bindparam, exists, func, select, text

from bot import logs, metrics
from bot.domain import DataMode, EnvStatus, JobKind, JobStatus
from bot.ports import DatabaseSizes
from bot.store import Store, repo
from bot.store import outbox as rows
from bot.store.models import Environment, Job
from bot.store.outbox import NewRow

log = logging.getLogger(__name__)

SCHEDULER_ACTOR = "ephem"
_LIVE = (EnvStatus.READY, EnvStatus.FAILED)
_MEASURE_BATCH = 500
# A failed environment whose destroy failed is not queued again at once, every tick.
_REAP_AGAIN_AFTER = timedelta(hours=1)

# Due for a reminder: the first (`reminded_at` unset) once its lead time is reached, or the
# last. The lead times are computed in SQL so environments not due yet are never read.
_DUE = text("""(
    (reminded_at IS NULL
     AND expires_at - LEAST(:first, (expires_at - created_at) / 4) <= :now)
    OR (last_reminded_at IS NULL
     AND expires_at - LEAST(:last, (expires_at - created_at) / 16) <= :now)
)""")


class Announcer(Protocol):
    """What the scheduler says. Each method returns the outbox rows that say it; the scheduler
    adds them in the transaction of its decision (all of a tick's in one statement), and calls
    `added` with their ids after the commit, to have them sent now."""

    def reminder(self, env: Environment, *, last: bool, now: datetime) -> Sequence[NewRow]: ...

    def expired(self, env: Environment, *, now: datetime) -> Sequence[NewRow]: ...

    def added(self, ids: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class TickResult:
    reminded: list[int]  # first reminders
    reaped: list[int]
    last: list[int] = field(default_factory=list)  # last reminders
    measured: int = 0


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        remind_before: timedelta,
        announce: Announcer,
        last_remind_before: timedelta | None = None,
        interval: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        periodic: Sequence[Callable[[], Awaitable[None]]] = (),
        sizes: DatabaseSizes | None = None,
        measure_every: timedelta = timedelta(hours=1),
    ) -> None:
        self.store = store
        self.remind_before = remind_before
        self.last_remind_before = (last_remind_before if last_remind_before is not None
                                   else min(timedelta(hours=1), remind_before / 4))
        self.announce = announce
        self.interval = interval
        self.clock = clock
        self.periodic = tuple(periodic)  # more work on the same beat (snapshots, orphans)
        self.sizes = sizes
        self.measure_every = measure_every
        self._task: asyncio.Task[None] | None = None
        self._ticking: asyncio.Future[TickResult] | None = None

    async def tick(self) -> TickResult:
        """One pass: remind owners of environments about to expire, reap expired ones,
        measure databases not measured lately, and set the queue's gauges."""
        try:
            result = await self._remind_and_reap(self.clock())
        except Exception:
            metrics.REAPER_FAILURES.inc()
            raise
        measured = await self.measure_databases()
        await self.measure_queue()
        return TickResult(result.reminded, result.reaped, result.last, measured)

    async def measure_queue(self) -> None:
        """Set the queue's gauges from one query over the jobs not finished yet."""
        queued = Job.status == JobStatus.QUEUED
        running = Job.status == JobStatus.RUNNING
        async with self.store.transaction() as s:
            depth, oldest_queued, oldest_started = (await s.execute(
                select(func.count().filter(queued), func.min(Job.run_after).filter(queued),
                       func.min(Job.started_at).filter(running))
                .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            )).one()
        now = self.clock()
        metrics.QUEUE_DEPTH.set(depth)
        metrics.QUEUE_OLDEST_SECONDS.set(_age(now, oldest_queued))
        metrics.JOB_OLDEST_RUNNING_SECONDS.set(_age(now, oldest_started))

    async def measure_databases(self) -> int:
        """Record the size of ready environments' databases not measured for
        `measure_every` (a new one at the first tick after it is ready); how many."""
        if self.sizes is None:
            return 0
        now = self.clock()
        async with self.store.transaction() as s:
            stale = (await s.execute(
                select(Environment.id, Environment.name).where(
                    Environment.status == EnvStatus.READY,
                    Environment.data_mode != DataMode.NONE,
                    (Environment.db_measured_at.is_(None))
                    | (Environment.db_measured_at < now - self.measure_every),
                ).order_by(Environment.db_measured_at.nulls_first()).limit(_MEASURE_BATCH)
            )).all()
        if not stale:
            return 0
        try:
            found = await self.sizes.sizes([r.name for r in stale])
        except Exception as exc:
            log.warning("could not measure environment databases (%s); trying again at the "
                        "next tick", type(exc).__name__)
            return 0
        async with self.store.transaction() as s:
            await s.execute(text("""
                UPDATE environments e
                SET db_bytes = coalesce(v.bytes, e.db_bytes), db_measured_at = :now
                FROM unnest(CAST(:ids AS bigint[]), CAST(:bytes AS bigint[])) AS v(id, bytes)
                WHERE e.id = v.id
            """), {"ids": [r.id for r in stale], "bytes": [found.get(r.name) for r in stale],
                   "now": now})
        return len(stale)

    async def _remind_and_reap(self, now: datetime) -> TickResult:
        reminded: list[int] = []
        last: list[int] = []
        reaped: list[int] = []
        added: list[int] = []
        due = _DUE.bindparams(bindparam("first", self.remind_before, type_=Interval),
                              bindparam("last", self.last_remind_before, type_=Interval),
                              bindparam("now", now, type_=DateTime(timezone=True)))
        async with self.store.transaction() as s:
            near = (await s.execute(
                select(Environment).where(
                    Environment.status.in_(_LIVE),
                    Environment.expires_at > now,
                    Environment.expires_at <= now + self.remind_before,
                    due,
                ).order_by(Environment.id)
                .with_for_update(skip_locked=True)
            )).scalars().all()
            said: list[NewRow] = []
            audit: list[dict[str, Any]] = []
            for env in near:
                is_last = env.expires_at - now <= self.last_lead_time(env)
                if is_last:
                    env.last_reminded_at = now
                    env.reminded_at = env.reminded_at or now
                    last.append(env.id)
                else:
                    env.reminded_at = now
                    reminded.append(env.id)
                said += self.announce.reminder(env, last=is_last, now=now)
                audit.append({"actor": SCHEDULER_ACTOR, "action": "remind",
                              "source": "scheduler", "env_id": env.id, "details": {
                                  "reminder": "last" if is_last else "first",
                                  "expires_at": env.expires_at.isoformat()}})
            # One statement per kind of write, whatever the number of environments.
            added += await rows.add_many(s, said)
            await repo.audit_many(s, audit)
        pending = exists().where(Job.env_id == Environment.id,
                                 Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        destroy_failed_lately = exists().where(
            Job.env_id == Environment.id, Job.kind == JobKind.DESTROY,
            Job.status == JobStatus.FAILED, Job.finished_at > now - _REAP_AGAIN_AFTER)
        async with self.store.transaction() as s:
            expired = (await s.execute(
                select(Environment).where(
                    Environment.status.in_(_LIVE), Environment.expires_at <= now,
                    ~pending, ~destroy_failed_lately,
                ).order_by(Environment.id).with_for_update(skip_locked=True)
            )).scalars().all()
            reaped = [env.id for env in expired]
            await repo.enqueue_jobs(s, env_ids=reaped, kind=JobKind.DESTROY,
                                    requested_by=SCHEDULER_ACTOR)
            await repo.audit_many(s, [
                {"actor": SCHEDULER_ACTOR, "action": "expire", "source": "scheduler",
                 "env_id": env.id, "details": {"expired_at": env.expires_at.isoformat()}}
                for env in expired])
            added += await rows.add_many(s, [row for env in expired
                                             for row in self.announce.expired(env, now=now)])
            for env in expired:
                with logs.bind(env_id=env.id, env=env.name):
                    log.info("%s expired at %s: destroying it", env.name,
                             env.expires_at.isoformat(timespec="minutes"),
                             extra={"event": "reap"})
        async with self.store.transaction() as s:
            await repo.forget_sightings(s, now)
        if added:
            # Sent after commit by any replica's drainer; this only wakes this one's now.
            self.announce.added(added)
        return TickResult(reminded=reminded, reaped=reaped, last=last)

    def lead_time(self, env: Environment) -> timedelta:
        """How long before `env` expires its owner is first reminded."""
        lifetime = max(env.expires_at - env.created_at, timedelta(0))
        return min(self.remind_before, lifetime / 4)

    def last_lead_time(self, env: Environment) -> timedelta:
        """How long before `env` expires its owner is reminded the last time."""
        lifetime = max(env.expires_at - env.created_at, timedelta(0))
        return min(self.last_remind_before, lifetime / 16)

    async def _loop(self) -> None:
        while True:
            for work in (self.tick, *self.periodic):
                try:
                    if work == self.tick:
                        # Shielded: a tick is a few short transactions, and cancelling one in
                        # the middle of opening a connection leaves asyncpg's handshake future
                        # failing with nobody to read it. `stop` lets it finish instead.
                        self._ticking = asyncio.ensure_future(self.tick())
                        await asyncio.shield(self._ticking)
                    else:
                        await work()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("scheduled work failed; trying again in %.0fs",
                                  self.interval)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ephem-scheduler")

    async def stop(self, *, tick_grace: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ticking is not None and not self._ticking.done():
            await asyncio.wait([self._ticking], timeout=tick_grace)
            self._ticking.cancel()
        if self._ticking is not None and self._ticking.done() and not self._ticking.cancelled():
            self._ticking.exception()  # read, so a failed last tick is not reported as unread
        self._ticking = None


def _age(now: datetime, since: datetime | None) -> float:
    return max((now - since).total_seconds(), 0.0) if since is not None else 0.0
