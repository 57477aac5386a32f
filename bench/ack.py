"""How fast Ephem acknowledges `/ephem create`, beside the floor any bolt app costs.

    python bench/ack.py            # all loads, prints a table; exit 1 if a goal was missed

Loads of signed `/ephem create` requests, each sent to the running bot (`ephem serve` in a
subprocess, HTTP mode, a local Slack Web API stand-in, a fresh PostgreSQL database) and, in the
same run, to a bare bolt app on aiohttp whose listener only acks (the floor):

  burst   200 requests at once
  steady  100 requests a second for 10 s (open loop: sent on schedule, whatever the answers)
  busy    200 requests at once while four jobs run their phases in the same bot process

For each: p50 / p99 / max time to the HTTP 200 and the bot/floor ratio. For the first two the
bot runs with EPHEM_WORKERS=0 so the jobs stay queued and can be counted: every request the bot
acked must have become exactly one job (and one environment). For `busy`, a second bot (its own
database, EPHEM_WORKERS=4) first starts four creates in another channel whose data phase runs a
real database build and a migration command that sleeps; the burst lands while they run (its
own creates are `--data none`, and in a channel of their own, as two teams would be). Goals:
the busy burst's ack p99 under 3x the floor's, and each of the four cards showing `ready` in the
Slack stand-in within 5 s of its environment's last phase finishing (the card's arrival at the
stand-in against `finished_at` in the store).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import example_blueprint_path
from bot.embedded import embedded_postgres
from bot.pg import asyncpg_dsn, quote_ident, with_database
from tests.slackapi import signature

SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
JOBS = 4
JOB_SLEEP = 3  # seconds the four jobs' migration command takes
ACK_GOAL = 3.0  # busy burst p99 / floor p99
CARD_GOAL = 5.0  # seconds from the last phase to the final card


# --------------------------------------------------------------------------- helper processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def role_stub(port: int) -> None:
    """The Slack Web API stand-in, in its own process so it does not share the client's CPU."""
    from tests.slackapi import SlackApi

    async def main() -> None:
        api = SlackApi()
        await api.start()
        print(api.port, flush=True)
        await asyncio.Event().wait()

    del port
    asyncio.run(main())


def role_floor(port: int, api_url: str) -> None:
    """A bare bolt app on aiohttp whose /ephem listener only acks: the floor."""
    from slack_bolt.app.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    app = AsyncApp(signing_secret=SECRET, client=AsyncWebClient(token=TOKEN, base_url=api_url))

    @app.command("/ephem")
    async def ack_only(ack: Callable[[], object]) -> None:
        await ack()  # type: ignore[misc]

    app.start(port=port, path="/slack/events", host="127.0.0.1")  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- measurement


@dataclass
class Result:
    latencies: list[float]
    statuses: dict[int, int]

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


CREATE = "create --match staging --set api=2.8.0-rc1"


def command_body(i: int, text: str = CREATE, channel: str = "CBENCH") -> str:
    return urlencode({
        "token": "legacy", "team_id": "T0001", "team_domain": "bench", "channel_id": channel,
        "channel_name": "bench", "user_id": f"U{i % 50:04d}", "user_name": "bench",
        "command": "/ephem", "text": text,
        "api_app_id": "A0001", "response_url": "https://hooks.slack.invalid/1",
        # Unique per request, as Slack's are: two identical signed bodies are a replay.
        "trigger_id": f"{i}.{uuid.uuid4().hex}",
    })


async def send(session: aiohttp.ClientSession, url: str, i: int, text: str = CREATE,
               channel: str = "CBENCH") -> tuple[float, int]:
    body = command_body(i, text, channel)
    ts = int(time.time())
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": str(ts),
               "X-Slack-Signature": signature(SECRET, ts, body)}
    started = time.perf_counter()
    try:
        async with session.post(url, data=body.encode(), headers=headers) as resp:
            await resp.read()
            status = resp.status
    except aiohttp.ClientError:
        status = 0
    return time.perf_counter() - started, status


async def burst(url: str, n: int, text: str = CREATE) -> Result:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        out = await asyncio.gather(*(send(session, url, i, text) for i in range(n)))
    return _result(out)


async def steady(url: str, rate: int, seconds: float) -> Result:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, i)))
        out = await asyncio.gather(*tasks)
    return _result(out)


