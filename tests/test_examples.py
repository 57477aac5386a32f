"""The repository's `examples/` blueprint, run as the README tells a newcomer to run it.

`EPHEM_CONFIG=examples/ephem.yaml` from the repository's root: `ephem doctor` passes every
check (against real servers: the state database, the data server, a stand-in production
source, a local Slack Web API), and `ephem shell` creates an environment from it that reaches
ready with the example's migrations and seed applied, then destroys it.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.pg import asyncpg_dsn, quote_ident, with_database
from tests.slackapi import SlackApi, slack_api_fixture  # noqa: F401 (the fixture)
from tests.test_shell import Terminal

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ephem_"  # the example's database_prefix


@pytest.fixture
async def production(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    """An empty database standing in for the example's production source."""
    name = f"{db_prefix}shop_production"
    conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
    await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    await conn.close()
    yield with_database(pg_admin_url, name)


def environment(bot_db_url: str, production: str, slack: SlackApi) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    return env | {
        "EPHEM_CONFIG": "examples/ephem.yaml",  # relative, from the repository's root
        "EPHEM_DATABASE_URL": bot_db_url, "EPHEM_SECRET_KEY": "examples-test-key",
        "EPHEM_POLL_SECONDS": "0.1", "SHOP_PRODUCTION_URL": production,
        "SLACK_BOT_TOKEN": "xoxb-examples", "SLACK_SIGNING_SECRET": "examples",
        "SLACK_API_URL": slack.url,
    }


async def test_the_examples_blueprint_passes_doctor_and_makes_a_ready_environment(
    bot_db_url: str, production: str, slack_api: SlackApi,
) -> None:
    env = environment(bot_db_url, production, slack_api)
    doctor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "doctor", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(doctor.communicate(), 60))[0].decode()
    assert doctor.returncode == 0, out
    lines = out.strip().splitlines()
    assert all(line.startswith("ok") for line in lines), out
    assert any("examples/ephem.yaml is valid (project shop)" in line for line in lines)
    assert any(line.startswith("ok    snapshot shop rules") for line in lines), out

    name = f"ex-{uuid.uuid4().hex[:8]}"
    database = PREFIX + name.replace("-", "_")
    shell = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "shell", "--user", "UEX", cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    term = Terminal(shell)
    try:
        await term.expect(r"Ephem shell as UEX")
        await term.type(f"create {name} --reason trying the example")
        await term.expect(rf"{name} · ready", timeout=60)
        await term.expect(r"Releases: api 2\.7\.3, web 5\.1\.0, worker 2\.7\.3 · Data: seed · "
                          r"Reason: trying the example")
        await term.type(f"Connection details {name}")
        url = (await term.expect(r"postgresql://\S+")).rstrip("`")
        conn = await asyncpg.connect(url)
        try:  # the example's migrations and seed ran
            assert await conn.fetchval("SELECT count(*) FROM products") > 0
            assert await conn.fetchval("SELECT to_regclass('support_tickets')") is not None
        finally:
            await conn.close()
        await term.type(f"Destroy {name}")
        await term.expect(r"\[y/N\]")
        await term.type("y")
        await term.expect(rf"{name} · destroyed", timeout=60)
        await term.type("exit")
        assert await asyncio.wait_for(shell.wait(), 30) == 0
    finally:
        if shell.returncode is None:
            shell.kill()
            await shell.wait()
        admin = await asyncpg.connect(asyncpg_dsn(bot_db_url))
        try:
            left = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                        database)
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
            await admin.execute(f"DROP ROLE IF EXISTS {quote_ident(database)}")
        finally:
            await admin.close()
    assert left == 0
    assert "Traceback" not in term.seen
    assert not re.search(r"WARNING", term.seen)
