"""Reminders and the reaper, on a real store with an explicit clock (no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from bot.domain import DataMode, EnvStatus, JobKind, JobStatus
from bot.metrics import REGISTRY
from bot.scheduler import Scheduler
from bot.store import Store, repo
from bot.store.models import AuditEvent, Environment, Job, SlackRequestSeen
from bot.store.outbox import NewRow

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Recorded:
    """An `Announcer` that records what the scheduler decided to say (it adds no rows)."""

    def __init__(self) -> None:
        self.reminders: list[tuple[int, bool]] = []
        self.expiries: list[int] = []

    def reminder(self, env: Environment, *, last: bool, now: datetime) -> Sequence[NewRow]:
        self.reminders.append((env.id, last))
        return []

    def expired(self, env: Environment, *, now: datetime) -> Sequence[NewRow]:
        self.expiries.append(env.id)
        return []

    def added(self, ids: Sequence[int]) -> None:
        del ids


async def _ready_env(store: Store, name: str, expires_in: timedelta, *,
                     made: datetime = NOW - timedelta(days=2)) -> int:
    """A ready environment made at `made` (on the test's clock) expiring `expires_in` from NOW."""
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name=name, owner_id="UANA", channel_id="C1", reference=None, release_set={},
            data_mode=DataMode.NONE, data_snapshot=None, reason=None,
            expires_at=NOW + expires_in,
        )
        await repo.set_status(s, env, EnvStatus.CREATING)
        await repo.set_status(s, env, EnvStatus.READY)
        env.created_at = made
        return env.id


async def test_reminds_once_and_reaps_expired(store: Store) -> None:
    soon = await _ready_env(store, "soon", timedelta(hours=1))
    later = await _ready_env(store, "later", timedelta(days=1))
    gone = await _ready_env(store, "gone", timedelta(minutes=-5))
    said = Recorded()
    clock = [NOW]
    sched = Scheduler(store=store, remind_before=timedelta(hours=4), announce=said,
                      last_remind_before=timedelta(minutes=30), clock=lambda: clock[0])
    first = await sched.tick()
    assert first.reminded == [soon] and first.reaped == [gone]
    second = await sched.tick()  # nothing twice: reminded_at is set, the destroy is queued
    assert second.reminded == [] and second.reaped == []
    assert said.reminders == [(soon, False)] and said.expiries == [gone]

    async with store.transaction() as s:
        jobs = (await s.execute(select(Job))).scalars().all()
        assert [(j.env_id, j.kind, j.status, j.requested_by) for j in jobs] == [
            (gone, JobKind.DESTROY, JobStatus.QUEUED, "ephem")]
        audit = (await s.execute(select(AuditEvent).order_by(AuditEvent.id))).scalars().all()
        assert [(a.action, a.env_id, a.details.get("reminder")) for a in audit] == [
            ("remind", soon, "first"), ("expire", gone, None)]

    # Remembered Slack requests are forgotten when their time is up (the table would grow
    # forever otherwise).
    async with store.transaction() as s:
        await repo.first_sighting(s, kind="event", key="EvOld", keep=timedelta(days=1))
        await s.execute(update(SlackRequestSeen).values(keep_until=NOW - timedelta(seconds=1)))
        await repo.first_sighting(s, kind="command", key="new", keep=timedelta(minutes=10))
        await s.execute(update(SlackRequestSeen).where(SlackRequestSeen.key == "new")
                        .values(keep_until=NOW + timedelta(minutes=10)))
    await sched.tick()
    async with store.transaction() as s:
        kept = (await s.execute(select(SlackRequestSeen.key))).scalars().all()
    assert kept == ["new"]

    clock[0] = NOW + timedelta(hours=21)  # `later` is now within 4h of expiry
    third = await sched.tick()
    assert third.reminded == [later]


async def test_a_short_lived_environment_is_reminded_a_quarter_of_its_life_ahead(
    store: Store
) -> None:
    """TTL 2h, remind_before 4h: not at once after ready, but 30 minutes before expiry."""
    short = await _ready_env(store, "short", timedelta(hours=2), made=NOW)
    said = Recorded()
    clock = [NOW + timedelta(minutes=1)]  # just after it became ready
    sched = Scheduler(store=store, remind_before=timedelta(hours=4), announce=said,
                      clock=lambda: clock[0])
    assert (await sched.tick()).reminded == []
    clock[0] = NOW + timedelta(minutes=89)
    assert (await sched.tick()).reminded == []
    clock[0] = NOW + timedelta(minutes=91)  # 29 minutes left
    assert (await sched.tick()).reminded == [short]
    assert said.reminders == [(short, False)]
    # The last one: a sixteenth of its life ahead (7.5 minutes), not the default hour.
    clock[0] = NOW + timedelta(minutes=112)  # 8 minutes left
    assert (await sched.tick()).last == []
    clock[0] = NOW + timedelta(minutes=113)  # 7 minutes left
    assert (await sched.tick()).last == [short]
    assert (await sched.tick()).last == []
    assert said.reminders == [(short, False), (short, True)]


