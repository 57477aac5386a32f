"""The pipeline runner: one job (create or destroy) of one environment, phase by phase.

Why: phases only know how to apply or destroy their part; everything cross-cutting lives here,
in a fixed order — the environment's status transitions, resume after a crash, the order of the
phases, one PhaseRun row per attempt committed before and after the attempt, retries of temporary
errors with backoff, timeouts, the owner told when a phase's credentials are ready (they are
derived again when sent, never stored), and the progress events the notifier turns into Slack
updates.

Resume rule: a phase whose latest run for the environment is a succeeded (or skipped) run of the
same action is done and not run again. So a process killed mid-job, or a Retry after a failure,
continues at the first unfinished phase. Runs left `running` by a dead process are marked
abandoned when the next job of the environment starts.

Neighbours: `bot.executor` calls a Runner as its `JobWork` and owns the job row; `attempt.py`
runs one phase attempt and sorts its failure; `bot.store.repo` holds the queries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from bot import logs
from bot.config import Blueprint
from bot.domain import (
    CREATE_ORDER,
    DESTROY_ORDER,
    DataRequest,
    EnvStatus,
    JobKind,
    PhaseAction,
    PhaseName,
    PhaseStatus,
    ProgressEvent,
    ReleaseSet,
)
from bot.ports import ClaimedJob, Events, JobOutcome, OutcomeKind
from bot.slack import messages
from bot.store import Store, repo
from bot.store.models import Environment
from pipelines.attempt import Emit, Failure, Superseded, error_id, run_attempts
from pipelines.base import HasSecrets, NeedsSecrets, Phase, PhaseContext

log = logging.getLogger(__name__)

_DONE = (PhaseStatus.SUCCEEDED, PhaseStatus.SKIPPED)


@dataclass(frozen=True)
class _Plan:
    action: PhaseAction
    order: tuple[PhaseName, ...]
    working: EnvStatus
    done: EnvStatus
    redo: bool = False  # run the phases even if they already succeeded (reset-data)


_PLANS: Mapping[JobKind, _Plan] = {
    JobKind.CREATE: _Plan(PhaseAction.APPLY, CREATE_ORDER, EnvStatus.CREATING, EnvStatus.READY),
    JobKind.DESTROY: _Plan(
        PhaseAction.DESTROY, DESTROY_ORDER, EnvStatus.DESTROYING, EnvStatus.DESTROYED
    ),
    JobKind.RESET_DATA: _Plan(PhaseAction.APPLY, (PhaseName.DATA,), EnvStatus.CREATING,
                              EnvStatus.READY, redo=True),
}


class Runner:
    """Runs a claimed job's phases in order; usable as the executor's `JobWork`."""

    def __init__(
        self,
        *,
        store: Store,
        phases: Mapping[PhaseName, Phase],
        blueprint: Blueprint,
        events: Events,
        secret_key: bytes,
        skipped: Mapping[PhaseName, str] | None = None,
    ) -> None:
        self.store = store
        self.phases = dict(phases)
        # Why a phase without an implementation is skipped (default: not configured).
        self.skipped = dict(skipped or {})
        self.blueprint = blueprint
        self.events = events
        self._secret_key = secret_key

    async def __call__(self, job: ClaimedJob) -> JobOutcome:
        plan = _PLANS[job.kind]
        logs.set_context(job_id=job.id, env_id=job.env_id)
        try:
            return await self._run(job, plan)
        except Superseded:
            log.warning("job %s: another worker took over environment %s", job.id, job.env_id)
            return JobOutcome(OutcomeKind.FAILED, error="another worker took over this job")
        except Exception:
            # Only the runner's own bookkeeping gets here (phase errors are sorted per attempt).
            eid = error_id()
            log.exception("job %s (%s of environment %s) failed unexpectedly [error id %s]",
                          job.id, job.kind, job.env_id, eid)
            reason = f"unexpected error (id {eid})"
            try:
                await self._finish_failed(job, last_error=f"{job.kind} failed: {reason}")
            except Exception:
                log.exception("job %s: could not record its failure [error id %s]", job.id, eid)
            return JobOutcome(OutcomeKind.FAILED, error=reason)

    async def credentials(self, env_id: int) -> Mapping[str, Mapping[str, str]]:
        """`bot.ports.CredentialsSource`: each applied phase's secrets, derived again."""

        async def nothing(_: str) -> None:
            return None

        ctx = await self._context(env_id, nothing)
        return {str(name): said for name, said in (await self._said(ctx, CREATE_ORDER)).items()}

    async def _said(self, ctx: PhaseContext, names: Iterable[PhaseName]
                    ) -> dict[PhaseName, Mapping[str, str]]:
        """The secrets of each of `names` that has applied and has any, derived again."""
        found: dict[PhaseName, Mapping[str, str]] = {}
        for name in names:
            phase = self.phases.get(name)
            if isinstance(phase, HasSecrets) and name in ctx.outputs:
                said = await phase.secrets(ctx)
                if said:
                    found[name] = dict(said)
        return found

    # ------------------------------------------------------------------ the job

    async def _run(self, job: ClaimedJob, plan: _Plan) -> JobOutcome:
        async with self.store.transaction() as s:
            await repo.abandon_running_phase_runs(s, job.env_id)
            env = await repo.get_environment(s, job.env_id, for_update=True)
            name = env.name
            destroyed = env.status is EnvStatus.DESTROYED
            if not destroyed:
                await _enter(s, env, plan.working)
            latest = await repo.latest_phase_runs(s, job.env_id)
        logs.set_context(env=name)
        if destroyed:
            return await self._already_destroyed(job, plan, name=name)
        await self._progress(ProgressEvent(job.env_id, None, PhaseStatus.RUNNING,
                                           detail=f"{plan.working} {name}"))
        for phase_name in plan.order:
            run = latest.get(phase_name)
            if (not plan.redo and run is not None and run.action is plan.action
                    and run.status in _DONE):
                continue  # finished by an earlier job or attempt: resume after it
            phase = self.phases.get(phase_name)
            if phase is None:
                await self._skip(job, phase_name, plan.action)
                continue
            failure = await self._phase(job, phase, plan.action)
            if failure is not None:
                last_error = f"{phase_name} {plan.action} failed: {failure.reason}"
                await self._finish_failed(job, last_error=last_error)
                return JobOutcome(OutcomeKind.FAILED, error=last_error)
        await self._finish_ok(job, plan, name=name)
        return JobOutcome(OutcomeKind.SUCCEEDED)

    async def _phase(self, job: ClaimedJob, phase: Phase, action: PhaseAction) -> Failure | None:
        """Run one phase with retries; deliver its results; None on success."""
        started = time.monotonic()
        log.info("%s %s: started", phase.name, action,
                 extra={"event": "phase", "phase": str(phase.name), "action": str(action),
                        "status": "running"})
        outcome = await run_attempts(
            store=self.store,
            phase=phase,
            action=action,
            job_id=job.id,
            context=lambda emit: self._context(
                job.env_id, emit, reset=job.kind is JobKind.RESET_DATA,
                secrets_of=phase.secrets_of if (action is PhaseAction.APPLY
                                                and isinstance(phase, NeedsSecrets)) else ()),
            events=self.events,
            blueprint=self.blueprint,
        )
        seconds = round(time.monotonic() - started, 3)
        log.info("%s %s: %s in %.1fs", phase.name, action,
                 "failed" if isinstance(outcome, Failure) else "succeeded", seconds,
                 extra={"event": "phase", "phase": str(phase.name), "action": str(action),
                        "status": "failed" if isinstance(outcome, Failure) else "succeeded",
                        "seconds": seconds})
        if isinstance(outcome, Failure):
            await self._progress(ProgressEvent(job.env_id, phase.name, PhaseStatus.FAILED,
                                               detail=outcome.reason))
            if outcome.details:
                await self._progress(ProgressEvent(
                    job.env_id, phase.name, PhaseStatus.FAILED, milestone=True,
                    detail=f"{phase.name}: the end of the output\n"
                           f"```\n{outcome.details[-2500:]}\n```"))
            return outcome
        took = f"in {time.monotonic() - started:.1f}s"
        detail = f"{outcome.summary} ({took})" if outcome.summary else took
        if outcome.secrets:
            await self._credentials_ready(job.env_id, phase.name)
        await self._progress(ProgressEvent(job.env_id, phase.name, PhaseStatus.SUCCEEDED,
                                           detail=detail))
        if outcome.links:  # posted in the thread, under the phase's summary
            links = "\n".join(f"{label}: {url}" for label, url in outcome.links.items())
            await self._progress(ProgressEvent(
                job.env_id, phase.name, PhaseStatus.SUCCEEDED, milestone=True,
                detail=f"{outcome.summary}\n{links}" if outcome.summary else links))
        return None

    async def _context(self, env_id: int, emit: Emit, *, reset: bool = False,
                       secrets_of: Iterable[PhaseName] = ()) -> PhaseContext:
        """The environment as phases see it, with the secrets of the phases in `secrets_of`
        (derived again, never read from storage)."""
        async with self.store.transaction() as s:
            env = await repo.get_environment(s, env_id)
        ctx = PhaseContext(
            env_id=env.id,
            name=env.name,
            owner_id=env.owner_id,
            release_set=ReleaseSet(dict(env.release_set)),
            data=DataRequest(env.data_mode, env.data_snapshot),
            blueprint=self.blueprint,
            outputs={PhaseName(k): dict(v) for k, v in env.outputs.items()},
            emit=emit,
            secret_key=self._secret_key,
            reset_data=reset,
            reference=env.reference,
            expires_at=env.expires_at,
        )
        if not secrets_of:
            return ctx
        return replace(ctx, secrets=await self._said(ctx, secrets_of))

    async def _skip(self, job: ClaimedJob, name: PhaseName, action: PhaseAction) -> None:
        detail = self.skipped.get(name, "not configured in the blueprint")
        async with self.store.transaction() as s:
            run = await repo.start_phase_run(s, env_id=job.env_id, job_id=job.id, phase=name,
                                             action=action, status=PhaseStatus.SKIPPED,
                                             detail=detail)
            run.finished_at = func.now()
        await self._progress(ProgressEvent(job.env_id, name, PhaseStatus.SKIPPED, detail=detail))

    # ------------------------------------------------------------------ endings

    async def _finish_ok(self, job: ClaimedJob, plan: _Plan, *, name: str) -> None:
        detail = f"{name} is {plan.done}"
        async with self.store.transaction() as s:
            env = await repo.get_environment(s, job.env_id, for_update=True)
            await repo.set_status(s, env, plan.done)
            env.last_error = None
            details: dict[str, object] = {"job_id": job.id}
            if plan.done is EnvStatus.DESTROYED:
                # The end of the thread: what went, and how long it lived.
                runs = await repo.latest_phase_runs(s, job.env_id)
                removed = [f"{p} ({run.detail})" if run.detail else str(p)
                           for p in plan.order
                           if (run := runs.get(p)) is not None
                           and run.action is PhaseAction.DESTROY
                           and run.status is PhaseStatus.SUCCEEDED]
                lived = max(datetime.now(UTC) - env.created_at, timedelta(0))
                detail = messages.destroyed(name, lived=lived, removed=removed,
                                            expired=job.requested_by == "ephem")
                details |= {"lived_seconds": int(lived.total_seconds()), "removed": removed}
            await repo.audit(s, actor="ephem", action=f"{job.kind}-succeeded", source="executor",
                             env_id=job.env_id, details=details)
        await self._progress(ProgressEvent(job.env_id, None, PhaseStatus.SUCCEEDED,
                                           detail=detail, milestone=True))

    async def _finish_failed(self, job: ClaimedJob, *, last_error: str) -> None:
        async with self.store.transaction() as s:
            env = await repo.get_environment(s, job.env_id, for_update=True)
            if env.status in (EnvStatus.CREATING, EnvStatus.DESTROYING):
                await repo.set_status(s, env, EnvStatus.FAILED)
            env.last_error = last_error
            await repo.audit(s, actor="ephem", action=f"{job.kind}-failed", source="executor",
                             env_id=job.env_id, details={"job_id": job.id, "error": last_error})
        await self._progress(ProgressEvent(job.env_id, None, PhaseStatus.FAILED,
                                           detail=last_error, milestone=True))

    async def _already_destroyed(self, job: ClaimedJob, plan: _Plan, *, name: str) -> JobOutcome:
        """Destroying a destroyed environment is done already; creating one is refused."""
        if plan.done is EnvStatus.DESTROYED:
            await self._progress(ProgressEvent(job.env_id, None, PhaseStatus.SUCCEEDED,
                                               detail=f"{name} was already destroyed"))
            return JobOutcome(OutcomeKind.SUCCEEDED)
        return JobOutcome(OutcomeKind.FAILED,
                          error=f"{name} is destroyed; create a new environment instead")

    # ------------------------------------------------------------------ telling people

    async def _progress(self, event: ProgressEvent) -> None:
        """Report progress; a notifier failure never fails the job."""
        try:
            await self.events.progress(event)
        except Exception as exc:
            log.warning("progress event for environment %s not delivered (%s)",
                        event.env_id, type(exc).__name__)

    async def _credentials_ready(self, env_id: int, phase: PhaseName) -> None:
        """Tell the notifier the phase's secrets can be said (`credentials`); never the secrets
        themselves, so nothing on the way to Slack holds them."""
        try:
            await self.events.credentials_ready(env_id, phase)
        except Exception as exc:
            log.warning("credentials for environment %s not delivered (%s); re-applying the "
                        "phase delivers them again", env_id, type(exc).__name__)


async def _enter(s: AsyncSession, env: Environment, target: EnvStatus) -> None:
    """Move the environment to the job's working status.

    `creating`/`destroying` left behind by a job that no longer runs (this job holds the
    environment's only running slot) is first closed as `failed`, since that job did not finish.
    """
    if env.status in (EnvStatus.CREATING, EnvStatus.DESTROYING) and env.status is not target:
        await repo.set_status(s, env, EnvStatus.FAILED)
    await repo.set_status(s, env, target)

