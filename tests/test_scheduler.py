"""Reminders and the reaper, on a real store with an explicit clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from bot.domain import DataMode, EnvStatus, JobKind, JobStatus
from bot.metrics import REGISTRY
from bot.scheduler import Scheduler
from bot.store import Store, repo
from bot.store.models import AuditEvent, Job, SlackRequestSeen

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


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
    reminded: list[int] = []
    reaped: list[int] = []

    async def remind(env_id: int) -> None:
        reminded.append(env_id)

    async def on_reaped(env_id: int) -> None:
        reaped.append(env_id)

    clock = [NOW]
    sched = Scheduler(store=store, remind_before=timedelta(hours=4), remind=remind,
                      reaped=on_reaped, clock=lambda: clock[0])
    first = await sched.tick()
    assert first.reminded == [soon] and first.reaped == [gone]
    second = await sched.tick()  # nothing twice: reminded_at is set, the destroy is queued
    assert second.reminded == [] and second.reaped == []
    assert reminded == [soon] and reaped == [gone]

    async with store.transaction() as s:
        jobs = (await s.execute(select(Job))).scalars().all()
        assert [(j.env_id, j.kind, j.status, j.requested_by) for j in jobs] == [
            (gone, JobKind.DESTROY, JobStatus.QUEUED, "ephem")]
        audit = (await s.execute(select(AuditEvent))).scalars().one()
        assert (audit.action, audit.env_id) == ("reap", gone)

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
    reminded: list[int] = []

    async def remind(env_id: int) -> None:
        reminded.append(env_id)

    async def on_reaped(env_id: int) -> None:
        del env_id

    clock = [NOW + timedelta(minutes=1)]  # just after it became ready
    sched = Scheduler(store=store, remind_before=timedelta(hours=4), remind=remind,
                      reaped=on_reaped, clock=lambda: clock[0])
    assert (await sched.tick()).reminded == []
    clock[0] = NOW + timedelta(minutes=89)
    assert (await sched.tick()).reminded == []
    clock[0] = NOW + timedelta(minutes=91)  # 29 minutes left
    assert (await sched.tick()).reminded == [short]
    assert reminded == [short]


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

    async def nothing(env_id: int) -> None:
        del env_id

    sched = Scheduler(store=store, remind_before=timedelta(hours=4), remind=nothing,
                      reaped=nothing, clock=lambda: NOW)
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

    async def nothing(env_id: int) -> None:
        del env_id

    sched = Scheduler(store=store, remind_before=timedelta(hours=4), remind=nothing,
                      reaped=nothing, clock=lambda: NOW)
    before = REGISTRY.get_sample_value("ephem_reaper_failures_total") or 0.0
    try:
        with pytest.raises(Exception, match="does not exist"):
            await sched.tick()
    finally:
        await store.close()
    assert _sample("ephem_reaper_failures_total") == before + 1
