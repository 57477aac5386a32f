"""Approvals of snapshot-derived data: who must decide, and the decision, settled in the store.

Why a module of its own: a create or reset-data that asks for masked production data waits
until approvers decide, and the rules of that wait — what is covered, who may decide, how two
clicks at once become one decision, when the request lapses — must be the same whether the
decision comes from a button, a modal, `/ephem approve`, or the scheduler expiring it. Every
decision is taken under the request row's lock (`SELECT … FOR UPDATE`) and leaves `pending` by
one UPDATE, so two approvers at once, or one approver clicking twice, make exactly one decision;
each approval is its own `approval_votes` row, whose primary key makes a double click one vote.
Nothing here is kept in memory, and nothing here talks to Slack: callers turn the `Outcome`
into messages after the transaction commits.

Neighbours: `handlers.commands` opens requests and takes decisions; the scheduler's beat calls
`expire`; `bot.slack.notifier` renders the card from the rows here; `bot.ports.ApproverDirectory`
answers who is in a Slack user group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import ApproverRule, Blueprint
from bot.domain import (
    ApprovalStatus,
    DataMode,
    DataRequest,
    EnvStatus,
    JobKind,
    JobStatus,
    job_transition,
)
from bot.errors import UserError
from bot.ports import ApproverDirectory
from bot.store import repo
from bot.store.models import ApprovalRequest, ApprovalVote, Environment, Job

APPROVAL_ACTOR = "ephem"


def rule_for(blueprint: Blueprint, data: DataRequest) -> ApproverRule | None:
    """Who must approve `data`; None when it needs no approval (not snapshot data, or nobody
    is configured to decide: see the README's *Approvals*)."""
    if data.mode is not DataMode.SNAPSHOT or data.snapshot is None:
        return None
    return blueprint.approvals.rule_for(data.snapshot, blueprint.admins)


def rules_version(blueprint: Blueprint, snapshot: str) -> str:
    """The masking rules' version: the first 12 hex digits of the rules file's SHA-256, the
    digest a built snapshot records (`rules_sha256`). `unreadable` when the file cannot be read
    now — the approver sees that, and the build would refuse too."""
    data = blueprint.phases.data
    config = data.snapshots.get(snapshot) if data is not None else None
    if config is None:
        return "unknown"
    try:
        return hashlib.sha256(config.rules.read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


async def covered(s: AsyncSession, *, env_id: int, snapshot: str, requester: str
                  ) -> ApprovalRequest | None:
    """An approved request for exactly this environment, snapshot and requester (an approval
    lasts as long as its environment), or None."""
    stmt = (select(ApprovalRequest)
            .where(ApprovalRequest.env_id == env_id, ApprovalRequest.snapshot == snapshot,
                   ApprovalRequest.requester_id == requester,
                   ApprovalRequest.status == ApprovalStatus.APPROVED)
            .order_by(ApprovalRequest.id.desc()).limit(1))
    return (await s.execute(stmt)).scalar_one_or_none()


async def open_request(
    s: AsyncSession, *, env: Environment, job: Job, requester: str, snapshot: str,
    rule: ApproverRule, reason: str, rules: str, card_channel: str, expires_at: datetime,
    source: str,
) -> ApprovalRequest:
    """Record a pending request for `job` (which must be `awaiting_approval`), and audit it."""
    request = ApprovalRequest(
        env_id=env.id, job_id=job.id, requester_id=requester, snapshot=snapshot,
        rules_version=rules, reason=reason, approvers=list(rule.users),
        usergroup=rule.usergroup, required=rule.required, status=ApprovalStatus.PENDING,
        card_channel=card_channel, expires_at=expires_at,
    )
    s.add(request)
    await s.flush()
    await repo.audit(s, actor=requester, action="approval-requested", source=source,
                     env_id=env.id, details={
                         "request": request.id, "job": job.id, "kind": str(job.kind),
                         "snapshot": snapshot, "rules_version": rules, "reason": reason,
                         "approvers": list(rule.users), "usergroup": rule.usergroup,
                         "required": rule.required, "expires_at": expires_at.isoformat()})
    return request


async def get(s: AsyncSession, request_id: int, *, for_update: bool = False
              ) -> ApprovalRequest | None:
    stmt = select(ApprovalRequest).where(ApprovalRequest.id == request_id)
    if for_update:
        # Read again under the lock, even if this session read the row before.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return (await s.execute(stmt)).scalar_one_or_none()


async def _locked(s: AsyncSession, request_id: int, *, skip_locked: bool = False
                  ) -> tuple[ApprovalRequest, Environment] | None:
    """The request and its environment, locked in the order every writer takes them —
    environment first (as destroy, extend and the runner do), then the request — so a decision
    racing a destroy waits instead of deadlocking. None if it does not exist (or, with
    `skip_locked`, if another process holds the environment)."""
    found = await get(s, request_id)
    if found is None:
        return None
    stmt = select(Environment).where(Environment.id == found.env_id).with_for_update(
        skip_locked=skip_locked)
    env = (await s.execute(stmt.execution_options(populate_existing=True))
           ).scalar_one_or_none()
    request = await get(s, request_id, for_update=True)
    if env is None or request is None:
        return None
    return request, env


async def votes(s: AsyncSession, request_id: int) -> list[str]:
    """Who approved so far, in order."""
    stmt = (select(ApprovalVote.approver_id).where(ApprovalVote.request_id == request_id)
            .order_by(ApprovalVote.at, ApprovalVote.approver_id))
    return list((await s.execute(stmt)).scalars().all())


async def pending(s: AsyncSession) -> Sequence[ApprovalRequest]:
    """Every request still waiting, oldest first."""
    stmt = (select(ApprovalRequest).where(ApprovalRequest.status == ApprovalStatus.PENDING)
            .order_by(ApprovalRequest.id))
    return (await s.execute(stmt)).scalars().all()


async def waiting_on(s: AsyncSession, env_id: int) -> ApprovalRequest | None:
    """The environment's request still waiting for a decision, if any."""
    stmt = (select(ApprovalRequest)
            .where(ApprovalRequest.env_id == env_id,
                   ApprovalRequest.status == ApprovalStatus.PENDING)
            .order_by(ApprovalRequest.id.desc()).limit(1))
    return (await s.execute(stmt)).scalar_one_or_none()


async def waiting_for(s: AsyncSession, user: str, directory: ApproverDirectory | None
                      ) -> list[ApprovalRequest]:
    """Pending requests `user` may decide and has not approved yet (never their own)."""
    found = []
    for request in await pending(s):
        if request.requester_id == user or user in await votes(s, request.id):
            continue
        if await may_decide(request, user, directory) is Membership.YES:
            found.append(request)
    return found


class Membership(StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"  # only a user group could say, and Slack did not answer


async def may_decide(request: ApprovalRequest, user: str,
                     directory: ApproverDirectory | None) -> Membership:
    """Whether `user` is one of the request's approvers (listed, or in its user group)."""
    if user in request.approvers:
        return Membership.YES
    if request.usergroup is None:
        return Membership.NO
    members = await directory.usergroup_members(request.usergroup) if directory else None
    if members is None:
        return Membership.UNKNOWN
    return Membership.YES if user in members else Membership.NO


class Result(StrEnum):
    APPROVED = "approved"  # this approval was the last one needed: the job is queued
    COUNTED = "counted"  # an approval, and more are needed
    DENIED = "denied"  # the job failed
    EXPIRED = "expired"  # its time had run out: the job failed
    ALREADY = "already"  # decided before this click; nothing changed
    VOTED = "voted"  # this approver had approved already; nothing changed


@dataclass(frozen=True)
class Outcome:
    result: Result
    request_id: int
    env_id: int
    env_name: str
    status: ApprovalStatus
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None = None
    approvals: int = 0
    required: int = 1


def _outcome(result: Result, request: ApprovalRequest, env: Environment, *,
             approvals: int = 0) -> Outcome:
    return Outcome(result=result, request_id=request.id, env_id=env.id, env_name=env.name,
                   status=request.status, decided_by=request.decided_by,
                   decided_at=request.decided_at, reason=request.decision_reason,
                   approvals=approvals, required=request.required)


async def decide(s: AsyncSession, request_id: int, *, user: str, approve: bool,
                 reason: str | None, now: datetime, source: str) -> Outcome:
    """Approve or deny the request, whose deciders the caller checked `user` is among. Past its
    expiry it is expired instead. Raises UserError when there is no such request."""
    locked = await _locked(s, request_id)
    if locked is None:
        raise not_found(request_id)
    request, env = locked
    if request.status is not ApprovalStatus.PENDING:
        return _outcome(Result.ALREADY, request, env)
    if request.expires_at <= now:
        await _settle(s, request, env, status=ApprovalStatus.EXPIRED, actor=APPROVAL_ACTOR,
                      now=now, reason=None, source="scheduler")
        return _outcome(Result.EXPIRED, request, env)
    if not approve:
        await _settle(s, request, env, status=ApprovalStatus.DENIED, actor=user, now=now,
                      reason=reason, source=source)
        return _outcome(Result.DENIED, request, env)
    added = await s.execute(insert(ApprovalVote)
                            .values(request_id=request.id, approver_id=user, at=now)
                            .on_conflict_do_nothing().returning(ApprovalVote.approver_id))
    count = len(await votes(s, request.id))
    if added.scalar_one_or_none() is None:
        return _outcome(Result.VOTED, request, env, approvals=count)
    await repo.audit(s, actor=user, action="approval-vote", source=source, env_id=env.id,
                     details={"request": request.id, "approvals": count,
                              "required": request.required})
    if count < request.required:
        return _outcome(Result.COUNTED, request, env, approvals=count)
    await _settle(s, request, env, status=ApprovalStatus.APPROVED, actor=user, now=now,
                  reason=None, source=source)
    return _outcome(Result.APPROVED, request, env, approvals=count)


async def _settle(s: AsyncSession, request: ApprovalRequest, env: Environment, *,
                  status: ApprovalStatus, actor: str, now: datetime, reason: str | None,
                  source: str) -> None:
    """Leave `pending` (one conditional UPDATE), and move the job and environment with it."""
    result = await s.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.id == request.id,
               ApprovalRequest.status == ApprovalStatus.PENDING)
        .values(status=status, decided_by=actor, decided_at=now, decision_reason=reason))
    if int(result.rowcount) != 1:  # type: ignore[attr-defined]
        raise RuntimeError(f"approval request {request.id} was decided under its lock")
    await s.refresh(request)
    job = (await s.execute(select(Job).where(Job.id == request.job_id).with_for_update())
           ).scalar_one()
    if job.status is JobStatus.AWAITING_APPROVAL:
        if status is ApprovalStatus.APPROVED:
            job.status = job_transition(job.status, JobStatus.QUEUED)
            job.run_after = func.now()
            if job.kind is JobKind.RESET_DATA:
                # A reset-data may ask for another snapshot: it becomes the environment's data
                # once approved, never before.
                env.data_mode, env.data_snapshot = DataMode.SNAPSHOT, request.snapshot
            await s.flush()
            await s.execute(select(func.pg_notify(repo.JOBS_CHANNEL, str(job.id))))
        else:
            why = _failure(status, actor, reason)
            job.status = job_transition(job.status, JobStatus.FAILED)
            job.error = why
            job.finished_at = func.now()
            if env.status is EnvStatus.QUEUED:  # a create that never started
                await repo.set_status(s, env, EnvStatus.FAILED)
                env.last_error = why
    action = {ApprovalStatus.APPROVED: "approve", ApprovalStatus.DENIED: "deny",
              ApprovalStatus.EXPIRED: "approval-expired",
              ApprovalStatus.CANCELLED: "approval-cancelled"}[status]
    await repo.audit(s, actor=actor, action=action, source=source, env_id=env.id,
                     details={"request": request.id, "job": job.id, "snapshot": request.snapshot,
                              "requester": request.requester_id, "reason": reason})
    await s.flush()


def _failure(status: ApprovalStatus, actor: str, reason: str | None) -> str:
    if status is ApprovalStatus.DENIED:
        return f"snapshot data denied by {actor}: {reason or 'no reason given'}"
    if status is ApprovalStatus.EXPIRED:
        return "snapshot data was not approved in time"
    return "the approval request was cancelled"


async def expire(s: AsyncSession, *, now: datetime) -> list[Outcome]:
    """Expire every pending request whose time is up; safe in several processes at once
    (rows another process is settling are skipped)."""
    stmt = (select(ApprovalRequest.id)
            .where(ApprovalRequest.status == ApprovalStatus.PENDING,
                   ApprovalRequest.expires_at <= now)
            .order_by(ApprovalRequest.id))
    done = []
    for request_id in (await s.execute(stmt)).scalars().all():
        locked = await _locked(s, request_id, skip_locked=True)
        if locked is None or locked[0].status is not ApprovalStatus.PENDING:
            continue  # being decided (or expired) by someone else right now
        request, env = locked
        await _settle(s, request, env, status=ApprovalStatus.EXPIRED, actor=APPROVAL_ACTOR,
                      now=now, reason=None, source="scheduler")
        done.append(_outcome(Result.EXPIRED, request, env))
    return done


async def cancel_for(s: AsyncSession, env_id: int, *, actor: str, now: datetime,
                     source: str) -> list[int]:
    """Cancel the environment's pending requests (it is being destroyed); returns their ids."""
    stmt = (select(ApprovalRequest)
            .where(ApprovalRequest.env_id == env_id,
                   ApprovalRequest.status == ApprovalStatus.PENDING)
            .with_for_update())
    cancelled = []
    for request in (await s.execute(stmt)).scalars().all():
        job = (await s.execute(select(Job).where(Job.id == request.job_id).with_for_update())
               ).scalar_one()
        await s.execute(
            update(ApprovalRequest).where(ApprovalRequest.id == request.id)
            .values(status=ApprovalStatus.CANCELLED, decided_by=actor, decided_at=now))
        if job.status is JobStatus.AWAITING_APPROVAL:
            job.status = job_transition(job.status, JobStatus.CANCELLED)
            job.finished_at = func.now()
        await repo.audit(s, actor=actor, action="approval-cancelled", source=source,
                         env_id=env_id, details={"request": request.id, "job": job.id})
        cancelled.append(request.id)
    await s.flush()
    return cancelled


def not_found(request_id: int) -> UserError:
    return UserError(f"There is no approval request #{request_id}. `/ephem pending` lists "
                     "the ones waiting for you.")
