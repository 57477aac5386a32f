"""A real minute without Slack: does every owner still get a ready card and credentials?

    python bench/outage.py [--envs 26] [--seconds 60]

Runs `ephem serve` (a subprocess, HTTP mode, four workers, a fresh PostgreSQL database, the data
phase with seed data) against a local Slack Web API stand-in in another process. Sends `--envs`
signed `/ephem create` requests from as many owners in two channels; as soon as they are acked,
Slack answers 503 to every call for `--seconds`. The jobs run through the outage. Then it waits
for Slack to come back and reports, with the time since Slack came back:

- environments ready in the store;
- cards showing `ready` at the stand-in (the root's last text);
- owners who received their credentials by direct message (a working `postgresql://` URL).

Exit status 1 if any owner or card was left without. This is the realistic-length companion of
`tests/test_notifier.py::test_an_outage_of_many_retries_loses_nothing`, which runs the same
story with compressed backoff in a second.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ack import SECRET, TOKEN, free_port, postgres, process, send, wait_http
from bot.config import example_blueprint_path
from bot.pg import asyncpg_dsn, quote_ident, with_database
from tests.slackapi import signature

CHANNELS = ("COUT1", "COUT2")


async def stub_calls(stub_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, \
            session.get(stub_url + "/_stub/calls") as resp:
        calls: list[dict[str, Any]] = await resp.json()
        return calls


async def ready_count(db_url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        failed = await conn.fetchval("SELECT count(*) FROM environments WHERE status = 'failed'")
        if failed:
            print(f"  ({failed} environments failed)")
        return int(await conn.fetchval(
            "SELECT count(*) FROM environments WHERE status = 'ready'"))
    finally:
        await conn.close()


def delivered(calls: list[dict[str, Any]], names: list[str], *, since: float
              ) -> tuple[set[str], set[str]]:
    """(names whose card last showed ready, owners who got credentials by DM), from the calls
    that arrived after `since` (wall clock): the stand-in records the refused ones too."""
    cards: dict[str, str] = {}
    calls = [c for c in calls if c["at"] >= since]
    for c in calls:
        p = c["params"]
        if c["method"] in ("chat.postMessage", "chat.update") and not p.get("thread_ts") \
                and p.get("channel") in CHANNELS:
            first = str(p.get("text", "")).split("\n")[0]
            name = first.split(" · ")[0]
            cards[name] = first
    ready = {n for n in names if cards.get(n, "").endswith("· ready")}
    owners = {str(c["params"]["channel"])[1:] for c in calls
              if c["method"] == "chat.postMessage"
              and str(c["params"].get("channel", "")).startswith("D")
              and "postgresql://" in str(c["params"].get("text", ""))}
    return ready, owners


async def main(args: argparse.Namespace) -> int:
    py = sys.executable
    me_ack = str(ROOT / "bench" / "ack.py")
    async with postgres() as admin:
        run = uuid.uuid4().hex[:8]
        db, prefix = f"ephem_outage_{run}", f"eo{run}_"
        conn = await asyncpg.connect(asyncpg_dsn(admin))
        await conn.execute(f"CREATE DATABASE {quote_ident(db)}")
        await conn.close()
        try:
            return await _run(args, py, me_ack, with_database(admin, db), prefix)
        finally:
            conn = await asyncpg.connect(asyncpg_dsn(admin))
            for name in (db, *[r[0] for r in await conn.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%")]):
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            for row in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                                        prefix + "%"):
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(row[0])}")
            await conn.close()


async def _run(args: argparse.Namespace, py: str, me_ack: str, db_url: str, prefix: str) -> int:
    with tempfile.TemporaryDirectory() as tmp, \
            process([py, me_ack, "--role", "stub"], stdout=subprocess.PIPE) as stub:
        assert stub.stdout is not None
        stub_url = f"http://127.0.0.1:{int(stub.stdout.readline())}"
        raw = yaml.safe_load(example_blueprint_path().read_text())
        raw["phases"].pop("infra", None)  # the data phase alone: this measures delivery
        raw["phases"].pop("code", None)
        raw["phases"]["data"].pop("snapshots", None)
        raw["phases"]["data"].pop("default_snapshot", None)
        raw["phases"]["data"]["database_prefix"] = prefix
        here = example_blueprint_path().parent  # the example's migrations, wherever it is
        migrations = raw["phases"]["data"]["migrations"]
        for key in ("locations", "seed_locations"):
            migrations[key] = [str(here / place) for place in migrations[key]]
        blueprint = Path(tmp) / "ephem.yaml"
        blueprint.write_text(yaml.safe_dump(raw))
        port = free_port()
        env = {
            "EPHEM_DATABASE_URL": db_url, "EPHEM_CONFIG": str(blueprint),
            "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": stub_url + "/api/", "EPHEM_HTTP_PORT": str(port),
            "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_WORKERS": "4", "EPHEM_GRACE_SECONDS": "5",
            "EPHEM_LOG_LEVEL": "WARNING", "EPHEM_SECRET_KEY": "outage-secret-key",
        }
        with process([py, "-m", "bot.cli", "serve"], env=env):
            url = f"http://127.0.0.1:{port}/slack/events"
            await wait_http(f"http://127.0.0.1:{port}/readyz")
            names = [f"out-{i}" for i in range(args.envs)]
            async with aiohttp.ClientSession() as session:
                await send(session, url, 0, "help")  # bolt checks its token once, first
                await asyncio.sleep(1)
                answers = await asyncio.gather(*(
                    send_as(session, url, i, f"create {name} --data seed")
                    for i, name in enumerate(names)))
                async with session.post(stub_url + "/_stub/outage",
                                        json={"seconds": args.seconds, "status": 503}) as resp:
                    back_wall = float((await resp.json())["until"])
            down_at = time.monotonic()
            print(f"{sum(1 for _, s in answers if s == 200)} of {len(names)} creates acked; "
                  f"Slack answers 503 to everything for {args.seconds:g}s")
            while time.monotonic() - down_at < args.seconds:
                await asyncio.sleep(5)
                print(f"  {time.monotonic() - down_at:4.0f}s down: "
                      f"{await ready_count(db_url)} environments ready in the store")
            await asyncio.sleep(max(0.0, back_wall - time.time()))
            back_at = time.monotonic()
            print("Slack is back")
            deadline = back_at + args.wait
            ready: set[str] = set()
            owners: set[str] = set()
            while time.monotonic() < deadline:
                ready, owners = delivered(await stub_calls(stub_url), names, since=back_wall)
                if len(ready) == len(names) and len(owners) == len(names):
                    break
                await asyncio.sleep(1)
            took = time.monotonic() - back_at
            in_store = await ready_count(db_url)

    print(f"\nafter {took:.0f}s with Slack back:")
    print(f"  environments ready in the store:     {in_store} of {len(names)}")
    print(f"  cards showing ready:                 {len(ready)} of {len(names)}")
    print(f"  owners with credentials (DM):        {len(owners)} of {len(names)}")
    ok = len(ready) == len(names) and len(owners) == len(names)
    print("nothing was lost" if ok else "LOST: some owners or cards never got their final state")
    return 0 if ok else 1


async def send_as(session: aiohttp.ClientSession, url: str, i: int,
                  text: str) -> tuple[float, int]:
    """`/ephem create` from owner i (each environment its own owner), in one of two channels."""
    body = urlencode({
        "token": "legacy", "team_id": "T0001", "team_domain": "bench",
        "channel_id": CHANNELS[i % 2], "channel_name": "bench", "user_id": f"UOWN{i:03d}",
        "user_name": "bench", "command": "/ephem", "text": text, "api_app_id": "A0001",
        "response_url": "https://hooks.slack.invalid/1", "trigger_id": f"{i}.1",
    })
    ts = int(time.time())
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": str(ts),
               "X-Slack-Signature": signature(SECRET, ts, body)}
    started = time.perf_counter()
    async with session.post(url, data=body.encode(), headers=headers) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", type=int, default=26)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--wait", type=float, default=120.0, help="how long to wait after Slack is back")
    sys.exit(asyncio.run(main(p.parse_args())))
