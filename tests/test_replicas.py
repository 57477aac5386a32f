"""Three `ephem serve` processes on one state database, as `replicaCount: 3` runs them.

The data phase's migration command is a recorder: for each environment's database (PGDATABASE)
it appends `start`/`end` lines with its pid and the pid of the bot that started it, and holds an
exclusive `flock` on that environment's lock file while it lives, so a second run of one
environment that starts while the first is alive records `OVERLAP`, whatever the timing. An
environment's first run takes `FIRST` seconds, later runs are quick.

- Concurrent creates sent to all three bots: every job runs once — one run, one end, per
  environment — and the work is spread over more than one bot.
- One bot SIGKILLed while its phases run: its environments are finished by the others, never two
  runs of one environment at once, and every other environment still runs once.
- A rolling upgrade: a new bot joins, an old one gets SIGTERM while its phases run; it gives
  them back after its grace period and exits 0, and the others finish them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from bot.domain import JobStatus, PhaseName, PhaseStatus
from bot.store import Store
from bot.store.models import Job, PhaseRun
from tests.slackapi import SlackApi, slack_api_fixture  # noqa: F401
from tests.test_serve import _free_port
from tests.test_takeover import SIGNING, Bot

RECORDER = """
import fcntl, os, sys, time
folder, first_seconds = sys.argv[1], float(sys.argv[2])
env = os.environ["PGDATABASE"]
path = os.path.join(folder, env)
first = not os.path.exists(path)
log = open(path, "a", buffering=1)
held = open(path + ".lock", "w")
try:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    overlap = "OVERLAP"[:0]
except BlockingIOError:
    overlap = "OVERLAP"