def _result(out: list[tuple[float, int]]) -> Result:
    statuses: dict[int, int] = {}
    for _, status in out:
        statuses[status] = statuses.get(status, 0) + 1
    return Result([lat for lat, status in out if status == 200], statuses)


async def warm(url: str) -> None:
    """A few requests first, so neither side pays for its first-request set-up in the figures."""
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        for i in range(5):
            await send(session, url, 10_000 + i)


async def wait_http(url: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


# --------------------------------------------------------------------------- environment


@contextlib.asynccontextmanager
async def postgres() -> AsyncIterator[str]:
    explicit = os.environ.get("EPHEM_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    try:
        conn = await asyncio.wait_for(asyncpg.connect(LOCAL_PG), 3)
        await conn.close()
        yield LOCAL_PG
    except (TimeoutError, OSError, asyncpg.PostgresError):
        with embedded_postgres() as url:
            yield url


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str] | None = None,
            stdout: int | None = subprocess.DEVNULL) -> AsyncIterator[subprocess.Popen[str]]:  # type: ignore[misc]
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=stdout,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def count_jobs(db_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT env_id) FROM jobs WHERE kind = 'create'")
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def settle(db_url: str, expected: int, *, timeout: float = 60) -> tuple[int, int]:
    """Wait until the bot has persisted what it acked (the work runs after the ack)."""
    deadline = time.monotonic() + timeout
    counts = await count_jobs(db_url)
    while counts[0] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        counts = await count_jobs(db_url)
    await asyncio.sleep(1.0)  # anything more than expected would show up now
    return await count_jobs(db_url)


# --------------------------------------------------------------------------- main


def row(label: str, bot: Result, floor: Result) -> str:
    cells = [label]
    for q in (0.5, 0.99, 1.0):
        b, f = bot.pct(q), floor.pct(q)
        cells.append(f"{b:7.1f} / {f:6.1f}  ({b / f if f else float('inf'):4.1f}x)")
    return " | ".join(cells)


async def main(args: argparse.Namespace) -> int:
    py = sys.executable
    me = str(Path(__file__).resolve())
    async with postgres() as admin:
        run = uuid.uuid4().hex[:8]
        db, busy_db = f"ephem_bench_{run}", f"ephem_bench_busy_{run}"
        conn = await asyncpg.connect(asyncpg_dsn(admin))
        await conn.execute(f"CREATE DATABASE {quote_ident(db)}")
        await conn.execute(f"CREATE DATABASE {quote_ident(busy_db)}")
        await conn.close()
        try:
            edge = await _run(args, py, me, with_database(admin, db))
            busy = await _busy(args, py, me, with_database(admin, busy_db), prefix=f"eb{run}_")
            return edge or busy
        finally:
            conn = await asyncpg.connect(asyncpg_dsn(admin))
            for name in (db, busy_db, *[r[0] for r in await conn.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1", f"eb{run}_%")]):
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            for row in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                                        f"eb{run}_%"):
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(row[0])}")
            await conn.close()


def example_raw() -> dict[str, Any]:
    """The example blueprint with only its data phase: the benchmark measures the Slack edge
    and the delivery of cards, and is copied to a temporary directory (where the example's
    Terraform module and components, given relative to it, are not)."""
    raw: dict[str, Any] = yaml.safe_load(example_blueprint_path().read_text())
    raw["phases"].pop("infra", None)
    raw["phases"].pop("code", None)
    return raw


# --------------------------------------------------------------------------- busy: jobs running


