"""Do three replicas beat one? Throughput of create jobs over 1 and then 3 worker processes.

    python bench/replicas.py [--jobs 300] [--sleep 1.5] [--workers 8]
    # exit 1 if 3 processes reach less than 2x the throughput of 1, or any job ran twice

Each round gets a fresh state database (migrated), starts N worker processes — each what
`ephem serve` runs for jobs: a `Store`, the pipeline `Runner` and an `Executor` with
`--workers` slots, LISTEN/NOTIFY and the default poll and lease — then enqueues `--jobs`
create jobs at once (an environment and a job each, as `/ephem create` writes them, committed
together) and times from that commit until every job has succeeded. The one phase sleeps
`--sleep` seconds and does nothing else, so a round is bound by sleeping, not by the two CPUs:
the ratio measures claiming and handing over, not CPU. A job ran twice if it has more than one
data phase run or more than one attempt (`phase_runs`, `jobs.attempts`).

Printed: jobs/s of each round, the ratio (3 over 1), the ideal (slots x processes / sleep),
and the jobs run twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import Blueprint, Retries
from bot.domain import DataMode, EnvStatus, JobKind, JobStatus, PhaseName
from bot.embedded import embedded_postgres
from bot.pg import asyncpg_dsn, quote_ident, with_database

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
RATIO_GOAL = 2.0


# --------------------------------------------------------------------------- worker process

class Sleep:
    """The data phase: sleeps, nothing else."""

    name = PhaseName.DATA

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def apply(self, ctx: object) -> object:
        from pipelines.base import PhaseResult

        await asyncio.sleep(self.seconds)
        return PhaseResult(outputs={"slept": self.seconds})

    async def destroy(self, ctx: object) -> None:
        return None

    async def describe(self, ctx: object) -> str:
        return f"sleep {self.seconds}s"


async def worker(url: str, *, sleep: float, workers: int) -> None:
    from bot.config import Settings
    from bot.executor import Executor
    from bot.ports import RecordedEvents
    from bot.store import Store
    from pipelines.runner import Runner

    defaults = Settings()
    store = Store(url, pool_size=workers + 2, max_overflow=workers)
    runner = Runner(store=store, phases={PhaseName.DATA: Sleep(sleep)},  # type: ignore[dict-item]
                    blueprint=Blueprint(retries=Retries(attempts=1)), events=RecordedEvents(),
                    secret_key=b"bench")
    executor = Executor(store=store, work=runner, owner=f"bench-{os.getpid()}",
                        workers=workers, lease_seconds=defaults.lease_seconds,
                        poll_seconds=defaults.poll_seconds,
                        grace_seconds=defaults.grace_seconds)
    await store.ping()
    await executor.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await executor.stop()
    await store.close()


# --------------------------------------------------------------------------- coordinator

async def enqueue(url: str, count: int) -> None:
    """`count` environments and their create jobs, in one transaction (one NOTIFY at commit)."""
    from bot.store import Store, repo

    store = Store(url, pool_size=1, max_overflow=0)
    try:
        async with store.transaction() as s:
            for i in range(count):
                env = await repo.create_environment(
                    s, name=f"b-{i}", owner_id="UBENCH", channel_id="CBENCH", reference=None,
                    release_set={}, data_mode=DataMode.NONE, data_snapshot=None, reason=None,
                    expires_at=datetime.now(UTC) + timedelta(days=1))
                await repo.enqueue_job(s, env_id=env.id, kind=JobKind.CREATE,
                                       requested_by="UBENCH")
    finally:
        await store.close()


async def one_round(admin: str, *, processes: int, jobs: int, sleep: float,
                    workers: int) -> tuple[float, int, int]:
    """(seconds from enqueue to the last success, jobs succeeded, jobs run twice)."""
    from bot.store.migrate import upgrade

    name = f"ephem_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(admin))
    await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    await conn.close()
    url = with_database(admin, name)
    children: list[subprocess.Popen[str]] = []
    try:
        await asyncio.to_thread(upgrade, url)
        for _ in range(processes):
            children.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", url, "--sleep", str(sleep),
                 "--workers", str(workers)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for child in children:
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            if line.strip() != "ready":
                raise SystemExit(f"a worker did not start (said {line!r})")
        state = await asyncpg.connect(asyncpg_dsn(url))
        try:
            began = time.perf_counter()
            await enqueue(url, jobs)
            started = time.perf_counter()  # the jobs are claimable from here (the commit)
            print(f"  {jobs} creates enqueued in {started - began:.2f}s", flush=True)
            while True:
                done = await state.fetchval(
                    "SELECT count(*) FROM jobs WHERE status = $1", str(JobStatus.SUCCEEDED))
                if done >= jobs:
                    break
                failed = await state.fetchval(
                    "SELECT count(*) FROM jobs WHERE status = $1", str(JobStatus.FAILED))
                if failed:
                    raise SystemExit(f"{failed} job(s) failed")
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            twice = await state.fetchval(
                "SELECT count(*) FROM (SELECT job_id FROM phase_runs WHERE phase = $1 "
                "GROUP BY job_id HAVING count(*) > 1) AS runs", str(PhaseName.DATA))
            twice += await state.fetchval("SELECT count(*) FROM jobs WHERE attempts > 1")
            held = await state.fetchval(
                "SELECT avg(extract(epoch FROM finished_at - started_at)) FROM jobs")
            print(f"  mean time a job held its slot: {held:.3f}s (the phase sleeps {sleep}s)",
                  flush=True)
            ready = await state.fetchval("SELECT count(*) FROM environments WHERE status = $1",
                                         str(EnvStatus.READY))
        finally:
            await state.close()
        return elapsed, int(ready), int(twice)
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        conn = await asyncpg.connect(asyncpg_dsn(admin))
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await conn.close()


async def _answers(url: str) -> bool:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(url)), 3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def bench(admin: str, *, jobs: int, sleep: float, workers: int) -> int:
    results = {}
    for processes in (1, 3):
        elapsed, ready, twice = await one_round(admin, processes=processes, jobs=jobs,
                                                sleep=sleep, workers=workers)
        rate = jobs / elapsed
        ideal = processes * workers / sleep
        results[processes] = (rate, twice)
        print(f"{processes} process(es) x {workers} slots: {jobs} jobs in {elapsed:5.1f}s = "
              f"{rate:5.1f} jobs/s (ideal {ideal:.1f}, {rate / ideal:4.0%}); "
              f"{ready} ready; run twice: {twice}", flush=True)
    ratio = results[3][0] / results[1][0]
    twice = results[1][1] + results[3][1]
    print(f"ratio 3/1: {ratio:.2f}x (goal >= {RATIO_GOAL}x); jobs run twice: {twice} (goal 0)")
    return 0 if ratio >= RATIO_GOAL and twice == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--sleep", type=float, default=1.5, help="seconds the phase takes")
    p.add_argument("--workers", type=int, default=8, help="job slots per process")
    p.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker, sleep=args.sleep, workers=args.workers))
        return 0
    if asyncio.run(_answers(LOCAL_PG)):
        return asyncio.run(bench(LOCAL_PG, jobs=args.jobs, sleep=args.sleep,
                                 workers=args.workers))
    with embedded_postgres() as admin:
        return asyncio.run(bench(admin, jobs=args.jobs, sleep=args.sleep, workers=args.workers))


if __name__ == "__main__":
    sys.exit(main())
