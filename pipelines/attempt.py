"""One phase of one job, attempt by attempt: persist, run under a timeout, sort the failure, retry.

Why a module of its own: this is where a phase's exception becomes a persisted outcome, and the
rules are easy to get subtly wrong — a `TemporaryError` is retried in-process with growing backoff
(never sooner than the delay it asks for), a `PermanentError` or a timeout stops at once, anything
else is a bug that is logged with an id and shown only as "unexpected error (id …)". Each attempt
is its own PhaseRun row: committed as `running` before the phase does anything, closed in its own
transaction right after, so a crash loses at most the attempt in flight.

Neighbours: `runner.py` calls `run_attempts` for each phase and turns the result into events;
the secrets of a `PhaseResult` pass through here untouched and are never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from bot import metrics, redaction
from bot.config import Blueprint
from bot.domain import PhaseAction, PhaseStatus, ProgressEvent, format_duration
from bot.errors import PhaseError, TemporaryError
from bot.ports import Events
from bot.store import Store, repo
from pipelines.base import Phase, PhaseContext, PhaseResult

log = logging.getLogger(__name__)

Emit = Callable[[str], Awaitable[None]]
ContextFactory = Callable[[Emit], Awaitable[PhaseContext]]

_SHORT = 240


@dataclass(frozen=True)
class Failure:
    """A phase that did not succeed; `reason` is short and safe to show in the channel."""

    reason: str
    details: str | None = None  # longer text for the thread (e.g. a tool's output tail)

    @classmethod
    def of(cls, exc: PhaseError) -> Failure:
        """The failure a phase's error describes, every known secret taken out of its texts:
        they go to the channel, the store and the log, and a tool's output tail may hold
        anything its environment or its arguments did."""
        details = redaction.scrub(exc.details) if exc.details else None
        return cls(short(redaction.scrub(exc.reason)), details)


class Superseded(Exception):
    """Our running PhaseRun was marked abandoned by another worker: it owns the environment now."""


def error_id() -> str:
    """A short id tying the apology a user sees to the log entry with the trace."""
    return secrets.token_hex(4)


def short(text: str) -> str:
    """One line, at most a couple of hundred characters."""
    line = " ".join(text.split())
    return line if len(line) <= _SHORT else line[: _SHORT - 1] + "…"


def _human(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 60 else format_duration(timedelta(seconds=seconds))


async def run_attempts(
    *,
    store: Store,
    phase: Phase,
    action: PhaseAction,
    job_id: int,
    context: ContextFactory,
    events: Events,
    blueprint: Blueprint,
) -> PhaseResult | Failure:
    """Run `phase` until it succeeds, fails for good, or runs out of attempts."""
    attempts = blueprint.retries.attempts
    backoff = blueprint.retries.backoff.total_seconds()
    limit: timedelta = getattr(blueprint.timeouts, phase.name.value)
    for attempt in range(1, attempts + 1):
        run = _Run(store=store, events=events, phase=phase)
        ctx = await run.start(job_id=job_id, action=action, context=context)
        timeout = asyncio.timeout(limit.total_seconds())
        began = time.monotonic()
        try:
            async with timeout:
                result = await _work(phase, action, ctx)
        except asyncio.CancelledError:
            _observe(phase, action, PhaseStatus.ABANDONED, began)
            await run.interrupted()
            raise
        except TemporaryError as exc:
            failure = Failure.of(exc)
            retry_in = max(exc.delay, backoff * 2 ** (attempt - 1))
        except PhaseError as exc:  # PermanentError, or one that does not say: do not retry
            failure = Failure.of(exc)
            retry_in = None
        except Exception as exc:
            if isinstance(exc, TimeoutError) and timeout.expired():
                failure = Failure(f"timed out after {_human(limit.total_seconds())}")
            else:
                eid = error_id()
                log.exception("%s %s of environment %s (job %s) raised unexpectedly "
                              "[error id %s]", phase.name, action, ctx.env_id, job_id, eid)
                failure = Failure(f"unexpected error (id {eid})")
            retry_in = None
        else:
            _observe(phase, action, PhaseStatus.SUCCEEDED, began)
            await run.succeeded(result, action=action)
            return result
        _observe(phase, action, PhaseStatus.FAILED, began)
        await run.failed(failure.reason)
        if retry_in is None or attempt == attempts:
            return failure
        await run.say(f"{failure.reason}; retrying in {_human(retry_in)} "
                      f"(attempt {attempt + 1} of {attempts})")
        await asyncio.sleep(retry_in)
    raise AssertionError("unreachable: the loop returns on its last attempt")


def _observe(phase: Phase, action: PhaseAction, status: PhaseStatus, began: float) -> None:
    metrics.PHASE_SECONDS.labels(phase=str(phase.name), action=str(action),
                                 status=str(status)).observe(time.monotonic() - began)


async def _work(phase: Phase, action: PhaseAction, ctx: PhaseContext) -> PhaseResult:
    if action is PhaseAction.APPLY:
        await ctx.emit(await phase.describe(ctx))
        return await phase.apply(ctx)
    await ctx.emit(f"removing {phase.name} of {ctx.name}")
    # What is removed, said before it goes (the thread's last message lists it).
    try:
        what = await phase.describe(ctx)
    except asyncio.CancelledError:
        raise
    except Exception:
        what = ""
    await phase.destroy(ctx)
    return PhaseResult(summary=what)


class _Run:
    """One attempt's PhaseRun row and the events about it."""

    def __init__(self, *, store: Store, events: Events, phase: Phase) -> None:
        self.store = store
        self.events = events
        self.phase = phase
        self.env_id = 0
        self.id = 0

    async def start(self, *, job_id: int, action: PhaseAction,
                    context: ContextFactory) -> PhaseContext:
        ctx = await context(self.emit)
        self.env_id = ctx.env_id
        async with self.store.transaction() as s:
            row = await repo.start_phase_run(s, env_id=ctx.env_id, job_id=job_id,
                                             phase=self.phase.name, action=action)
            self.id = row.id
        return ctx

    async def emit(self, detail: str) -> None:
        """`PhaseContext.emit`: persist what the phase is doing and show it on the card (every
        known secret taken out: a phase may forward a line of a tool's output)."""
        detail = short(redaction.scrub(detail))
        async with self.store.transaction() as s:
            await repo.set_phase_run_detail(s, self.id, detail)
        await self.say(detail)

    async def say(self, detail: str) -> None:
        try:
            await self.events.progress(
                ProgressEvent(self.env_id, self.phase.name, PhaseStatus.RUNNING, detail=detail))
        except Exception as exc:
            log.warning("progress event for environment %s not delivered (%s)",
                        self.env_id, type(exc).__name__)

    async def succeeded(self, result: PhaseResult, *, action: PhaseAction) -> None:
        """Close the run and merge its public outputs into the environment, in one transaction.

        Outputs of a destroyed phase are dropped from the environment (the runs keep them).
        """
        outputs = dict(result.outputs)
        async with self.store.transaction() as s:
            env = await repo.get_environment(s, self.env_id, for_update=True)
            closed = await repo.finish_phase_run(
                s, self.id, status=PhaseStatus.SUCCEEDED, outputs=outputs,
                detail=short(result.summary) if result.summary else None)
            if not closed:
                raise Superseded
            merged = dict(env.outputs)
            key = self.phase.name.value
            if action is PhaseAction.APPLY:
                merged[key] = {**merged.get(key, {}), **outputs}
            else:
                merged.pop(key, None)
            env.outputs = merged

    async def failed(self, reason: str) -> None:
        async with self.store.transaction() as s:
            if not await repo.finish_phase_run(s, self.id, status=PhaseStatus.FAILED,
                                               error=reason):
                raise Superseded

    async def interrupted(self) -> None:
        """Cancelled (shutdown or lease lost): close the run now rather than on the next start."""
        with contextlib.suppress(Exception):
            async with self.store.transaction() as s:
                await repo.finish_phase_run(s, self.id, status=PhaseStatus.ABANDONED,
                                            error="interrupted: the worker running it stopped")
