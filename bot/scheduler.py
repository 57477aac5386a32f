"""Time-driven work: expiry reminders and the reaper.

Why here and not in a handler: nobody types these; they happen because time passed. Each tick is
one transaction per environment, safe to run in several bot processes at once (rows are locked
with SKIP LOCKED, so two schedulers never remind or reap the same environment twice).

When: an environment is reminded `remind_before` ahead of its expiry, or a quarter of its
lifetime ahead when that is shorter — a 2-hour environment with `remind_before: 4h` is reminded
30 minutes before it goes, not the moment it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot import logs, metrics
from bot.domain import EnvStatus, JobKind, JobStatus
from bot.store import Store, repo
from bot.store.models import Environment, Job

log = logging.getLogger(__name__)

SCHEDULER_ACTOR = "ephem"

Remind = Callable[[int], Awaitable[None]]
Reaped = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class TickResult:
    reminded: list[int]
    reaped: list[int]


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        remind_before: timedelta,
        remind: Remind,
        reaped: Reaped,
        interval: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        periodic: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.store = store
        self.remind_before = remind_before
        self.remind = remind
        self.reaped = reaped
        self.interval = interval
        self.clock = clock
        self.periodic = tuple(periodic)  # more work on the same beat (snapshots and pools)
        self._task: asyncio.Task[None] | None = None
        self._ticking: asyncio.Future[TickResult] | None = None

    async def tick(self) -> TickResult:
        """One pass: remind owners of environments about to expire, reap expired ones, and
        set the queue's gauges."""
        try:
            result = await self._remind_and_reap(self.clock())
        except Exception:
            metrics.REAPER_FAILURES.inc()
            raise
        await self.measure_queue()
        return result

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

    async def _remind_and_reap(self, now: datetime) -> TickResult:
        reminded: list[int] = []
        reaped: list[int] = []
        live = (EnvStatus.READY, EnvStatus.FAILED)
        async with self.store.transaction() as s:
            near = (await s.execute(
                select(Environment).where(
                    Environment.status.in_(live),
                    Environment.reminded_at.is_(None),
                    Environment.expires_at > now,
                    Environment.expires_at <= now + self.remind_before,
                ).with_for_update(skip_locked=True)
            )).scalars().all()
            for env in near:
                if env.expires_at - now <= self.lead_time(env):
                    env.reminded_at = now
                    reminded.append(env.id)
        async with self.store.transaction() as s:
            expired = (await s.execute(
                select(Environment).where(
                    Environment.status.in_(live), Environment.expires_at <= now,
                ).with_for_update(skip_locked=True)
            )).scalars().all()
            for env in expired:
                if await repo.pending_jobs(s, env.id):
                    continue
                await repo.enqueue_job(s, env_id=env.id, kind=JobKind.DESTROY,
                                       requested_by=SCHEDULER_ACTOR)
                await repo.audit(s, actor=SCHEDULER_ACTOR, action="reap", source="scheduler",
                                 env_id=env.id, details={"expired_at": env.expires_at.isoformat()})
                reaped.append(env.id)
                with logs.bind(env_id=env.id, env=env.name):
                    log.info("%s expired at %s: destroying it", env.name,
                             env.expires_at.isoformat(timespec="minutes"),
                             extra={"event": "reap"})
        async with self.store.transaction() as s:
            await repo.forget_sightings(s, now)
        # Slack is written after commit, so a failed post never undoes the bookkeeping.
        for env_id in reminded:
            await self.remind(env_id)
        for env_id in reaped:
            await self.reaped(env_id)
        return TickResult(reminded=reminded, reaped=reaped)

    def lead_time(self, env: Environment) -> timedelta:
        """How long before `env` expires its owner is reminded."""
        lifetime = max(env.expires_at - env.created_at, timedelta(0))
        return min(self.remind_before, lifetime / 4)

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
