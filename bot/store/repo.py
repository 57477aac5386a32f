"""Repositories: named queries over the models. They flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.domain import (
    LIVE_STATUSES,
    DataMode,
    EnvStatus,
    JobKind,
    JobStatus,
    PhaseAction,
    PhaseName,
    PhaseStatus,
    env_transition,
    job_transition,
)
from bot.errors import UserError
from bot.store.models import AuditEvent, Environment, Job, PhaseRun, SlackRequestSeen

JOBS_CHANNEL = "ephem_jobs"

# --------------------------------------------------------------------------- environments


async def create_environment(
    s: AsyncSession,
    *,
    name: str,
    owner_id: str,
    channel_id: str,
    reference: str | None,
    release_set: dict[str, str],
    data_mode: DataMode,
    data_snapshot: str | None,
    reason: str | None,
    expires_at: datetime,
) -> Environment:
    """Insert a queued environment; a live environment with the same name is a UserError."""
    env = Environment(
        name=name,
        owner_id=owner_id,
        channel_id=channel_id,
        status=EnvStatus.QUEUED,
        reference=reference,
        release_set=dict(release_set),
        data_mode=data_mode,
        data_snapshot=data_snapshot,
        reason=reason,
        expires_at=expires_at,
        outputs={},
    )
    try:
        async with s.begin_nested():
            s.add(env)
            await s.flush()
    except IntegrityError:
        raise UserError(
            f"An environment named `{name}` already exists. Pick another name, "
            f"or `/ephem destroy {name}` first."
        ) from None
    return env


async def get_environment(s: AsyncSession, env_id: int, *, for_update: bool = False) -> Environment:
    stmt = select(Environment).where(Environment.id == env_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).scalar_one()


async def find_live_environment(
    s: AsyncSession, name: str, *, for_update: bool = False
) -> Environment | None:
    stmt = select(Environment).where(
        Environment.name == name, Environment.status.in_(LIVE_STATUSES)
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).scalar_one_or_none()


async def live_environments(
    s: AsyncSession, *, owner_id: str | None = None
) -> Sequence[Environment]:
    stmt = select(Environment).where(Environment.status.in_(LIVE_STATUSES))
    if owner_id is not None:
        stmt = stmt.where(Environment.owner_id == owner_id)
    return (await s.execute(stmt.order_by(Environment.created_at, Environment.id))).scalars().all()


async def live_names(s: AsyncSession) -> set[str]:
    stmt = select(Environment.name).where(Environment.status.in_(LIVE_STATUSES))
    return set((await s.execute(stmt)).scalars().all())


async def set_status(s: AsyncSession, env: Environment, target: EnvStatus) -> None:
    """Move an environment to `target`; an illegal transition raises IllegalTransition."""
    env.status = env_transition(env.status, target)
    if target is EnvStatus.DESTROYED:
        env.destroyed_at = func.now()
    await s.flush()


async def expiring(s: AsyncSession, *, before: datetime) -> Sequence[Environment]:
    """Ready or failed environments whose expiry is earlier than `before`."""
    stmt = select(Environment).where(
        Environment.status.in_((EnvStatus.READY, EnvStatus.FAILED)),
        Environment.expires_at < before,
    )
    return (await s.execute(stmt.order_by(Environment.expires_at))).scalars().all()


# --------------------------------------------------------------------------- jobs


async def enqueue_job(
    s: AsyncSession, *, env_id: int, kind: JobKind, requested_by: str,
    awaiting_approval: bool = False,
) -> Job:
    """Queue a job; executors LISTENing on `ephem_jobs` are woken when the transaction commits.
    With `awaiting_approval` the job waits for a decision instead (`bot.approvals`), and no
    executor claims it until it is approved."""
    status = JobStatus.AWAITING_APPROVAL if awaiting_approval else JobStatus.QUEUED
    job = Job(env_id=env_id, kind=kind, status=status, requested_by=requested_by)
    s.add(job)
    await s.flush()
    if not awaiting_approval:
        await s.execute(select(func.pg_notify(JOBS_CHANNEL, str(job.id))))
    return job


async def enqueue_jobs(s: AsyncSession, *, env_ids: Sequence[int], kind: JobKind,
                       requested_by: str) -> None:
    """Queue one job of `kind` for each environment, in one statement (and one wake-up)."""
    if not env_ids:
        return
    await s.execute(insert(Job).values([
        {"env_id": e, "kind": kind, "status": JobStatus.QUEUED, "requested_by": requested_by}
        for e in env_ids]))
    await s.execute(select(func.pg_notify(JOBS_CHANNEL, "batch")))


async def pending_jobs(s: AsyncSession, env_id: int) -> Sequence[Job]:
    """Jobs of an environment that are waiting for approval, queued or running, oldest
    first."""
    stmt = select(Job).where(
        Job.env_id == env_id,
        Job.status.in_((JobStatus.AWAITING_APPROVAL, JobStatus.QUEUED, JobStatus.RUNNING)),
    )
    return (await s.execute(stmt.order_by(Job.id))).scalars().all()


async def cancel_queued_jobs(s: AsyncSession, env_id: int, *, kind: JobKind) -> int:
    """Cancel jobs of `kind` that have not started; returns how many."""
    job_transition(JobStatus.QUEUED, JobStatus.CANCELLED)
    result = await s.execute(
        update(Job)
        .where(Job.env_id == env_id, Job.kind == kind, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=func.now())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- phase runs


async def latest_phase_runs(s: AsyncSession, env_id: int) -> dict[PhaseName, PhaseRun]:
    """The most recent run of each phase of an environment."""
    stmt = (
        select(PhaseRun)
        .where(PhaseRun.env_id == env_id)
        .order_by(PhaseRun.phase, PhaseRun.id.desc())
        .ext(distinct_on(PhaseRun.phase))
    )
    return {run.phase: run for run in (await s.execute(stmt)).scalars().all()}


async def start_phase_run(
    s: AsyncSession, *, env_id: int, job_id: int, phase: PhaseName, action: PhaseAction,
    status: PhaseStatus = PhaseStatus.RUNNING, detail: str = "",
) -> PhaseRun:
    count = await s.scalar(
        select(func.count()).where(
            PhaseRun.env_id == env_id, PhaseRun.phase == phase, PhaseRun.action == action
        )
    )
    run = PhaseRun(
        env_id=env_id, job_id=job_id, phase=phase, action=action,
        attempt=int(count or 0) + 1, status=status, detail=detail, outputs={},
    )
    s.add(run)
    await s.flush()
    return run


async def abandon_running_phase_runs(s: AsyncSession, env_id: int) -> int:
    """Mark runs left `running` by a dead process as abandoned; returns how many."""
    result = await s.execute(
        update(PhaseRun)
        .where(PhaseRun.env_id == env_id, PhaseRun.status == PhaseStatus.RUNNING)
        .values(status=PhaseStatus.ABANDONED, finished_at=func.now(),
                error="the process running it stopped")
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- audit, dedupe


async def audit(
    s: AsyncSession, *, actor: str, action: str, source: str,
    env_id: int | None = None, details: dict[str, Any] | None = None,
) -> None:
    s.add(AuditEvent(actor=actor, action=action, source=source, env_id=env_id,
                     details=details or {}))
    await s.flush()


async def audit_many(s: AsyncSession, events: Sequence[dict[str, Any]]) -> None:
    """Record many audit events (`audit`'s keyword arguments each) in one statement."""
    if events:
        await s.execute(insert(AuditEvent).values([
            {"actor": e["actor"], "action": e["action"], "source": e["source"],
             "env_id": e.get("env_id"), "details": e.get("details") or {}} for e in events]))


async def first_sighting(s: AsyncSession, *, kind: str, key: str, keep: timedelta) -> bool:
    """Record a request from Slack for `keep`; True the first time, False for a copy of it.

    Safe across replicas: the primary key decides, so of two copies arriving at once exactly one
    is first."""
    result = await s.execute(
        insert(SlackRequestSeen)
        .values(kind=kind, key=key, keep_until=func.now() + keep)
        .on_conflict_do_nothing()
        .returning(SlackRequestSeen.key)
    )
    return result.scalar_one_or_none() is not None


async def last_job_kind(s: AsyncSession, env_id: int) -> JobKind | None:
    """The kind of the environment's most recent job (what a Retry repeats)."""
    stmt = select(Job.kind).where(Job.env_id == env_id).order_by(Job.id.desc()).limit(1)
    return (await s.execute(stmt)).scalar_one_or_none()


async def finish_phase_run(
    s: AsyncSession, run_id: int, *, status: PhaseStatus,
    outputs: dict[str, Any] | None = None, error: str | None = None, detail: str | None = None,
) -> bool:
    """Close a `running` run; False if it was no longer running (another worker abandoned it)."""
    values: dict[str, Any] = {"status": status, "finished_at": func.now(), "error": error}
    if outputs is not None:
        values["outputs"] = outputs
    if detail is not None:
        values["detail"] = detail
    result = await s.execute(
        update(PhaseRun)
        .where(PhaseRun.id == run_id, PhaseRun.status == PhaseStatus.RUNNING)
        .values(**values)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def set_phase_run_detail(s: AsyncSession, run_id: int, detail: str) -> None:
    """Record what a running phase is doing now ("creating role")."""
    await s.execute(
        update(PhaseRun)
        .where(PhaseRun.id == run_id, PhaseRun.status == PhaseStatus.RUNNING)
        .values(detail=detail)
    )


async def forget_sightings(s: AsyncSession, now: datetime) -> int:
    """Drop remembered Slack requests whose time is up (`keep_until` before `now`)."""
    result = await s.execute(delete(SlackRequestSeen).where(SlackRequestSeen.keep_until < now))
    return int(result.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- quotas, budget

# What counts against a quota: live, and not on its way out.
COUNTED_STATUSES = tuple(s for s in LIVE_STATUSES if s is not EnvStatus.DESTROYING)


async def lock_for_quota(s: AsyncSession, key: str) -> None:
    """A transaction-scoped advisory lock on `key` (a channel or a user): creates counting
    against the same quota wait for each other, so two cannot both take the last place."""
    await s.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(
        "ephem-quota:" + key, 0))))