def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_a_tick_sets_the_queue_gauges_from_the_jobs_table(store: Store) -> None:
    first = await _ready_env(store, "q-1", timedelta(days=1))
    second = await _ready_env(store, "q-2", timedelta(days=1))
    third = await _ready_env(store, "q-3", timedelta(days=1))
    async with store.transaction() as s:
        waiting = await repo.enqueue_job(s, env_id=first, kind=JobKind.DESTROY,
                                         requested_by="UANA")
        backing_off = await repo.enqueue_job(s, env_id=second, kind=JobKind.DESTROY,
                                             requested_by="UANA")
        running = await repo.enqueue_job(s, env_id=third, kind=JobKind.DESTROY,
                                         requested_by="UANA")
        await s.flush()
        waiting.run_after = NOW - timedelta(minutes=7)
        backing_off.run_after = NOW + timedelta(minutes=3)  # not claimable yet: not late
        running.status = JobStatus.RUNNING
        running.started_at = NOW - timedelta(minutes=50)
        # A finished job, however old, is neither queued nor running.
        done = await repo.enqueue_job(s, env_id=first, kind=JobKind.CREATE,
                                      requested_by="UANA")
        await s.flush()
        done.status = JobStatus.SUCCEEDED
        done.started_at = NOW - timedelta(days=3)

    sched = Scheduler(store=store, remind_before=timedelta(hours=4), announce=Recorded(),
                      clock=lambda: NOW)
    await sched.tick()
    assert _sample("ephem_queue_depth") == 2
    assert _sample("ephem_queue_oldest_seconds") == 7 * 60
    assert _sample("ephem_job_oldest_running_seconds") == 50 * 60

    async with store.transaction() as s:
        await s.execute(update(Job).values(status=JobStatus.CANCELLED))
    await sched.tick()
    assert _sample("ephem_queue_depth") == 0
    assert _sample("ephem_queue_oldest_seconds") == 0
    assert _sample("ephem_job_oldest_running_seconds") == 0


async def test_a_failed_tick_counts_as_a_reaper_failure(db_prefix: str) -> None:
    """A store whose database does not exist: the tick raises and the counter says so."""
    store = Store(f"postgresql://postgres@127.0.0.1:5432/{db_prefix}_missing")

    sched = Scheduler(store=store, remind_before=timedelta(hours=4), announce=Recorded(),
                      clock=lambda: NOW)
    before = REGISTRY.get_sample_value("ephem_reaper_failures_total") or 0.0
    try:
        with pytest.raises(Exception, match="does not exist"):
            await sched.tick()
    finally:
        await store.close()
    assert _sample("ephem_reaper_failures_total") == before + 1


async def test_both_reminders_at_their_times_and_only_the_last_when_both_are_due(
    store: Store
) -> None:
    """Two days' life, remind_before 4h, last 1h: the first at 4h, the last at 1h before. A
    scheduler that was away until the last is due sends only that one."""
    env = await _ready_env(store, "two", timedelta(hours=5))
    late = await _ready_env(store, "late", timedelta(minutes=50))
    said = Recorded()
    clock = [NOW]
    sched = Scheduler(store=store, remind_before=timedelta(hours=4), announce=said,
                      last_remind_before=timedelta(hours=1), clock=lambda: clock[0])
    first = await sched.tick()
    assert (first.reminded, first.last) == ([], [late])
    clock[0] = NOW + timedelta(hours=1, minutes=1)  # 3h59m left
    assert ((r := await sched.tick()).reminded, r.last) == ([env], [])
    clock[0] = NOW + timedelta(hours=3, minutes=59)  # 1h01m left
    assert ((r := await sched.tick()).reminded, r.last) == ([], [])
    clock[0] = NOW + timedelta(hours=4, minutes=1)  # 59m left
    assert ((r := await sched.tick()).reminded, r.last) == ([], [env])
    assert ((r := await sched.tick()).reminded, r.last) == ([], [])
    assert said.reminders == [(late, True), (env, False), (env, True)]


async def test_two_schedulers_at_once_remind_each_environment_once(store: Store) -> None:
    ids = [await _ready_env(store, f"many-{i}", timedelta(hours=2)) for i in range(30)]
    said = [Recorded(), Recorded()]
    scheds = [Scheduler(store=store, remind_before=timedelta(hours=4), announce=a,
                        clock=lambda: NOW) for a in said]
    for _ in range(3):
        await asyncio.gather(*(s.tick() for s in scheds))
    reminded = sorted(e for a in said for e, _ in a.reminders)
    assert reminded == sorted(ids)


class Sizes:
    def __init__(self, found: dict[str, int]) -> None:
        self.found = found
        self.asked: list[list[str]] = []

    async def sizes(self, names: Sequence[str]) -> dict[str, int]:
        self.asked.append(list(names))
        return {n: self.found[n] for n in names if n in self.found}


async def test_database_sizes_are_measured_once_then_again_when_stale(store: Store) -> None:
    with_db = await _ready_env(store, "with-db", timedelta(days=1))
    async with store.transaction() as s:
        env = await repo.get_environment(s, with_db)
        env.data_mode = DataMode.SEED
    sizes = Sizes({"with-db": 3_000_000_000})
    clock = [NOW]
    sched = Scheduler(store=store, remind_before=timedelta(hours=4), announce=Recorded(),
                      clock=lambda: clock[0], sizes=sizes, measure_every=timedelta(hours=1))
    assert (await sched.tick()).measured == 1
    assert (await sched.tick()).measured == 0
    assert sizes.asked == [["with-db"]]  # the environment without a database is not asked
    async with store.transaction() as s:
        env = await repo.get_environment(s, with_db)
        assert (env.db_bytes, env.db_measured_at) == (3_000_000_000, NOW)
    clock[0] = NOW + timedelta(minutes=61)
    assert (await sched.tick()).measured == 1
