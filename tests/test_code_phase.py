"""The code phase in the pipeline: infra → data → code with a real database and real local
processes — the components get the data phase's connection, migrations follow the release
set, the thread gets the links, destroy leaves nothing running."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bot import detached
from bot.config import example_blueprint_path, parse_blueprint
from bot.domain import DataMode, JobKind, PhaseName, PhaseStatus
from bot.errors import PermanentError
from bot.pg import asyncpg_dsn
from bot.ports import OutcomeKind, RecordedEvents
from bot.store import Store, repo
from pipelines.code.local import LocalDeployer
from pipelines.code.phase import CodePhase
from pipelines.data.migrations import with_releases
from pipelines.data.postgres import DatabasePhase
from pipelines.runner import Runner
from tests.phases import new_job

EXAMPLES = example_blueprint_path().parent
# The project's migration tool: records the api version it migrated for, makes `customers`.
MIGRATE = ("import asyncio, os, sys, asyncpg\n"
           "async def main():\n"
           "    c = await asyncpg.connect(os.environ['DATABASE_URL'])\n"
           "    await c.execute('CREATE TABLE IF NOT EXISTS schema_for (version text)')\n"
           "    await c.execute('INSERT INTO schema_for VALUES ($1)', sys.argv[1])\n"
           "    await c.execute('CREATE TABLE IF NOT EXISTS customers (id int)')\n"
           "    await c.execute('INSERT INTO customers VALUES (1), (2), (3)')\n"
           "    await c.close()\n"
           "asyncio.run(main())\n")


@pytest.mark.parametrize(("command", "versions", "expected"), [
    (["migrate", "--to={release.api}"], {"api": "2.8.0"}, ["migrate", "--to=2.8.0"]),
    (["m", "{release.api}-{release.web}", "{other}"], {"api": "1", "web": "2"},
     ["m", "1-2", "{other}"]),
    (["m", "{release.search}"], {"api": "1"}, None),
])
def test_migration_commands_follow_the_release_set(
        command: list[str], versions: dict[str, str], expected: list[str] | None) -> None:
    if expected is None:
        with pytest.raises(PermanentError) as err:
            with_releases(command, versions)
        assert "no component search (it has: api)" in err.value.reason
    else:
        assert with_releases(command, versions) == expected


async def test_create_and_destroy_through_the_runner(store: Store, pg_admin_url: str,
                                                     db_prefix: str, tmp_path: Path) -> None:
    bp = parse_blueprint({
        "timeouts": {"code": "60s", "data": "60s"},
        "retries": {"attempts": 1},
        "phases": {
            "data": {"migrations": {"kind": "command", "command": [
                sys.executable, "-c", MIGRATE, "{release.api}"]}},
            "code": {"local": {"workdir": str(EXAMPLES), "components": {
                "api": {"command": ["{python}", "components/shop.py", "api", "customers"]},
                "worker": {"command": ["{python}", "components/shop.py", "worker", "orders"],
                           "expose": False}}}},
        }})
    assert bp.phases.code is not None and bp.phases.code.local is not None
    data = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix,
                         migrations=bp.phases.data.migrations if bp.phases.data else None)
    code = CodePhase(LocalDeployer(bp.phases.code.local, state_dir=tmp_path, stop_grace=2))
    events = RecordedEvents()
    runner = Runner(store=store, phases={PhaseName.DATA: data, PhaseName.CODE: code},
                    blueprint=bp, events=events, secret_key=b"k")
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name="pr-code", owner_id="U1", channel_id="C1", reference="staging",
            release_set={"api": "2.8.0-rc1", "worker": "2.7.3"}, data_mode=DataMode.NONE,
            data_snapshot=None, reason=None, expires_at=datetime.now(UTC) + timedelta(days=1))
    outcome = await runner(await new_job(store, env.id))
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome.error
    async with store.transaction() as s:
        stored = await repo.get_environment(s, env.id)
        links = stored.outputs["code"]["links"]
        pids = [c["pid"] for c in stored.outputs["code"]["components"].values()]
    assert set(links) == {"api"}
    async with aiohttp.ClientSession() as session, session.get(links["api"]) as r:
        answer = json.loads(await r.text())
    # The component reached its own database with the data phase's connection.
    assert answer == {"component": "api", "version": "2.8.0-rc1", "table": "customers",
                      "rows": 3}
    url = (await runner.credentials(env.id))["data"]["database_url"]
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        assert await conn.fetchval("SELECT version FROM schema_for") == "2.8.0-rc1"
    finally:
        await conn.close()
    posted = [e.detail for e in events.progress_events
              if e.phase is PhaseName.CODE and e.milestone]
    assert posted == ["2 components ready (local): api=2.8.0-rc1, worker=2.7.3\n"
                      f"api: {links['api']}"]
    assert any(e.detail == "2/2 components ready" for e in events.progress_events
               if e.status is PhaseStatus.RUNNING)

    outcome = await runner(await new_job(store, env.id, JobKind.DESTROY))
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome.error
    assert not any(detached.group_alive(pid) for pid in pids)
    assert not any((tmp_path / "local").iterdir())