async def _busy(args: argparse.Namespace, py: str, me: str, db_url: str, *, prefix: str) -> int:
    """The burst while four jobs run phases in the same process; then when their cards were
    final against when their last phase finished."""
    with tempfile.TemporaryDirectory() as tmp, \
            process([py, me, "--role", "stub"], stdout=subprocess.PIPE) as stub:
        assert stub.stdout is not None
        stub_url = f"http://127.0.0.1:{int(stub.stdout.readline())}"
        raw = example_raw()
        raw["phases"]["data"] = {
            "server": None, "database_prefix": prefix,
            "migrations": {"kind": "command", "command": ["sleep", str(JOB_SLEEP)]},
        }
        blueprint = Path(tmp) / "ephem.yaml"
        blueprint.write_text(yaml.safe_dump(raw))
        floor_port, bot_port = free_port(), free_port()
        bot_env = {
            "EPHEM_DATABASE_URL": db_url, "EPHEM_CONFIG": str(blueprint),
            "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": stub_url + "/api/", "EPHEM_HTTP_PORT": str(bot_port),
            "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_WORKERS": str(JOBS),
            "EPHEM_GRACE_SECONDS": "1", "EPHEM_LOG_LEVEL": "WARNING",
            "EPHEM_SECRET_KEY": "bench-secret-key",
        }
        with process([py, me, "--role", "floor", "--port", str(floor_port), "--api",
                      stub_url + "/api/"]), \
                process([py, "-m", "bot.cli", "serve"], env=bot_env):
            floor_url = f"http://127.0.0.1:{floor_port}/slack/events"
            bot_url = f"http://127.0.0.1:{bot_port}/slack/events"
            await wait_http(f"http://127.0.0.1:{bot_port}/readyz")
            await wait_http(floor_url)
            await warm(floor_url)
            await warm_status(bot_url)
            floor = await burst(floor_url, args.burst)
            await asyncio.sleep(0.5)
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as session:
                for i in range(JOBS):
                    await send(session, bot_url, 20_000 + i, f"create job-{i} --data seed",
                               channel="CJOBS")
            running = await wait_running(db_url, JOBS)
            bot = await burst(bot_url, args.burst, text=CREATE + " --data none")
            lags = await card_lags(db_url, stub_url, [f"job-{i}" for i in range(JOBS)])

    print(f"\nbusy: a burst of {args.burst} while {running} jobs ran phases "
          f"(a {JOB_SLEEP}s migration command each)")
    print("load | p50 | p99 | max")
    print(row(f"busy burst {args.burst}", bot, floor))
    ratio = bot.pct(0.99) / floor.pct(0.99) if floor.pct(0.99) else float("inf")
    print(f"ack p99 {ratio:.1f}x the floor (goal: under {ACK_GOAL:g}x)")
    for name, lag in lags.items():
        shown = "never" if lag is None else f"{lag:.2f}s"
        print(f"  {name}: final card {shown} after its last phase")
    worst = max((lag for lag in lags.values() if lag is not None), default=float("inf"))
    all_final = all(lag is not None for lag in lags.values())
    print(f"cards final within {CARD_GOAL:g}s of the last phase: "
          f"{sum(1 for lag in lags.values() if lag is not None and lag <= CARD_GOAL)} of "
          f"{len(lags)} (worst {worst:.2f}s)")
    non_ok = {s: c for s, c in bot.statuses.items() if s != 200}
    if non_ok:
        print(f"busy bot: non-200 answers {non_ok}")
    met = ratio < ACK_GOAL and all_final and worst <= CARD_GOAL and not non_ok
    print("goals met" if met else "GOAL MISSED")
    return 0 if met else 1


async def warm_status(url: str) -> None:
    """Warm the bot up with commands that create nothing."""
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        for i in range(5):
            await send(session, url, 10_000 + i, "list")


