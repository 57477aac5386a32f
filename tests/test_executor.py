"""The executor against a real PostgreSQL: claiming, concurrency, per-environment serialization,
several executors on one database, draining on stop, leases that lapse, and a process killed
mid-phase that another resumes.

Executors here are separate instances with their own connection pools, as separate processes
would be; the crash test uses a real separate process. Waits have generous deadlines that only
turn a hang into a failure; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import select, text, update

from bot.domain import JobStatus, PhaseName
from bot.executor import Executor, claims
from bot.ports import ClaimedJob, JobOutcome, JobWork, OutcomeKind, RecordedEvents
from bot.store import Store
from bot.store.models import Job, PhaseRun
from pipelines.runner import Runner
from tests.phases import ScriptedPhase, blueprint, enqueue, make_env

DEADLINE = 15.0
OK = JobOutcome(OutcomeKind.SUCCEEDED)


def _executor(store: Store, work: JobWork, *, owner: str = "test", workers: int = 4,
              lease: float = 5.0, grace: float = 5.0) -> Executor:
    return Executor(store=store, work=work, owner=owner, workers=workers,
                    lease_seconds=lease, poll_seconds=0.05, grace_seconds=grace)


@asynccontextmanager
async def _running(executor: Executor) -> AsyncIterator[Executor]:
    await executor.start()
    try:
        yield executor
    finally:
        await executor.stop()


@asynccontextmanager
async def _other_store(url: str) -> AsyncIterator[Store]:
    """Another connection pool on the same database: what a second process would have."""
    other = Store(url, pool_size=5, max_overflow=5)
    try:
        yield other
    finally:
        await other.close()


async def _jobs(store: Store, ids: list[int]) -> dict[int, Job]:
    async with store.transaction() as s:
        rows = (await s.execute(select(Job).where(Job.id.in_(ids)))).scalars().all()
    return {j.id: j for j in rows}


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll database state (there is no event to wait on) until `check` holds."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not await check():  # noqa: ASYNC110 - polling another process's writes
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"gave up waiting: {what}") from None


async def _until_done(store: Store, ids: list[int]) -> None:
    async def done() -> bool:
        jobs = await _jobs(store, ids)
        return all(j.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) for j in jobs.values())
    await _until(done, f"jobs {ids} finished")


async def _envs_with_jobs(store: Store, count: int, *, per_env: int = 1) -> list[int]:
    ids = []
    for i in range(count):
        env_id = await make_env(store, f"env-{i}")
        for _ in range(per_env):
            ids.append(await enqueue(store, env_id))
    return ids


# --------------------------------------------------------------------------- claiming


async def test_jobs_of_different_environments_run_concurrently_up_to_workers(
    store: Store,
) -> None:
    workers = 3
    ids = await _envs_with_jobs(store, workers + 2)
    active, most = 0, 0
    full = asyncio.Event()  # opens once `workers` jobs run at the same time

    async def work(job: ClaimedJob) -> JobOutcome:
        nonlocal active, most
        active += 1
        most = max(most, active)
        if active == workers:
            full.set()
        try:
            await asyncio.wait_for(full.wait(), DEADLINE)  # serial execution would hang here
            await asyncio.sleep(0.01)
        finally:
            active -= 1
        return OK

    async with _running(_executor(store, work, workers=workers)):
        await _until_done(store, ids)

    assert most == workers
    assert all(j.status is JobStatus.SUCCEEDED for j in (await _jobs(store, ids)).values())


async def test_jobs_of_one_environment_never_overlap_even_across_executors(
    store: Store, bot_db_url: str
) -> None:
    ids = await _envs_with_jobs(store, 3, per_env=4)
    env_of = {j.id: j.env_id for j in (await _jobs(store, ids)).values()}
    busy: set[int] = set()
    overlaps: list[int] = []
    order: dict[int, list[int]] = {}

    async def work(job: ClaimedJob) -> JobOutcome:
        if job.env_id in busy:
            overlaps.append(job.id)
        busy.add(job.env_id)
        order.setdefault(job.env_id, []).append(job.id)
        await asyncio.sleep(0.02)
        busy.discard(job.env_id)
        return OK

    async with _other_store(bot_db_url) as other, \
            _running(_executor(store, work, owner="a")), \
            _running(_executor(other, work, owner="b")):
        await _until_done(store, ids)

    assert overlaps == []
    assert order == {env: sorted(j for j in ids if env_of[j] == env) for env in order}  # FIFO
    assert sorted(j for js in order.values() for j in js) == sorted(ids)


async def test_two_executors_never_run_a_job_twice(store: Store, bot_db_url: str) -> None:
    ids = await _envs_with_jobs(store, 20, per_env=2)
    runs: Counter[int] = Counter()
    by: dict[str, int] = {"a": 0, "b": 0}

    def work_for(owner: str) -> JobWork:
        async def work(job: ClaimedJob) -> JobOutcome:
            runs[job.id] += 1
            by[owner] += 1
            await asyncio.sleep(0.005)
            return OK
        return work

    async with _other_store(bot_db_url) as other, \
            _running(_executor(store, work_for("a"), owner="a", workers=3)), \
            _running(_executor(other, work_for("b"), owner="b", workers=3)):
        await _until_done(store, ids)

    assert runs == Counter(dict.fromkeys(ids, 1))
    assert by["a"] > 0 and by["b"] > 0  # both really competed for the same jobs
    assert {j.attempts for j in (await _jobs(store, ids)).values()} == {1}


async def test_a_job_waits_behind_an_older_job_of_its_environment(store: Store) -> None:
    env_id = await make_env(store, "line")
    first, second = await enqueue(store, env_id), await enqueue(store, env_id)
    async with store.transaction() as s:  # the older job is due only later (a RETRY's delay)
        await s.execute(update(Job).where(Job.id == first)
                        .values(run_after=text("now() + interval '1 hour'")))

    assert await claims.claim(store, owner="t", lease_seconds=5) is None
    ran: list[int] = []

    async def work(job: ClaimedJob) -> JobOutcome:
        ran.append(job.id)
        return OK

    await _executor(store, work).run_until_idle()
    assert ran == []
    assert (await _jobs(store, [second]))[second].status is JobStatus.QUEUED


async def test_outcomes_are_recorded_on_the_job(store: Store) -> None:
    ids = await _envs_with_jobs(store, 4)
    jobs = await _jobs(store, ids)
    outcome_for = {
        jobs[ids[0]].env_id: OK,
        jobs[ids[1]].env_id: JobOutcome(OutcomeKind.FAILED, error="data apply failed: nope"),
        jobs[ids[2]].env_id: JobOutcome(OutcomeKind.RETRY, error="busy", delay=3600),
    }

    async def work(job: ClaimedJob) -> JobOutcome:
        if job.env_id not in outcome_for:
            raise RuntimeError("a bug")
        return outcome_for[job.env_id]

    await _executor(store, work).run_until_idle()

    after = await _jobs(store, ids)
    ok, failed, retry, crashed = (after[i] for i in ids)
    assert (ok.status, ok.error, ok.lease_owner) == (JobStatus.SUCCEEDED, None, None)
    assert ok.finished_at is not None and ok.started_at is not None
    assert (failed.status, failed.error) == (JobStatus.FAILED, "data apply failed: nope")
    assert (retry.status, retry.error, retry.attempts) == (JobStatus.QUEUED, "busy", 1)
    assert retry.run_after > ok.finished_at  # due again only after the delay
    assert crashed.status is JobStatus.FAILED
    assert crashed.error is not None and crashed.error.startswith("unexpected error (id ")


# --------------------------------------------------------------------------- stopping, leases


async def test_stop_lets_running_jobs_finish_within_grace_and_claims_nothing_more(
    store: Store,
) -> None:
    env_a, env_b = await make_env(store, "a"), await make_env(store, "b")
    first = await enqueue(store, env_a)
    started, finish = asyncio.Event(), asyncio.Event()

    async def work(job: ClaimedJob) -> JobOutcome:
        started.set()
        await finish.wait()
        return OK

    executor = _executor(store, work, grace=DEADLINE)
    await executor.start()
    await asyncio.wait_for(started.wait(), DEADLINE)
    stopping = asyncio.create_task(executor.stop())
    await asyncio.sleep(0.1)
    later = await enqueue(store, env_b)  # queued while draining: left for another process
    await asyncio.sleep(0.2)
    finish.set()
    await stopping

    jobs = await _jobs(store, [first, later])
    assert jobs[first].status is JobStatus.SUCCEEDED
    assert jobs[later].status is JobStatus.QUEUED and jobs[later].attempts == 0


async def test_stop_releases_unfinished_jobs_back_to_the_queue(
    store: Store, bot_db_url: str
) -> None:
    env_id = await make_env(store, "drain")
    job_id = await enqueue(store, env_id)
    started = asyncio.Event()
    cancelled: list[int] = []

    async def stuck(job: ClaimedJob) -> JobOutcome:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(job.id)
            raise
        return OK

    executor = _executor(store, stuck, grace=0.1)
    await executor.start()
    await asyncio.wait_for(started.wait(), DEADLINE)
    await executor.stop()

    job = (await _jobs(store, [job_id]))[job_id]
    assert cancelled == [job_id]
    assert (job.status, job.lease_owner, job.lease_expires_at) == (JobStatus.QUEUED, None, None)
    async with store.transaction() as s:
        assert await s.scalar(text("SELECT run_after <= now() FROM jobs WHERE id = :id"),
                              {"id": job_id})
    # Another process takes it at once, without waiting for any lease.
    ran: list[int] = []

    async def work(job: ClaimedJob) -> JobOutcome:
        ran.append(job.attempts)
        return OK

    async with _other_store(bot_db_url) as other:
        await _executor(other, work, owner="next").run_until_idle()
    assert ran == [2]


async def test_a_lapsed_lease_is_reclaimed_by_another_executor(store: Store) -> None:
    env_id = await make_env(store, "lapse")
    job_id = await enqueue(store, env_id)
    # A process claims the job and dies: nobody renews its short lease.
    dead = await claims.claim(store, owner="dead-process", lease_seconds=0.3)
    assert dead is not None and dead.id == job_id
    ran: list[ClaimedJob] = []

    async def work(job: ClaimedJob) -> JobOutcome:
        ran.append(job)
        return OK

    async with _running(_executor(store, work, owner="survivor")):
        await _until_done(store, [job_id])

    assert [(j.id, j.attempts) for j in ran] == [(job_id, 2)]
    # The dead process's fenced writes no longer count.
    assert not await claims.finish(store, dead, owner="dead-process", outcome=OK)
    assert not await claims.renew(store, dead, owner="dead-process", lease_seconds=5)


async def test_losing_the_lease_cancels_the_work(store: Store) -> None:
    env_id = await make_env(store, "stolen")
    job_id = await enqueue(store, env_id)
    started = asyncio.Event()
    cancelled: list[int] = []

    async def stuck(job: ClaimedJob) -> JobOutcome:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(job.id)
            raise
        return OK

    executor = _executor(store, stuck, owner="slow", lease=0.3)
    async with _running(executor):
        await asyncio.wait_for(started.wait(), DEADLINE)
        async with store.transaction() as s:  # another executor took the job over
            await s.execute(update(Job).where(Job.id == job_id).values(lease_owner="thief"))

        async def gone() -> bool:
            return not executor.running_jobs
        await _until(gone, "the work was cancelled")

    job = (await _jobs(store, [job_id]))[job_id]
    assert cancelled == [job_id]
    assert (job.status, job.lease_owner) == (JobStatus.RUNNING, "thief")  # not released


# --------------------------------------------------------------------------- a crashed process


async def test_a_killed_process_is_resumed_by_another_executor(
    store: Store, bot_db_url: str, tmp_path: Path
) -> None:
    env_id = await make_env(store, "crash")
    job_id = await enqueue(store, env_id)
    marker = tmp_path / "data-started"
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("executor_child.py")), bot_db_url,
        str(marker), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async def started() -> bool:
            if child.returncode is not None:
                assert child.stderr is not None
                raise AssertionError((await child.stderr.read()).decode())
            return marker.exists()
        await _until(started, "the child's data phase started")
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    calls: list[str] = []
    runner = Runner(store=store, phases={n: ScriptedPhase(n, calls) for n in PhaseName},
                    blueprint=blueprint(), events=RecordedEvents(), secret_key=b"k")
    async with _running(_executor(store, runner, owner="survivor", lease=1.0)):
        await _until_done(store, [job_id])

    job = (await _jobs(store, [job_id]))[job_id]
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    assert calls == ["data.apply", "code.apply"]  # infra succeeded in the child: not re-run
    async with store.transaction() as s:
        runs = (await s.execute(select(PhaseRun.phase, PhaseRun.status, PhaseRun.job_id)
                                .where(PhaseRun.env_id == env_id).order_by(PhaseRun.id))).all()
    assert [(str(p), str(st)) for p, st, _ in runs] == [
        ("infra", "succeeded"), ("data", "abandoned"), ("data", "succeeded"),
        ("code", "succeeded")]



async def test_a_batch_claim_takes_the_oldest_of_each_environment_once(store: Store) -> None:
    envs = [await make_env(store, f"batch-{i}") for i in range(3)]
    first = [await enqueue(store, env) for env in envs]
    second = await enqueue(store, envs[0])  # waits behind the first job of its environment
    taken = await claims.claim_many(store, owner="a", lease_seconds=30, limit=10)
    assert [job.id for job in taken] == first
    assert await claims.claim_many(store, owner="b", lease_seconds=30, limit=10) == []
    assert await claims.finish(store, taken[0], owner="a",
                               outcome=JobOutcome(OutcomeKind.SUCCEEDED))
    # Its line moved on: now the second job is claimable, once, by whichever asks first.
    [(a_batch, b_batch)] = [await asyncio.gather(
        claims.claim_many(store, owner="a", lease_seconds=30, limit=2),
        claims.claim_many(store, owner="b", lease_seconds=30, limit=2))]
    assert sorted(job.id for job in a_batch + b_batch) == [second]
