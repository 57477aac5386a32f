"""One scheduler pass over many live environments: how long, and how many SQL queries?

    python bench/lifecycle.py [--repeat 5]

A fresh PostgreSQL database (migrated) holds 10, then 1,000, then 5,000 live environments that
need nothing (ready, expiring in two days, their databases measured a minute ago), and the
real `Scheduler` makes passes over them — reminders, the reaper, database sizes, forgotten Slack
requests, the queue's gauges — with the real announcer writing outbox rows (nobody sends
them). Queries are counted with a SQLAlchemy `before_cursor_execute` listener on the store's
engine. A last column adds work to the 5,000: 20 environments due for a reminder and 20
expired, to show what work costs beside what idleness costs.

Prints, per column, the median pass time over `--repeat` passes (after one warm-up pass) and
the queries of one pass, with ratios against the 10-environment baseline measured in the same
run. Goals: a pass under 1 s; queries that do not grow with environments that need nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ack import postgres
from bot.config import parse_blueprint
from bot.pg import asyncpg_dsn, quote_ident, with_database
from bot.scheduler import Scheduler
from bot.slack.lifecycle import LifecycleAnnouncer
from bot.slack.notifier import Notifier
from bot.slack.writer import ConsoleWriter
from bot.store import Store
from bot.store.migrate import upgrade

IDLE = (10, 1000, 5000)
BUSY = 20  # due for a reminder, and as many expired, in the last column


class NoSizes:
    """A data server with no databases (the idle environments are measured already)."""

    async def sizes(self, names: Sequence[str]) -> dict[str, int]:
        return {}


async def fill(store: Store, *, idle: int, busy: int) -> None:
    """Replace every environment with `idle` that need nothing and `busy` of each kind of work."""
    async with store.transaction() as s:
        await s.execute(text("TRUNCATE environments, jobs, slack_outbox, slack_queues, "
                             "audit_events RESTART IDENTITY CASCADE"))
        await s.execute(text("""
            INSERT INTO environments (name, owner_id, channel_id, status, data_mode,
                                      expires_at, created_at, db_bytes, db_measured_at)
            SELECT 'idle-' || i, 'U' || (i % 50), 'C' || (i % 20), 'ready', 'seed',
                   now() + interval '2 days', now() - interval '1 day', 8000000,
                   now() - interval '1 minute'
            FROM generate_series(1, :n) AS i
        """), {"n": idle})
        await s.execute(text("""
            INSERT INTO environments (name, owner_id, channel_id, status, data_mode,
                                      expires_at, created_at, db_bytes, db_measured_at)
            SELECT 'due-' || i, 'U1', 'C1', 'ready'::env_status, 'seed'::data_mode,
                   now() + interval '3 hours',
                   now() - interval '2 days', 8000000, now()
            FROM generate_series(1, :n) AS i
            UNION ALL
            SELECT 'gone-' || i, 'U1', 'C1', 'ready'::env_status, 'none'::data_mode,
                   now() - interval '1 minute',
                   now() - interval '2 days', NULL, now()
            FROM generate_series(1, :n) AS i
        """), {"n": busy})
        await s.execute(text("ANALYZE environments"))


async def passes(store: Store, scheduler: Scheduler, counted: list[int], *, repeat: int,
                 refill: dict[str, int] | None) -> tuple[float, int, int]:
    """(median seconds, queries of one pass, environments acted on in one pass)."""
    times, queries, acted = [], 0, 0
    for i in range(repeat + 1):
        if refill is not None:
            await fill(store, **refill)
        counted[0] = 0
        began = time.perf_counter()
        result = await scheduler.tick()
        took = time.perf_counter() - began
        if i == 0:
            continue  # warm-up: the pool's connections, prepared statements
        times.append(took)
        queries = counted[0]
        acted = len(result.reminded) + len(result.last) + len(result.reaped)
    return statistics.median(times), queries, acted


async def main(repeat: int) -> None:
    async with postgres() as admin_url:
        name = f"ephem_bench_lc_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(asyncpg_dsn(admin_url))
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        await conn.close()
        url = with_database(admin_url, name)
        try:
            await asyncio.to_thread(upgrade, url)
            await run(url, repeat)
        finally:
            conn = await asyncpg.connect(asyncpg_dsn(admin_url))
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            await conn.close()


async def run(url: str, repeat: int) -> None:
    store = Store(url, pool_size=2, max_overflow=0)
    counted = [0]

    def count(*_: Any) -> None:
        counted[0] += 1

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    blueprint = parse_blueprint({"cost": {"db_gb_day": 0.5}})
    notifier = Notifier(store, ConsoleWriter(lambda _: None))
    await notifier.close(timeout=0)  # rows are written, nobody sends them
    scheduler = Scheduler(store=store, remind_before=timedelta(hours=4),
                          announce=LifecycleAnnouncer(notifier, blueprint), sizes=NoSizes(),
                          clock=lambda: datetime.now(UTC))
    columns: list[tuple[str, float, int, int]] = []
    for idle in IDLE:
        await fill(store, idle=idle, busy=0)
        took, queries, acted = await passes(store, scheduler, counted, repeat=repeat,
                                            refill=None)
        columns.append((f"{idle:,} idle", took, queries, acted))
    took, queries, acted = await passes(store, scheduler, counted, repeat=repeat,
                                        refill={"idle": IDLE[-1], "busy": BUSY})
    columns.append((f"{IDLE[-1]:,} idle + {2 * BUSY} due", took, queries, acted))
    await store.close()

    base_t, base_q = columns[0][1], columns[0][2]
    width = max(len(c[0]) for c in columns) + 2
    print("one scheduler pass (reminders, reaper, database sizes, forgotten requests, "
          f"queue gauges); median of {repeat}")
    print(f"{'':24}" + "".join(f"{c[0]:>{width}}" for c in columns))
    print(f"{'pass (ms)':24}" + "".join(f"{c[1] * 1000:>{width}.1f}" for c in columns))
    print(f"{'  ratio to 10 idle':24}" + "".join(f"{c[1] / base_t:>{width}.2f}" for c in columns))
    print(f"{'SQL queries':24}" + "".join(f"{c[2]:>{width}}" for c in columns))
    print(f"{'  ratio to 10 idle':24}" + "".join(f"{c[2] / base_q:>{width}.2f}" for c in columns))
    print(f"{'environments acted on':24}" + "".join(f"{c[3]:>{width}}" for c in columns))
    worst = max(c[1] for c in columns)
    idle_queries = {c[2] for c in columns[: len(IDLE)]}
    print(f"goal: a pass under 1 s — {'met' if worst < 1 else 'MISSED'} "
          f"(slowest {worst * 1000:.1f} ms); queries independent of idle environments — "
          f"{'met' if len(idle_queries) == 1 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(parser.parse_args().repeat))