async def wait_running(db_url: str, count: int, *, timeout: float = 60) -> int:
    """Wait until `count` jobs run (their phases started); return how many run."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        while True:
            running = int(await conn.fetchval(
                "SELECT count(*) FROM phase_runs WHERE status = 'running'"))
            if running >= count or time.monotonic() > deadline:
                return running
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def card_lags(db_url: str, stub_url: str, names: list[str], *,
                    timeout: float = 90) -> dict[str, float | None]:
    """For each environment: seconds from its last phase's end to the first card (post or
    update of its thread root) the stand-in received showing it `ready`; None if never."""
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    deadline = time.monotonic() + timeout
    lags: dict[str, float | None] = dict.fromkeys(names)
    try:
        while time.monotonic() < deadline:
            rows = await conn.fetch("""
                SELECT e.name, e.thread_ts, e.status::text AS status,
                       extract(epoch FROM max(r.finished_at)) AS finished
                FROM environments e JOIN phase_runs r ON r.env_id = e.id
                WHERE e.name = ANY($1) GROUP BY e.id""", names)
            done = {r["name"]: r for r in rows if r["status"] in ("ready", "failed")}
            if len(done) == len(names):
                async with aiohttp.ClientSession() as session, \
                        session.get(stub_url + "/_stub/calls") as resp:
                    calls = await resp.json()
                for name, r in done.items():
                    shown = [c["at"] for c in calls if (
                        (c["method"] == "chat.update" and r["thread_ts"] is not None
                         and c["params"].get("ts", "") == r["thread_ts"])
                        or (c["method"] == "chat.postMessage"  # a root posted ready already
                            and not c["params"].get("thread_ts")
                            and c["params"].get("channel") == "CJOBS"))
                        and str(c["params"].get("text", "")).startswith(f"{name} · ready")]
                    lags[name] = min(shown) - float(r["finished"]) if shown else None
                if all(lag is not None for lag in lags.values()):
                    return lags
            await asyncio.sleep(0.5)
        return lags
    finally:
        await conn.close()


async def _run(args: argparse.Namespace, py: str, me: str, db_url: str) -> int:
    with tempfile.TemporaryDirectory() as tmp, \
            process([py, me, "--role", "stub"], stdout=subprocess.PIPE) as stub:
        assert stub.stdout is not None
        api_url = f"http://127.0.0.1:{int(stub.stdout.readline())}/api/"
        raw = example_raw()
        blueprint = Path(tmp) / "ephem.yaml"
        blueprint.write_text(yaml.safe_dump(raw))
        floor_port, bot_port = free_port(), free_port()
        bot_env = {
            "EPHEM_DATABASE_URL": db_url, "EPHEM_CONFIG": str(blueprint),
            "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": api_url,
            "EPHEM_HTTP_PORT": str(bot_port), "EPHEM_HTTP_HOST": "127.0.0.1",
            "EPHEM_WORKERS": "0", "EPHEM_GRACE_SECONDS": "1", "EPHEM_LOG_LEVEL": "WARNING",
        }
        with process([py, me, "--role", "floor", "--port", str(floor_port), "--api", api_url]), \
                process([py, "-m", "bot.cli", "serve"], env=bot_env):
            floor_url = f"http://127.0.0.1:{floor_port}/slack/events"
            bot_url = f"http://127.0.0.1:{bot_port}/slack/events"
            await wait_http(f"http://127.0.0.1:{bot_port}/readyz")
            await wait_http(floor_url)
            await warm(floor_url)
            await warm(bot_url)
            warmed = await settle(db_url, 5)
            results: dict[str, tuple[Result, Result]] = {}
            sent_to_bot = 0
            for label, load in (
                (f"burst {args.burst}", lambda u: burst(u, args.burst)),
                (f"steady {args.rate}/s x {args.seconds:g}s",
                 lambda u: steady(u, args.rate, args.seconds)),
            ):
                floor = await load(floor_url)
                await asyncio.sleep(0.5)
                bot = await load(bot_url)
                sent_to_bot += len(bot.latencies) + sum(
                    c for s, c in bot.statuses.items() if s != 200)
                results[label] = (bot, floor)
                await asyncio.sleep(0.5)
            jobs, envs = await settle(db_url, warmed[0] + sent_to_bot)

    print("\nack latency, ms: bot / floor (ratio)")
    print("load | p50 | p99 | max")
    for label, (bot, floor) in results.items():
        print(row(label, bot, floor))
    lost = 0
    for label, (bot, floor) in results.items():
        for who, r in (("bot", bot), ("floor", floor)):
            non_ok = {s: c for s, c in r.statuses.items() if s != 200}
            if non_ok:
                print(f"{label} {who}: non-200 answers {non_ok}")
                lost += sum(non_ok.values()) if who == "bot" else 0
    expected = warmed[0] + sent_to_bot
    print(f"\nrequests to the bot: {sent_to_bot} (+{warmed[0]} warm-up); "
          f"jobs: {jobs}; environments: {envs}; expected {expected} of each")
    over_3s = sum(1 for bot, _ in results.values() for lat in bot.latencies if lat >= 3.0)
    print(f"acks at or over Slack's 3 s: {over_3s}")
    exact = jobs == expected and envs == expected and lost == 0
    print("every request became exactly one job" if exact else "MISMATCH: requests were lost "
          "or duplicated")
    return 0 if exact else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--role", choices=("stub", "floor"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--api", default="", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.role == "stub":
        role_stub(ns.port)
    elif ns.role == "floor":
        role_floor(ns.port, ns.api)
    else:
        sys.exit(asyncio.run(main(ns)))
