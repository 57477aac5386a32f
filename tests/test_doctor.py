"""`ephem doctor` against each blueprint that would break every create: each is a failing line.

A healthy configuration first (every line ok, against real servers: the state database, the
data server, a snapshot source and a local Slack Web API), then one thing broken at a time.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from bot.cli.doctor import Check, run_checks
from bot.config import Settings, example_blueprint_path, load_blueprint, load_settings
from bot.pg import asyncpg_dsn, quote_ident, with_database
from tests.slackapi import SlackApi, slack_api_fixture  # noqa: F401 (the fixture)


@pytest.fixture(scope="module")
async def source_url(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    """A database standing in for production (doctor only connects to it)."""
    name = f"{db_prefix}doctor_source"
    conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
    await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    await conn.close()
    yield with_database(pg_admin_url, name)


def healthy(tmp_path: Path, *, server: str, source: str, prefix: str) -> dict[str, Any]:
    example = example_blueprint_path().parent
    shutil.copytree(example / "shop", tmp_path / "shop")
    return {
        "defaults": {"ttl": "2d", "max_ttl": "14d", "reference": "staging"},
        "references": {"staging": {"releases": {"api": "2.10"}}},
        "phases": {"data": {
            "server": server, "database_prefix": prefix,
            "migrations": {"locations": ["shop/migrations"], "seed_locations": ["shop/seed"]},
            "snapshots": {"shop": {"source": source, "rules": "shop/masking.yaml"}},
        }},
    }


def settings(slack: SlackApi, state: str, **changes: Any) -> Settings:
    values = {"slack_bot_token": "xoxb-doctor", "slack_signing_secret": "s",
              "slack_api_url": slack.url, "database_url": state,
              "secret_key": "doctor-secret", "masking_key": "", **changes}
    return load_settings(**values)


async def checks_for(tmp_path: Path, raw: dict[str, Any], cfg: Settings) -> list[Check]:
    path = tmp_path / "ephem.yaml"
    path.write_text(yaml.safe_dump(raw))
    return await run_checks(cfg, load_blueprint(path), source=str(path))


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    return change


BROKEN = [
    ("unreachable snapshot source",
     _set("phases.data.snapshots.shop.source", "postgresql://ro:hunter22@127.0.0.1:9/prod"),
     "snapshot shop source", "nothing listens at 127.0.0.1:9"),
    ("unknown snapshot host",
     _set("phases.data.snapshots.shop.source", "postgresql://ro:hunter22@db.invalid/prod"),
     "snapshot shop source", "the host db.invalid is not known"),
    ("missing rules file", _set("phases.data.snapshots.shop.rules", "shop/nope.yaml"),
     "snapshot shop rules", "no such rules file"),
    ("missing migration folder",
     _set("phases.data.migrations.locations", ["shop/migrations", "shop/gone"]),
     "migrations", "no folder"),
    ("default reference unknown", _set("defaults.reference", "stagin"),
     "defaults", "did you mean `staging`?"),
    ("ttl above max_ttl", _set("defaults.ttl", "15d"),
     "defaults", "longer than max_ttl 14d"),
    ("unreachable data server",
     _set("phases.data.server", "postgresql://admin:hunter22@127.0.0.1:9/postgres"),
     "data server", "nothing listens at 127.0.0.1:9"),
]


@pytest.mark.parametrize(("what", "change", "check", "told"), BROKEN,
                         ids=[b[0] for b in BROKEN])
async def test_each_broken_blueprint_is_a_failing_line(
    what: str, change: Callable[[dict[str, Any]], None], check: str, told: str,
    tmp_path: Path, slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
    source_url: str,
) -> None:
    raw = healthy(tmp_path, server=pg_admin_url, source=source_url, prefix=db_prefix)
    cfg = settings(slack_api, bot_db_url)
    assert all(c.ok for c in await checks_for(tmp_path, raw, cfg)), what  # healthy first

    change(raw)
    found = await checks_for(tmp_path, raw, cfg)
    failed = [c for c in found if not c.ok]
    assert [c.name for c in failed] == [check], [c.line() for c in found]
    assert told in failed[0].detail
    assert "hunter22" not in failed[0].line()  # the password is hidden
    assert "Errno" not in failed[0].line() and "gaierror" not in failed[0].line()


async def test_snapshots_without_a_masking_key_fail(
    tmp_path: Path, slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
    source_url: str,
) -> None:
    raw = healthy(tmp_path, server=pg_admin_url, source=source_url, prefix=db_prefix)
    found = await checks_for(tmp_path, raw, settings(slack_api, bot_db_url, secret_key=""))
    failed = {c.name: c.detail for c in found if not c.ok}
    assert "masking key" in failed and "EPHEM_MASKING_KEY" in failed["masking key"]
    assert "every build refuses" in failed["masking key"]


async def test_an_unreachable_state_database_says_which_and_what_to_do(
    tmp_path: Path, slack_api: SlackApi, pg_admin_url: str, db_prefix: str, source_url: str,
) -> None:
    raw = healthy(tmp_path, server=pg_admin_url, source=source_url, prefix=db_prefix)
    state = "postgresql://ephem:hunter22@no-such-host.invalid:5432/ephem"
    found = await checks_for(tmp_path, raw, settings(slack_api, state))
    [line] = [c.line() for c in found if c.name == "state database"]
    assert line == ("FAIL  state database: cannot reach "
                    "postgresql://ephem:***@no-such-host.invalid:5432/ephem: the host "
                    "no-such-host.invalid is not known; check the host name")


async def test_nothing_configured_says_what_to_set_without_exception_names(
    tmp_path: Path, slack_api: SlackApi, db_prefix: str, source_url: str,
) -> None:
    # A first run after `pip install`: no EPHEM_DATABASE_URL, and a blueprint whose data
    # server defaults to it. Each failing line says what to set, not which exception was raised.
    raw = healthy(tmp_path, server="", source=source_url, prefix=db_prefix)
    del raw["phases"]["data"]["server"]
    found = await checks_for(tmp_path, raw, settings(slack_api, ""))
    failed = {c.name: c.line() for c in found if not c.ok}
    assert set(failed) == {"state database", "data server"}, [c.line() for c in found]
    assert failed["state database"] == (
        "FAIL  state database: EPHEM_DATABASE_URL is not set: it names Ephem's own database "
        "(`ephem shell` and `ephem demo` work without it)")
    assert "phases.data.server" in failed["data server"]
    assert "EPHEM_DATABASE_URL" in failed["data server"]
    assert not any("Error" in line for line in failed.values()), failed
    assert "clone method" not in {c.name for c in found}  # no server: said once


async def test_a_data_server_from_an_infra_output_is_not_dialled(
    tmp_path: Path, slack_api: SlackApi, bot_db_url: str, db_prefix: str, source_url: str,
) -> None:
    # `{infra.db_url}` is known only once an environment's infra phase ran: doctor says so
    # rather than failing on a URL that is not one.
    raw = healthy(tmp_path, server="{infra.db_url}", source=source_url, prefix=db_prefix)
    raw["phases"]["infra"] = {"terraform": {"module": "infra"}}
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "main.tf").write_text('output "db_url" {\n  value = ""\n}\n')
    found = await checks_for(tmp_path, raw, settings(slack_api, bot_db_url))
    [line] = [c.line() for c in found if c.name == "data server"]
    assert line.startswith("ok") and "infrastructure output" in line, line
    assert "clone method" not in {c.name for c in found}


async def test_doctor_says_the_masking_is_compiled(
    tmp_path: Path, slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
    source_url: str,
) -> None:
    raw = healthy(tmp_path, server=pg_admin_url, source=source_url, prefix=db_prefix)
    found = {c.name: c for c in await checks_for(tmp_path, raw, settings(slack_api, bot_db_url))}
    # This machine builds the C extensions at install; the check reports what is in use.
    assert found["masking"].ok, found["masking"].line()
    assert found["masking"].detail.startswith("compiled: the row loop and the keyed")
    assert "SHA-256: " in found["masking"].detail
