"""A job taken over by another `ephem serve` never runs its tool twice at once.

Two real bot processes share one state database; the data phase's migration command is a small
recorder that notes its start, end and pids in a file, and holds an exclusive `flock` on a file
while it lives — so a run that starts while another is still alive records `OVERLAP`, exactly,
whatever the timing. The first run would take two minutes, so it only ends early if it is
stopped; later runs are quick.

- SIGKILL of the bot running the phase: its tool (and the tool's child) must die with it, and
  the other bot's run must not overlap it.
- A frozen connection between the bot and its state database (a TCP proxy that stops
  forwarding): the bot cannot renew its lease, so it must stop its tool before the lease runs
  out and the other bot starts its own run.
- A frozen bot (SIGSTOP) can do nothing: its tool's fence keeps the other bot waiting — and
  saying so on the card — until the frozen one resumes and stops its tool.

Leases are short (4 s); waits have generous deadlines that only turn a hang into a failure.
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

from bot.pg import asyncpg_dsn
from bot.store import Store
from tests.slackapi import SlackApi, SlackSender, slack_api_fixture  # noqa: F401
from tests.test_proc import _gone
from tests.test_serve import _free_port, _ready

SIGNING = "takeover-signing-secret"
LEASE = "4"

RECORDER = """
import fcntl, os, subprocess, sys, time
log = open(sys.argv[1], "a", buffering=1)
first = not os.path.exists(sys.argv[1] + ".started")
open(sys.argv[1] + ".started", "a").close()
held = open(sys.argv[1] + ".lock", "w")
try:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    overlap = ""
except BlockingIOError:
    overlap = "OVERLAP"
helper = subprocess.Popen(["sleep", "120"])
def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[1])
zygote = parent(os.getppid())  # the tool's supervisor was forked by the bot's zygote
bot = parent(zygote)
log.write(f"start {os.getpid()} {helper.pid} {bot} {time.time()} {overlap}\\n")
print("migrating", flush=True)
time.sleep(float(sys.argv[2]) if first else 0.3)
helper.kill()
log.write(f"end {os.getpid()} {time.time()}\\n")
"""


@dataclass(frozen=True)
class Start:
    pid: int
    helper: int
    bot: int  # the bot process whose tool supervisor started this run
    overlap: bool


def _starts(log: Path) -> list[Start]:
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, *rest = line.split()
        if kind == "start":
            found.append(Start(pid=int(rest[0]), helper=int(rest[1]), bot=int(rest[2]),
                               overlap="OVERLAP" in rest))
    return found


def _ends(log: Path) -> set[int]:
    return {int(line.split()[1]) for line in log.read_text().splitlines()
            if line.startswith("end ")}


async def _until_starts(log: Path, count: int, timeout: float = 60) -> list[Start]:
    async with asyncio.timeout(timeout):
        while len(found := _starts(log)) < count:  # noqa: ASYNC110 - another process's file
            await asyncio.sleep(0.05)
    return found


class Bot:
    """One `ephem serve` process on a port of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = int(env["EPHEM_HTTP_PORT"])
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    async def start(self) -> Bot:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "serve", env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        await _ready(f"http://127.0.0.1:{self.port}/readyz")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sender(self) -> SlackSender:
        return SlackSender(f"http://127.0.0.1:{self.port}/slack/events", SIGNING)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                await self.kill()
        assert self.proc.stdout is not None
        self.output = await self.proc.stdout.read()


MakeBot = Callable[..., Awaitable["Bot"]]


@pytest.fixture
async def bots(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
               tmp_path: Path, store: object) -> AsyncIterator[tuple[Path, MakeBot]]:
    del store  # the bot's tables start empty
    log = tmp_path / "runs"
    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({"phases": {"data": {
        "server": pg_admin_url, "database_prefix": db_prefix,
        "migrations": {"kind": "command",
                       "command": [sys.executable, "-c", RECORDER, str(log), "120"]},
    }}, "retries": {"attempts": 1}}))
    started: list[Bot] = []

    async def make(database_url: str = bot_db_url) -> Bot:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
        env |= {"EPHEM_DATABASE_URL": database_url, "EPHEM_CONFIG": str(blueprint),
                "SLACK_BOT_TOKEN": "xoxb-takeover", "SLACK_SIGNING_SECRET": SIGNING,
                "SLACK_API_URL": slack_api.url, "EPHEM_HTTP_PORT": str(_free_port()),
                "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_POLL_SECONDS": "0.2",
                "EPHEM_LEASE_SECONDS": LEASE, "EPHEM_SECRET_KEY": "takeover-key",
                "EPHEM_GRACE_SECONDS": "2"}
        bot = Bot(env)
        started.append(bot)
        return await bot.start()

    try:
        yield log, make
    finally:
        for bot in started:
            if bot.proc is not None and bot.proc.returncode is None:
                await bot.kill()
            await bot.stop()
        for start in _starts(log):  # nothing a test started may outlive it
            for pid in (start.pid, start.helper):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def _ready_card(slack_api: SlackApi, name: str) -> None:
    await slack_api.wait_for("chat.update",
                             lambda c: f"{name} · ready" in str(c.params.get("blocks")),
                             timeout=90)