def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[1])
zygote = parent(os.getppid())  # the tool's supervisor was forked by the bot's zygote
log.write(f"start {os.getpid()} {parent(zygote)} {overlap}\\n")
time.sleep(first_seconds if first else 0.2)
log.write(f"end {os.getpid()}\\n")
"""


@dataclass(frozen=True)
class Run:
    pid: int
    bot: int
    overlap: bool
    ended: bool


def _runs(folder: Path, env: str) -> list[Run]:
    path = folder / env
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    ends = {int(line.split()[1]) for line in lines if line.startswith("end ")}
    runs = []
    for line in lines:
        kind, *rest = line.split()
        if kind == "start":
            runs.append(Run(pid=int(rest[0]), bot=int(rest[1]), overlap="OVERLAP" in rest,
                            ended=int(rest[0]) in ends))
    return runs


MakeBot = Callable[[], Awaitable[Bot]]


@dataclass
class Fleet:
    folder: Path
    prefix: str
    make: MakeBot

    def database(self, name: str) -> str:
        return f"{self.prefix}{name.replace('-', '_')}"

    def runs(self, name: str) -> list[Run]:
        return _runs(self.folder, self.database(name))

    async def until_running(self, names: list[str], count: int, timeout: float = 60
                            ) -> list[Run]:
        """Wait until `count` of the environments have a run that started and has not ended."""
        async with asyncio.timeout(timeout):
            while True:
                alive = [r for n in names for r in self.runs(n) if not r.ended]
                if len(alive) >= count:
                    return alive
                await asyncio.sleep(0.05)


def _fleet_fixture(first_seconds: float, grace: str) -> Callable[..., AsyncIterator[Fleet]]:
    async def fixture(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
                      tmp_path: Path, store: object) -> AsyncIterator[Fleet]:
        del store  # the bot's tables start empty
        folder = tmp_path / "runs"
        folder.mkdir()
        prefix = f"{db_prefix}r_"
        blueprint = tmp_path / "ephem.yaml"
        blueprint.write_text(yaml.safe_dump({"phases": {"data": {
            "server": pg_admin_url, "database_prefix": prefix,
            "migrations": {"kind": "command", "command": [
                sys.executable, "-c", RECORDER, str(folder), str(first_seconds)]},
        }}, "retries": {"attempts": 1}}))
        started: list[Bot] = []

        async def make() -> Bot:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
            env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint),
                    "SLACK_BOT_TOKEN": "xoxb-replicas", "SLACK_SIGNING_SECRET": SIGNING,
                    "SLACK_API_URL": slack_api.url, "EPHEM_HTTP_PORT": str(_free_port()),
                    "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_POLL_SECONDS": "0.5",
                    "EPHEM_LEASE_SECONDS": "4", "EPHEM_SECRET_KEY": "replicas-key",
                    "EPHEM_GRACE_SECONDS": grace, "EPHEM_WORKERS": "3",
                    "EPHEM_DB_POOL_SIZE": "3"}
            bot = Bot(env)
            started.append(bot)
            return await bot.start()

        try:
            yield Fleet(folder, prefix, make)
        finally:
            for bot in started:
                if bot.proc is not None and bot.proc.returncode is None:
                    await bot.kill()
                await bot.stop()
            for path in folder.iterdir():  # nothing a test started may outlive it
                if path.suffix != ".lock":
                    for run in _runs(folder, path.name):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(run.pid, signal.SIGKILL)
    return fixture


quick_fleet = pytest.fixture(_fleet_fixture(first_seconds=1.0, grace="2"))
slow_fleet = pytest.fixture(_fleet_fixture(first_seconds=60.0, grace="1"))


async def _create(bots: list[Bot], names: list[str]) -> None:
    """One signed `/ephem create` per name, spread over the bots, all at once."""
    answers = await asyncio.gather(*(
        bots[i % len(bots)].sender().command(f"create {name} --data none", user_id="UANA",
                                             channel_id=f"CREP{i}")
        for i, name in enumerate(names)))
    assert [status for status, _ in answers] == [200] * len(names)


async def _all_done(store: Store, count: int, timeout: float = 120) -> None:
    """Wait until `count` jobs have ended (the cards follow, paced per channel by the outbox)."""
    async def ended() -> list[JobStatus]:
        async with store.transaction() as s:
            return list((await s.execute(select(Job.status))).scalars().all())
    try:
        async with asyncio.timeout(timeout):
            while sum(st in (JobStatus.SUCCEEDED, JobStatus.FAILED)  # noqa: ASYNC110
                      for st in await ended()) < count:
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"jobs not done: {await ended()}") from None


async def _succeeded_once(store: Store, count: int) -> None:
    """Every create job succeeded, and the data phase succeeded once per job."""
    async with store.transaction() as s:
        statuses = (await s.execute(select(Job.status))).scalars().all()
        per_job = (await s.execute(
            select(PhaseRun.job_id, func.count())
            .where(PhaseRun.phase == PhaseName.DATA, PhaseRun.status == PhaseStatus.SUCCEEDED)
            .group_by(PhaseRun.job_id))).all()
    assert sorted(statuses) == [JobStatus.SUCCEEDED] * count
    assert len(per_job) == count and all(n == 1 for _, n in per_job)


async def test_three_replicas_run_every_job_exactly_once(
        quick_fleet: Fleet, slack_api: SlackApi, store: Store) -> None:
    bots = [await quick_fleet.make() for _ in range(3)]
    names = [f"rp-{i}" for i in range(12)]
    await _create(bots, names)
    await _all_done(store, len(names))

    runs = {name: quick_fleet.runs(name) for name in names}
    assert all(len(r) == 1 and r[0].ended and not r[0].overlap for r in runs.values()), runs
    by = {r[0].bot for r in runs.values()}
    assert by <= {b.pid for b in bots} and len(by) >= 2, by
    await _succeeded_once(store, len(names))


async def test_a_replica_killed_mid_phase_loses_nothing(
        slow_fleet: Fleet, slack_api: SlackApi, store: Store) -> None:
    bots = [await slow_fleet.make() for _ in range(3)]
    names = [f"rk-{i}" for i in range(6)]
    await _create(bots, names)
    alive = await slow_fleet.until_running(names, len(names))  # every first run is under way
    victim = next(b for b in bots if b.pid in {r.bot for r in alive})
    await victim.kill()
    # The survivors' own first runs are long: stop them as a rolling restart would, so the
    # test only waits for what the killed replica left behind.
    for bot in bots:
        if bot is not victim:
            bot.signal(signal.SIGTERM)
    for bot in bots:
        if bot is not victim:
            await bot.stop()
    survivors = [await slow_fleet.make() for _ in range(2)]
    await _all_done(store, len(names))

    for name in names:
        runs = slow_fleet.runs(name)
        assert not any(r.overlap for r in runs), (name, runs)
        assert [r.ended for r in runs] == [False, True], (name, runs)  # cut short, then done
        assert runs[1].bot in {b.pid for b in survivors}
    killed = [n for n in names if slow_fleet.runs(n)[0].bot == victim.pid]
    assert killed
    await _succeeded_once(store, len(names))


async def test_a_rolling_upgrade_hands_running_phases_over(
        slow_fleet: Fleet, slack_api: SlackApi, store: Store) -> None:
    old = [await slow_fleet.make() for _ in range(2)]
    names = [f"ru-{i}" for i in range(4)]
    await _create(old, names)
    await slow_fleet.until_running(names, len(names))
    # The upgrade: new replicas join, then each old one gets SIGTERM while its phase runs.
    new = [await slow_fleet.make() for _ in range(2)]
    for bot in old:
        bot.signal(signal.SIGTERM)
        await bot.stop()
        assert bot.proc is not None and bot.proc.returncode == 0, bot.output.decode()[-2000:]
        assert b"releasing them" in bot.output
    await _all_done(store, len(names))

    for name in names:
        runs = slow_fleet.runs(name)
        assert [r.ended for r in runs] == [False, True], (name, runs)
        # Cut short on an old replica, finished by another (a new one, or an old one not yet
        # stopped, which then drained it before it stopped).
        assert runs[0].bot in {b.pid for b in old} and runs[1].bot != runs[0].bot
        assert runs[1].bot in {b.pid for b in old + new}
        assert not any(r.overlap for r in runs)
    await _succeeded_once(store, len(names))
