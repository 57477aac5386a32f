"""Job leases in PostgreSQL: claim, renew, finish and release.

Why a module of its own: the guarantee "a job runs at most once at a time, across every Ephem
process sharing the database" lives entirely in these few statements, so they are kept together
and away from the asyncio plumbing in `worker.py`.

A claim is a lease: `lease_owner` names the process, `attempts` (incremented by every claim) is a
fencing token, and `lease_expires_at` says until when the claim holds unless renewed. A job whose
lease expired belongs to a process that died; any executor may claim it again. Every later
statement about a claimed job (renew, finish, release) matches on id, owner *and* attempts, so a
process that lost its lease can no longer change the job. All times are the database's clock.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from bot.domain import JobStatus, job_transition
from bot.ports import ClaimedJob, JobOutcome, OutcomeKind
from bot.store import Store
from bot.store.models import Job
from bot.store.repo import JOBS_CHANNEL

log = logging.getLogger(__name__)

_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
_OUTCOME_STATUS = {
    OutcomeKind.SUCCEEDED: JobStatus.SUCCEEDED,
    OutcomeKind.FAILED: JobStatus.FAILED,
    OutcomeKind.RETRY: JobStatus.QUEUED,
}


def _claimable(limit: int) -> Select[int]:
    """The oldest `limit` jobs that are queued and due, or running under an expired lease — each
    first in its environment's line: a job waits while another job of its environment is
    running or an older one is still queued, so jobs of one environment run one at a time,
    oldest first (and at most one job of an environment is ever among them).

    `FOR UPDATE SKIP LOCKED` lets concurrent claimers pass over rows another one is taking.
    """
    job = aliased(Job, name="candidate")
    other = aliased(Job, name="other")
    ahead = exists().where(
        other.env_id == job.env_id,
        other.id != job.id,
        or_(
            other.status == JobStatus.RUNNING,
            and_(other.status == JobStatus.QUEUED, other.id < job.id),
        ),
    )
    due = or_(
        and_(job.status == JobStatus.QUEUED, job.run_after <= func.now()),
        and_(job.status == JobStatus.RUNNING, job.lease_expires_at < func.now()),
    )
    return (
        select(job.id)
        .where(due, ~ahead)
        .order_by(job.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=job)
    )


def _held(job: ClaimedJob, owner: str) -> ColumnElement[bool]:
    """This claim of the job is still ours (the fencing condition)."""
    return and_(
        Job.id == job.id,
        Job.status == JobStatus.RUNNING,
        Job.lease_owner == owner,
        Job.attempts == job.attempts,
    )


async def _notify(s: AsyncSession, job_id: int) -> None:
    """Wake other executors: a job became claimable, or its environment's line moved on."""
    await s.execute(select(func.pg_notify(JOBS_CHANNEL, str(job_id))))


async def claim(store: Store, *, owner: str, lease_seconds: float) -> ClaimedJob | None:
    """Take the oldest claimable job, or None if there is none right now."""
    taken = await claim_many(store, owner=owner, lease_seconds=lease_seconds, limit=1)
    return taken[0] if taken else None


async def claim_many(store: Store, *, owner: str, lease_seconds: float,
                     limit: int) -> list[ClaimedJob]:
    """Take up to `limit` of the oldest claimable jobs in one statement, oldest first.

    One statement for every free slot: a burst of creates costs each executor one round trip,
    not one per slot. The candidates are locked in a materialized CTE, so the LIMIT is applied
    once (a LIMIT inside `IN (…)` may be evaluated again per row).

    The partial unique index on running jobs is the last line of defence for "one running job per
    environment" (two claimers can judge the line from snapshots taken before each other's
    commit); hitting it only means "not claimable now" — for the whole batch, which is then
    taken again one job at a time.
    """
    candidates = _claimable(limit).cte("claimable").prefix_with("MATERIALIZED")
    stmt = (
        update(Job)
        .where(Job.id == candidates.c.id)
        .values(
            status=job_transition(JobStatus.QUEUED, JobStatus.RUNNING),
            lease_owner=owner,
            lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            started_at=func.now(),
        )
        .returning(Job.id, Job.env_id, Job.kind, Job.attempts, Job.requested_by)
    )
    try:
        async with store.transaction() as s:
            rows = (await s.execute(stmt)).all()
    except IntegrityError:
        log.debug("claim raced with another executor on one environment; trying later")
        if limit > 1:
            return await claim_many(store, owner=owner, lease_seconds=lease_seconds, limit=1)
        return []
    return sorted((ClaimedJob(id=row.id, env_id=row.env_id, kind=row.kind,
                              attempts=row.attempts, requested_by=row.requested_by)
                   for row in rows), key=lambda job: job.id)


async def renew(store: Store, job: ClaimedJob, *, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False if it is no longer ours (it expired and someone else took it)."""
    async with store.transaction() as s:
        result = await s.execute(
            update(Job)
            .where(_held(job, owner))
            .values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
        )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def finish(store: Store, job: ClaimedJob, *, owner: str, outcome: JobOutcome) -> bool:
    """Record the outcome: succeeded, failed, or queued again after `outcome.delay` (RETRY).

    False if the lease was lost meanwhile; the job then belongs to whoever holds it now.
    """
    target = job_transition(JobStatus.RUNNING, _OUTCOME_STATUS[outcome.kind])
    values: dict[str, object] = {
        "status": target, "lease_owner": None, "lease_expires_at": None, "error": outcome.error,
    }
    if target is JobStatus.QUEUED:
        values["run_after"] = func.now() + timedelta(seconds=max(outcome.delay, 0.0))
    else:
        values["finished_at"] = func.now()
    async with store.transaction() as s:
        result = await s.execute(update(Job).where(_held(job, owner)).values(**values))
        held = int(result.rowcount) == 1  # type: ignore[attr-defined]
        if held:
            await _notify(s, job.id)
    return held


async def release(store: Store, job: ClaimedJob, *, owner: str) -> bool:
    """Give an unfinished job back (shutdown): queued, due now, lease cleared, others woken."""
    async with store.transaction() as s:
        result = await s.execute(
            update(Job)
            .where(_held(job, owner))
            .values(
                status=job_transition(JobStatus.RUNNING, JobStatus.QUEUED),
                lease_owner=None,
                lease_expires_at=None,
                run_after=func.now(),
            )
        )
        held = int(result.rowcount) == 1  # type: ignore[attr-defined]
        if held:
            await _notify(s, job.id)
    return held
