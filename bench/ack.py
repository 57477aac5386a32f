"""How fast Ephem acknowledges `/ephem create`, beside the floor any bolt app costs.

    python bench/ack.py            # both loads, prints a table; exit 1 if a request was lost

Two loads of signed `/ephem create` requests, each sent to the running bot (`ephem serve` in a
subprocess, HTTP mode, a local Slack Web API stand-in, a fresh PostgreSQL database) and, in the
same run, to a bare bolt app on aiohttp whose listener only acks (the floor):

  burst   200 requests at once
  steady  100 requests a second for 10 s (open loop: sent on schedule, whatever the answers)

For each: p50 / p99 / max time to the HTTP 200 and the bot/floor ratio. Then it checks that every
request the bot acked became exactly one job (and one environment) in the database.

The bot runs with EPHEM_WORKERS=0 so the jobs stay queued and can be counted: this measures the
Slack edge (ack, parse, validate, persist, enqueue, reply), not the phases.
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


def command_body(i: int) -> str:
    return urlencode({
        "token": "legacy", "team_id": "T0001", "team_domain": "bench", "channel_id": "CBENCH",
        "channel_name": "bench", "user_id": f"U{i % 50:04d}", "user_name": "bench",
        "command": "/ephem", "text": "create --match staging --set api=2.8.0-rc1",
        "api_app_id": "A0001", "response_url": "https://hooks.slack.invalid/1",
        # Unique per request, as Slack's are: two identical signed bodies are a replay.
        "trigger_id": f"{i}.{uuid.uuid4().hex}",
    })


async def send(session: aiohttp.ClientSession, url: str, i: int) -> tuple[float, int]:
    body = command_body(i)
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


async def burst(url: str, n: int) -> Result:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        out = await asyncio.gather(*(send(session, url, i) for i in range(n)))
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
        db = f"ephem_bench_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(asyncpg_dsn(admin))
        await conn.execute(f"CREATE DATABASE {quote_ident(db)}")
        await conn.close()
        db_url = with_database(admin, db)
        try:
            return await _run(args, py, me, db_url)
        finally:
            conn = await asyncpg.connect(asyncpg_dsn(admin))
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(db)} WITH (FORCE)")
            await conn.close()


async def _run(args: argparse.Namespace, py: str, me: str, db_url: str) -> int:
    with tempfile.TemporaryDirectory() as tmp, \
            process([py, me, "--role", "stub"], stdout=subprocess.PIPE) as stub:
        assert stub.stdout is not None
        api_url = f"http://127.0.0.1:{int(stub.stdout.readline())}/api/"
        raw = yaml.safe_load(example_blueprint_path().read_text())
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
