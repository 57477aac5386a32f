"""Small phases for the runner and executor tests: they implement the Phase protocol and do what
the test scripts (record the call, fail in a given way, wait), nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import Blueprint, Retries, Timeouts
from bot.domain import DataMode, JobKind, PhaseName
from bot.ports import ClaimedJob
from bot.store import Store, repo
from pipelines.base import PhaseContext, PhaseResult

Hook = Callable[[PhaseContext], Awaitable[None]]


class ScriptedPhase:
    """Records `<phase>.<action>` in `calls`; raises the scripted errors one call at a time, then
    succeeds with the given outputs, secrets and links."""

    def __init__(
        self,
        name: PhaseName,
        calls: list[str],
        *,
        outputs: Mapping[str, Any] | None = None,
        secrets: Mapping[str, str] | None = None,
        links: Mapping[str, str] | None = None,
        errors: list[BaseException] | None = None,
        hook: Hook | None = None,
    ) -> None:
        self.name = name
        self.calls = calls
        self.outputs = dict(outputs or {"id": f"{name}-1"})
        # Not `self.secrets`: that name is `HasSecrets`'s method, which this phase does not have.
        self.owner_secrets = dict(secrets or {})
        self.links = dict(links or {})
        self.errors = list(errors or [])
        self.hook = hook
        self.seen: list[PhaseContext] = []

    async def _call(self, ctx: PhaseContext, action: str) -> None:
        self.calls.append(f"{self.name}.{action}")
        self.seen.append(ctx)
        if self.hook is not None:
            await self.hook(ctx)
        if self.errors:
            raise self.errors.pop(0)

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        await self._call(ctx, "apply")
        return PhaseResult(outputs=self.outputs, secrets=self.owner_secrets, links=self.links,
                           summary=f"{self.name} done")

    async def destroy(self, ctx: PhaseContext) -> None:
        await self._call(ctx, "destroy")

    async def describe(self, ctx: PhaseContext) -> str:
        return f"{self.name} for {ctx.name}"


class HangingPhase(ScriptedPhase):
    """Records its call, then waits until cancelled."""

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        await self._call(ctx, "apply")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def blueprint(*, attempts: int = 3, timeout: float = 5.0) -> Blueprint:
    """Short backoff and timeouts, so retry and timeout tests stay fast."""
    limit = timedelta(seconds=timeout)
    return Blueprint(
        retries=Retries(attempts=attempts, backoff=timedelta(milliseconds=10)),
        timeouts=Timeouts(infra=limit, code=limit, data=limit),
    )


async def make_env(store: Store, name: str) -> int:
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name=name, owner_id="U-owner", channel_id="C1", reference=None,
            release_set={"api": "1.0"}, data_mode=DataMode.SEED, data_snapshot=None,
            reason=None, expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        return env.id


async def enqueue(store: Store, env_id: int, kind: JobKind = JobKind.CREATE) -> int:
    async with store.transaction() as s:
        job = await repo.enqueue_job(s, env_id=env_id, kind=kind, requested_by="U-owner")
        return job.id


async def new_job(store: Store, env_id: int, kind: JobKind = JobKind.CREATE) -> ClaimedJob:
    """A job row (phase runs refer to it) and the claim the executor would hand the runner."""
    job_id = await enqueue(store, env_id, kind)
    return ClaimedJob(id=job_id, env_id=env_id, kind=kind, attempts=1, requested_by="U-owner")
