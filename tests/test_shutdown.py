"""Stopping a busy Ephem (the shell's and serve's `Ephem.stop`) is bounded by the grace period
once, not once per part: an acked request that does not finish and a phase that does not finish
are waited for together, then cancelled — the job released to the queue — and the process
goes."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from sqlalchemy import select

from bot.cli.app import build
from bot.config import load_settings, parse_blueprint
from bot.domain import JobStatus
from bot.ports import Invocation
from bot.slack.writer import ConsoleWriter
from bot.store.models import Job

GRACE = 5.0


async def test_a_busy_stop_waits_one_grace_period_for_everything(
        bot_db_url: str, pg_admin_url: str, db_prefix: str, tmp_path: Path,
        store: object) -> None:
    del store
    started = tmp_path / "started"
    settings = load_settings(database_url=bot_db_url, workers=2, poll_seconds=0.1,
                             lease_seconds=30, grace_seconds=GRACE, secret_key="shutdown-key")
    blueprint = parse_blueprint({"phases": {"data": {
        "server": pg_admin_url, "database_prefix": db_prefix,
        "migrations": {"kind": "command", "command": [
            sys.executable, "-c",
            f"import time; open({str(started)!r}, 'w').close(); time.sleep(300)"]},
    }}})
    lines: list[str] = []
    app = build(settings, blueprint, writer=ConsoleWriter(lines.append))
    await app.start(scheduler=False)
    stopped = False
    try:
        await app.invoke(Invocation(user_id="UANA", channel_id="CSTOP",
                                    text="create sd-1 --data none"))
        async with asyncio.timeout(60):
            while not started.exists():  # noqa: ASYNC110 - another process's file
                await asyncio.sleep(0.05)
        app.inflight.spawn(asyncio.sleep(300), name="an-acked-request-that-hangs")

        began = time.monotonic()
        await app.stop()
        took = time.monotonic() - began
        stopped = True
    finally:
        if not stopped:
            await app.stop()
    # The two waits overlapped: one grace period and the outbox's moment, not two graces.
    assert GRACE <= took < 2 * GRACE, took
    check = build(settings, blueprint, writer=ConsoleWriter(lines.append))
    try:
        async with check.store.transaction() as s:
            [job] = (await s.execute(select(Job))).scalars().all()
        assert job.status is JobStatus.QUEUED and job.lease_owner is None  # released
    finally:
        await check.store.close()
