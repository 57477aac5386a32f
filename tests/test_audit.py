"""An environment's history: `/ephem log NAME` in Slack, and `ephem audit` at a terminal, both
read from the audit table that every command, reap and job end writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot import redaction
from bot.domain import EnvStatus
from tests.slackapi import SlackApi, slack_api_fixture  # noqa: F401 (the fixture)
from tests.test_cli import run
from tests.test_scenario import CHANNEL, OTHER, OWNER, Bot, _bot

SECRET_IN_REASON = "au-typed-secret-0123456789"


@pytest.fixture
async def bot(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
              store: object) -> AsyncIterator[Bot]:
    del store
    async for b in _bot(slack_api, bot_db_url, {"server": pg_admin_url}, db_prefix):
        yield b


async def _ephemeral(bot: Bot, fragment: str) -> str:
    calls = await bot.api.wait_for("chat.postEphemeral",
                                   lambda c: fragment in str(c.params.get("text")), timeout=20)
    return str(calls[-1].params["text"])


async def test_log_shows_the_history_escaped_and_without_secrets(bot: Bot,
                                                                  bot_db_url: str) -> None:
    redaction.register(SECRET_IN_REASON)
    status, _ = await bot.slack.command(
        f'create au-1 --reason "fix <b> & {SECRET_IN_REASON}"', user_id=OWNER,
        channel_id=CHANNEL)
    assert status == 200
    await bot.wait_status("au-1", EnvStatus.READY)
    await bot.slack.command("extend au-1 1d", user_id=OWNER, channel_id=CHANNEL)
    await bot.api.wait_for("chat.postMessage", lambda c: "extended" in str(c.params.get("text")),
                           timeout=20)  # the extend answers in the thread, once it is audited

    status, _ = await bot.slack.command("log au-1", user_id=OTHER, channel_id=CHANNEL)
    assert status == 200
    text = await _ephemeral(bot, "History of *au-1*")
    lines = text.splitlines()[1:]
    assert len(lines) == 3, text
    assert f"<@{OWNER}> create (slack)" in lines[0]
    assert "Ephem create-succeeded (executor)" in lines[1]
    assert f"<@{OWNER}> extend (slack): by: 1d" in lines[2]
    assert "fix &lt;b&gt; &amp; ***" in lines[0]  # escaped for Slack, the secret scrubbed
    assert SECRET_IN_REASON not in text and "<b>" not in text

    status, _ = await bot.slack.command("log au-9", user_id=OTHER, channel_id=CHANNEL)
    assert status == 200
    assert "au-9" in await _ephemeral(bot, "au-9")

    # The same history at a terminal, as JSON and as lines.
    env = {"EPHEM_DATABASE_URL": bot_db_url}
    as_json = await asyncio.to_thread(run, ["audit", "--env", "au-1", "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    events = json.loads(as_json.stdout)
    assert [(e["actor"], e["action"], e["env"]) for e in events] == [
        (OWNER, "create", "au-1"), ("ephem", "create-succeeded", "au-1"),
        (OWNER, "extend", "au-1")]
    assert events[2]["details"]["by"] == "1d"
    assert datetime.fromisoformat(events[2]["details"]["expires_at"]) > datetime.now(UTC)
    lines_out = await asyncio.to_thread(run, ["audit", "--since", "1h"], env)
    assert lines_out.returncode == 0, lines_out.stderr
    printed = lines_out.stdout.splitlines()
    assert len(printed) == 3 and all("au-1" in line for line in printed)
    assert "UTC" in printed[0] and "create" in printed[0]
    none = await asyncio.to_thread(run, ["audit", "--env", "au-2"], env)
    assert (none.returncode, none.stdout.strip()) == (0, "no audit events of au-2")


def test_audit_refuses_a_bad_duration_in_one_line(bot_db_url: str) -> None:
    bad = run(["audit", "--since", "lately"], {"EPHEM_DATABASE_URL": bot_db_url})
    assert bad.returncode == 1
    assert bad.stderr.startswith("ephem: `lately` is not a duration")
    assert "Traceback" not in bad.stderr