async def counted_environments(
    s: AsyncSession, *, owner_id: str | None = None, channel_id: str | None = None,
) -> Sequence[Environment]:
    """Environments counted against a quota (of an owner, or of a channel), oldest first."""
    stmt = select(Environment).where(Environment.status.in_(COUNTED_STATUSES))
    if owner_id is not None:
        stmt = stmt.where(Environment.owner_id == owner_id)
    if channel_id is not None:
        stmt = stmt.where(Environment.channel_id == channel_id)
    return (await s.execute(stmt.order_by(Environment.created_at, Environment.id))
            ).scalars().all()


async def channel_environments_since(s: AsyncSession, *, channel_id: str,
                                     since: datetime) -> Sequence[Environment]:
    """A channel's environments that lived at some point since `since` (for its budget)."""
    stmt = select(Environment).where(
        Environment.channel_id == channel_id,
        (Environment.destroyed_at.is_(None)) | (Environment.destroyed_at >= since))
    return (await s.execute(stmt)).scalars().all()


async def latest_environment_named(s: AsyncSession, name: str) -> Environment | None:
    """The newest environment called `name`, live or not (a name is reused after a destroy)."""
    stmt = (select(Environment).where(Environment.name == name)
            .order_by(Environment.created_at.desc(), Environment.id.desc()).limit(1))
    return (await s.execute(stmt)).scalar_one_or_none()


async def audit_events(
    s: AsyncSession, *, env_id: int | None = None, env_name: str | None = None,
    since: datetime | None = None, limit: int = 1000,
) -> Sequence[tuple[AuditEvent, str | None]]:
    """Audit events, oldest first, each with its environment's name (None when it has none):
    of one environment (`env_id`), of every environment ever called `env_name`, at or after
    `since`; the newest `limit` of them."""
    stmt = select(AuditEvent, Environment.name).outerjoin(
        Environment, Environment.id == AuditEvent.env_id)
    if env_id is not None:
        stmt = stmt.where(AuditEvent.env_id == env_id)
    if env_name is not None:
        stmt = stmt.where(Environment.name == env_name)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    newest = stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    rows = [(row[0], row[1]) for row in (await s.execute(newest)).all()]
    rows.reverse()
    return rows