async def test_sigkill_mid_phase_leaves_no_tool_behind_and_never_two_at_once(
        bots: tuple[Path, MakeBot], slack_api: SlackApi) -> None:
    log, make = bots
    first, second = await make(), await make()
    status, _ = await first.sender().command("create tk-1 --data none", user_id="UANA",
                                             channel_id="CTAKE")
    assert status == 200
    [running] = await _until_starts(log, 1)
    victim, survivor = (first, second) if running.bot == first.pid else (second, first)
    assert running.bot == victim.pid

    await victim.kill()
    # The orphan dies: the tool and the helper it started.
    assert await _gone(running.pid) and await _gone(running.helper)

    await _ready_card(slack_api, "tk-1")
    runs = _starts(log)
    assert [r.bot for r in runs] == [victim.pid, survivor.pid]
    assert not any(r.overlap for r in runs)
    assert _ends(log) == {runs[1].pid}  # the killed run never finished; the survivor's did


class FrozenProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding (connections stay open, bytes stop)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.thawed.clear()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)
        for writer in self.writers:  # both sides see the connection end, as a dead proxy's
            writer.transport.abort()

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self.tasks.add(me)
        self.writers.append(writer)
        try:
            await self.thawed.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self.writers.append(up_writer)
        except asyncio.CancelledError:  # closed while frozen: this connection just ends
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                await self.thawed.wait()
                dst.write(data)
                await dst.drain()
        dst.close()


async def test_a_frozen_state_database_stops_the_tool_before_the_next_bot_starts_it(
        bots: tuple[Path, MakeBot], slack_api: SlackApi, bot_db_url: str) -> None:
    log, make = bots
    dsn = asyncpg_dsn(bot_db_url)
    hostport = dsn.split("@", 1)[1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    proxy = FrozenProxy(host, int(port or 5432))
    proxy_port = await proxy.start()
    try:
        through_proxy = bot_db_url.replace(hostport, f"127.0.0.1:{proxy_port}")
        cut_off = await make(through_proxy)
        status, _ = await cut_off.sender().command("create tk-2 --data none", user_id="UANA",
                                                   channel_id="CTAKE")
        assert status == 200
        [running] = await _until_starts(log, 1)
        assert running.bot == cut_off.pid
        proxy.freeze()
        other = await make()

        await _ready_card(slack_api, "tk-2")
        runs = _starts(log)
        assert [r.bot for r in runs] == [cut_off.pid, other.pid]
        assert not any(r.overlap for r in runs)  # the first was dead when the second began
        assert _ends(log) == {runs[1].pid}  # stopped by its own bot, not run to its end
        assert await _gone(running.pid) and await _gone(running.helper)
    finally:
        await proxy.close()


async def test_a_store_query_on_a_frozen_connection_ends_in_an_error(bot_db_url: str) -> None:
    dsn = asyncpg_dsn(bot_db_url)
    hostport = dsn.split("@", 1)[1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    proxy = FrozenProxy(host, int(port or 5432))
    proxy_port = await proxy.start()
    store = Store(bot_db_url.replace(hostport, f"127.0.0.1:{proxy_port}"), pool_size=1,
                  max_overflow=0, connect_timeout=1, query_timeout=1, pool_timeout=1)
    try:
        await store.ping()  # connected while the proxy forwards
        proxy.freeze()
        # A query on the open connection, and a new connection: each ends in an error.
        for attempt in (store.ping(), Store(store.url, connect_timeout=1).ping()):
            task = asyncio.ensure_future(attempt)
            done, _ = await asyncio.wait({task}, timeout=30)  # only turns a hang into a failure
            assert done, "the store waited on a frozen connection"
            assert isinstance(task.exception(), TimeoutError), repr(task.exception())
    finally:
        await proxy.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.close(), 5)


# Load-sensitive (its timings). Run again once before failing.
@pytest.mark.flaky(reruns=1)
async def test_a_frozen_bot_fences_its_successor_which_waits_and_says_so(
        bots: tuple[Path, MakeBot], slack_api: SlackApi) -> None:
    log, make = bots
    frozen = await make()
    status, _ = await frozen.sender().command("create tk-3 --data none", user_id="UANA",
                                              channel_id="CTAKE")
    assert status == 200
    [running] = await _until_starts(log, 1)
    frozen.signal(signal.SIGSTOP)  # it can neither renew its lease nor stop its tool
    try:
        await make()
        # The other bot takes the job over once the lease lapses, and waits for the fence
        # the frozen bot's supervisor still holds, saying so on the card.
        await slack_api.wait_for(
            "chat.update",
            lambda c: "waiting for an earlier run of the migrations of tk-3 to finish"
            in str(c.params.get("blocks")), timeout=60)
        assert len(_starts(log)) == 1
    finally:
        frozen.signal(signal.SIGCONT)  # it sees its lease gone and stops its tool
    await _ready_card(slack_api, "tk-3")
    runs = _starts(log)
    assert len(runs) == 2 and not any(r.overlap for r in runs)
    assert _ends(log) == {runs[1].pid}
    assert await _gone(running.pid) and await _gone(running.helper)
