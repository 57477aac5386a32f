"""The executor: asyncio workers that claim jobs from PostgreSQL and run them to an outcome.

Why: handlers only write a job row; something must pick it up, run it exactly once, survive a
restart and drain on shutdown. One dispatcher task claims jobs while a worker slot is free (woken
by LISTEN `ephem_jobs`, by a job finishing, or every `poll_seconds`); each claimed job runs in
its own task next to a lease keeper that renews the lease every third of its length.

The keeper stops the work *before* anyone else may claim it: each renewal is time-boxed (a
connection that hangs must not hang the keeper), and when the lease has not been renewed for
`lease - margin` seconds (the margin is a third of the lease) the work is cancelled, which ends
the phase's tool and everything it started (`bot.proc`), while the lease still holds. Times are
measured from just before the claim or renewal was sent, so the database's expiry is never
earlier than the keeper thinks. What a frozen process cannot do for itself, the tool's fence
does (`bot.proc.Fence`): a successor waits for it.

`stop()` has SIGTERM semantics: claim nothing more, give running jobs `grace_seconds` to
finish, then cancel them and hand their jobs back to the queue at once.

Neighbours: `claims` holds the SQL; the work itself is a `bot.ports.JobWork` (the pipeline
runner, plugged in by `bot.cli.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import asyncpg

from bot import logs, metrics
from bot.executor import claims
from bot.pg import asyncpg_dsn
from bot.ports import ClaimedJob, JobOutcome, JobWork, OutcomeKind
from bot.store import Store
from bot.store.repo import JOBS_CHANNEL

log = logging.getLogger(__name__)


class Executor:
    """Runs jobs from the `jobs` table with at most `workers` at a time in this process."""

    def __init__(
        self,
        *,
        store: Store,
        work: JobWork,
        owner: str,
        workers: int,
        lease_seconds: float,
        poll_seconds: float,
        grace_seconds: float,
    ) -> None:
        self._store = store
        self._work = work
        self._owner = owner
        self._workers = workers
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._grace = grace_seconds
        self._running: dict[int, asyncio.Task[None]] = {}
        self._lease_lost: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def running_jobs(self) -> frozenset[int]:
        """Ids of the jobs this executor is working on now."""
        return frozenset(self._running)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening and claiming in the background; returns at once."""
        if self._workers <= 0 or self._dispatcher is not None:
            return
        self._stopping = False
        self._listener = asyncio.create_task(self._listen(), name="ephem-executor-listen")
        self._dispatcher = asyncio.create_task(self._dispatch(), name="ephem-executor-dispatch")

    async def stop(self) -> None:
        """Stop claiming; let running jobs finish for up to `grace_seconds`; then cancel them and
        release their jobs back to `queued` so another process takes them at once."""
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            # It is either waiting or in one short claim; a claim cut short by the cancel below
            # only leaves a lease that expires. Bounded well inside a lease, so a database that
            # answers slowly cannot hold shutdown for a whole lease before the grace even starts.
            _, late = await asyncio.wait([self._dispatcher],
                                         timeout=min(self._lease / 3, 5.0))
            for task in late:
                task.cancel()
            await asyncio.wait([self._dispatcher])
            self._dispatcher = None
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])
            self._listener = None
        tasks = list(self._running.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._grace)
        for task in pending:
            task.cancel()
        if pending:
            log.info("cancelled %d job(s) still running after %.0fs of grace; releasing them",
                     len(pending), self._grace)
            await asyncio.wait(pending)

    async def run_until_idle(self) -> None:
        """Claim and run jobs until none is claimable and none is running; for tests and one-shot
        use (no LISTEN, no polling). Jobs due later (a RETRY's delay) are left queued."""
        while True:
            await self._fill()
            if not self._running:
                return
            await asyncio.wait(list(self._running.values()), return_when=asyncio.FIRST_COMPLETED)

    # ------------------------------------------------------------------ claiming

    async def _dispatch(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._fill()
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _fill(self) -> None:
        """Claim jobs while a worker slot is free and something is claimable: every free slot
        in one statement, again while the batch came back full."""
        loop = asyncio.get_running_loop()
        while len(self._running) < self._workers and not self._stopping:
            free = self._workers - len(self._running)
            asked = loop.time()  # the leases run from no earlier than this
            jobs = await self._claim(free)
            for job in jobs:
                self._running[job.id] = asyncio.create_task(self._run(job, held_since=asked),
                                                            name=f"ephem-job-{job.id}")
            if len(jobs) < free:
                return

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        try:
            return await claims.claim_many(self._store, owner=self._owner,
                                           lease_seconds=self._lease, limit=limit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("claiming a job failed (%s); trying again in %.0fs",
                        type(exc).__name__, self._poll)
            return []

    async def _listen(self) -> None:
        """Keep a LISTEN connection open; notifications wake the dispatcher. Polling covers the
        time the connection is down."""
        while True:
            try:
                await self._listen_once()
                log.warning("the LISTEN connection closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN %s failed (%s); polling every %.1fs meanwhile",
                            JOBS_CHANNEL, type(exc).__name__, self._poll)
            await asyncio.sleep(self._poll)

    async def _listen_once(self) -> None:
        connecting = asyncio.ensure_future(asyncpg.connect(asyncpg_dsn(self._store.url),
                                                           timeout=10))
        try:
            conn: Any = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # Cancelling asyncpg mid-handshake leaves a future failing with "unexpected
            # connection_lost()" that nobody reads; let the handshake end, then close.
            await asyncio.wait([connecting], timeout=5)
            if connecting.done() and not connecting.cancelled() \
                    and connecting.exception() is None:
                connecting.result().terminate()
            connecting.cancel()
            raise
        try:
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _conn: closed.set())
            await conn.add_listener(JOBS_CHANNEL, self._notified)
            self._wake.set()  # jobs may have been queued while nobody listened
            await closed.wait()
        finally:
            if not conn.is_closed():
                conn.terminate()  # not close(): no await on the way out of a cancellation

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ running one job

    async def _run(self, job: ClaimedJob, *, held_since: float) -> None:
        me = asyncio.current_task()
        assert me is not None
        logs.set_context(job_id=job.id, env_id=job.env_id)  # this task's lines, and its children's
        log.info("job %s: %s of environment %s claimed (attempt %d)", job.id, job.kind,
                 job.env_id, job.attempts, extra={"event": "job", "kind": str(job.kind),
                                                  "status": "running", "attempt": job.attempts,
                                                  "owner": self._owner})
        keeper = asyncio.create_task(self._keep_lease(job, me, held_since=held_since),
                                     name=f"ephem-lease-{job.id}")
        metrics.JOBS_RUNNING.inc()
        try:
            outcome = await self._guarded(job)
            await self._record(job, outcome)
        except asyncio.CancelledError:
            if job.id in self._lease_lost:
                log.warning("job %s: stopped, its lease was lost to another executor", job.id)
            else:
                await self._release(job)
            raise
        finally:
            keeper.cancel()
            await asyncio.wait([keeper])
            self._running.pop(job.id, None)
            self._lease_lost.discard(job.id)
            metrics.JOBS_RUNNING.dec()
            self._wake.set()

    async def _guarded(self, job: ClaimedJob) -> JobOutcome:
        """The work's outcome; an exception escaping it becomes a failure with an error id."""
        try:
            return await self._work(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            error_id = secrets.token_hex(4)
            log.exception("job %s (%s of environment %s) raised unexpectedly [error id %s]",
                          job.id, job.kind, job.env_id, error_id)
            return JobOutcome(OutcomeKind.FAILED, error=f"unexpected error (id {error_id})")

    async def _record(self, job: ClaimedJob, outcome: JobOutcome) -> None:
        try:
            recorded = await claims.finish(self._store, job, owner=self._owner, outcome=outcome)
        except Exception as exc:
            log.warning("job %s: recording its outcome failed (%s); its lease will expire and "
                        "another executor resumes it", job.id, type(exc).__name__)
            return
        if recorded:
            metrics.JOBS.labels(kind=str(job.kind), outcome=str(outcome.kind)).inc()
            log.info("job %s: %s of environment %s %s%s", job.id, job.kind, job.env_id,
                     outcome.kind, f": {outcome.error}" if outcome.error else "",
                     extra={"event": "job", "kind": str(job.kind), "status": str(outcome.kind),
                            "attempt": job.attempts})
        else:
            log.warning("job %s: lease lost before its outcome (%s) was recorded",
                        job.id, outcome.kind)

    async def _release(self, job: ClaimedJob) -> None:
        try:
            released = await claims.release(self._store, job, owner=self._owner)
        except Exception as exc:
            log.warning("job %s: releasing it failed (%s); its lease will expire instead",
                        job.id, type(exc).__name__)
            return
        if released:
            log.info("job %s: released back to the queue", job.id,
                     extra={"event": "job", "kind": str(job.kind), "status": "released",
                            "attempt": job.attempts})
            metrics.JOBS.labels(kind=str(job.kind), outcome="released").inc()

    async def _keep_lease(self, job: ClaimedJob, work: asyncio.Task[None], *,
                          held_since: float) -> None:
        """Renew every third of the lease; cancel the work once the lease is lost, or when it
        has not been renewed for `lease - margin` seconds — while it still holds, so the
        work (and the tool it runs) has stopped before another executor may claim the job."""
        loop = asyncio.get_running_loop()
        every, margin = self._lease / 3, self._lease / 3
        renewed = held_since  # the lease holds until at least renewed + lease
        next_try = renewed + every
        while True:
            stop_at = renewed + self._lease - margin
            await asyncio.sleep(max(0.0, min(next_try, stop_at) - loop.time()))
            if loop.time() >= stop_at:
                log.warning("job %s: lease not renewed for %.1fs; stopping its work before "
                            "the lease expires", job.id, loop.time() - renewed)
                break
            sent = loop.time()
            held = await self._renew(job, within=min(every, stop_at - sent))
            if held:
                renewed, next_try = sent, sent + every
                continue
            if held is False:
                log.warning("job %s: lease lost; cancelling its work", job.id)
                break
            next_try = loop.time() + min(every, margin) / 4  # failed or timed out: again soon
        self._lease_lost.add(job.id)
        work.cancel()

    async def _renew(self, job: ClaimedJob, *, within: float) -> bool | None:
        """Renew the lease; True/False as `claims.renew` says, None if it failed or did not
        answer within `within` seconds (it is then left to finish or fail in the background,
        bounded by the store's own timeouts)."""
        attempt = asyncio.ensure_future(
            claims.renew(self._store, job, owner=self._owner, lease_seconds=self._lease))
        try:
            done, _ = await asyncio.wait({attempt}, timeout=max(within, 0.0))
        except asyncio.CancelledError:  # the job ended meanwhile: the renewal is moot
            attempt.add_done_callback(_retrieve)
            attempt.cancel()
            raise
        if not done:
            attempt.add_done_callback(_retrieve)
            attempt.cancel()
            log.warning("job %s: renewing its lease took more than %.1fs", job.id, within)
            return None
        if attempt.exception() is not None:
            log.warning("job %s: renewing its lease failed (%s)", job.id,
                        type(attempt.exception()).__name__)
            return None
        return attempt.result()


def _retrieve(task: asyncio.Future[bool]) -> None:
    """Done callback: fetch an abandoned renewal's outcome so asyncio does not warn."""
    if not task.cancelled():
        task.exception()
