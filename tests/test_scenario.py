"""The whole bot, end to end: signed Slack requests over HTTP into the real bolt app, the real
handlers, executor, runner and database phase on PostgreSQL, and a local Slack Web API server
reading what Ephem said. Nothing is patched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from bot.cli.app import Ephem, build
from bot.config import load_settings, parse_blueprint
from bot.domain import EnvStatus
from bot.pg import asyncpg_dsn, quote_ident
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import repo
from tests.conftest import as_user
from tests.slackapi import (  # noqa: F401 (the fixture)
    FAST_OUTBOX,
    Call,
    SlackApi,
    SlackSender,
    served,
    slack_api_fixture,
)

SECRET = "scenario-signing-secret"
OWNER, OTHER, CHANNEL = "UANA", "UBOB", "CENV"


@dataclass
class Bot:
    app: Ephem
    api: SlackApi
    slack: SlackSender
    prefix: str

    async def status(self, name: str) -> EnvStatus | None:
        async with self.app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            if env is None:
                return None
            return env.status

    async def wait_status(self, name: str, want: EnvStatus, timeout: float = 20) -> None:
        async def poll() -> None:
            while True:
                async with self.app.store.transaction() as s:
                    envs = [e for e in await repo.live_environments(s) if e.name == name]
                    if want is EnvStatus.DESTROYED and not envs:
                        return
                    if envs and envs[0].status is want:
                        return
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

        # The card is updated after the status is committed (and coalesced): wait for it too.
        async def card_shows() -> None:
            while not (self.api.roots(CHANNEL) and f"· {want}" in self.card_text()):
                await self.app.notifier.flush()
                await asyncio.sleep(0.05)
        await asyncio.wait_for(card_shows(), timeout)

    def card(self) -> dict[str, Any]:
        roots = self.api.roots(CHANNEL)
        assert len(roots) == 1, f"expected one thread root, got {roots}"
        return self.api.messages[roots[0]]

    def card_text(self) -> str:
        return json.dumps(self.card()["blocks"], ensure_ascii=False)


async def _bot(api: SlackApi, bot_db_url: str, data: dict[str, Any], prefix: str
               ) -> AsyncIterator[Bot]:
    settings = load_settings(
        slack_bot_token="xoxb-scenario", slack_signing_secret=SECRET, slack_api_url=api.url,
        slack_app_token=None, database_url=bot_db_url, workers=2, poll_seconds=0.1,
        lease_seconds=5, grace_seconds=5, secret_key="scenario-secret-key",
    )
    blueprint = parse_blueprint({
        "defaults": {"reference": "staging"},
        "references": {"staging": {"releases": {"api": "2.7.3"}}},
        "components": {"api": {}},
        "phases": {"data": {"database_prefix": prefix, **data}},
        "retries": {"attempts": 1, "backoff": "1s"},
    })
    app = build(settings, blueprint, timing=FAST_OUTBOX,
                writer=WebApiWriter(make_web_client(settings)))
    async with served(app, SECRET) as sender:
        yield Bot(app, api, sender, prefix)


@pytest.fixture
async def bot(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
              store: object) -> AsyncIterator[Bot]:
    del store  # requested for its side effect: the bot's tables start empty
    async for b in _bot(slack_api, bot_db_url, {"server": pg_admin_url}, db_prefix):
        yield b


def _text(call: Call) -> str:
    return json.dumps(call.params)


async def test_create_use_and_destroy_from_slack(bot: Bot, pg_admin_url: str) -> None:
    status, _ = await bot.slack.command("create sc-1 --match staging --set api=2.8.0-rc1",
                                        user_id=OWNER, channel_id=CHANNEL)
    assert status == 200
    await bot.wait_status("sc-1", EnvStatus.READY)

    card = bot.card_text()
    assert "sc-1" in card and "ready" in card
    assert "api `2.8.0-rc1`" in card  # what was asked for is on the card
    buttons = [e["action_id"] for b in bot.card()["blocks"] if b["type"] == "actions"
               for e in b["elements"]]
    assert buttons == ["ephem:extend", "ephem:destroy", "ephem:reset-data", "ephem:creds"]
    thread = [m["text"] for m in bot.api.replies(bot.api.roots(CHANNEL)[0])]
    assert any("Queued" in t and "api=2.8.0-rc1" in t for t in thread)

    # Credentials reach the owner only, and work.
    creds = [c for c in bot.api.calls_to("chat.postEphemeral")
             if c.params["user"] == OWNER and "postgresql://" in _text(c)]
    assert len(creds) == 1
    url = next(w for w in json.loads(_text(creds[0]))["text"].split()
               if "postgresql://" in w).strip("`<>")
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    # A copy goes by direct message (an ephemeral one vanishes, and misses an absent owner).
    [dm] = [c for c in bot.api.calls_to("chat.postMessage") if c.params["channel"] == f"D{OWNER}"]
    assert url in dm.params["text"]
    public = [c for c in bot.api.calls_to("chat.postMessage") + bot.api.calls_to("chat.update")
              if c.params["channel"] == CHANNEL]
    assert public and all(password not in _text(c) for c in public)
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT current_database()") == f"{bot.prefix}sc_1"
    await conn.close()

    # Connection details again, to the owner only: the button and `/ephem creds`.
    await bot.slack.action("ephem:creds", value="sc-1", user_id=OTHER, channel_id=CHANNEL)
    refused = await bot.api.wait_for("chat.postEphemeral",
                                     lambda c: c.params["user"] == OTHER, timeout=20)
    assert "Only the owner" in refused[0].params["text"] and password not in _text(refused[0])
    await bot.slack.action("ephem:creds", value="sc-1", user_id=OWNER, channel_id=CHANNEL)
    await bot.slack.command("creds sc-1", user_id=OWNER, channel_id=CHANNEL)
    again = await bot.api.wait_for(
        "chat.postEphemeral",
        lambda c: c.params["user"] == OWNER and "Connection details" in c.params["text"],
        count=2, timeout=20)
    assert all(url in c.params["text"] for c in again)

    # Someone else may not destroy it; the owner may.
    await bot.slack.command("destroy sc-1", user_id=OTHER, channel_id=CHANNEL)
    refusal = await bot.api.wait_for("chat.postEphemeral",
                                     lambda c: c.params["user"] == OTHER, count=2, timeout=20)
    assert "belongs to <@UANA>" in refusal[1].params["text"]
    assert await bot.status("sc-1") is EnvStatus.READY

    await bot.slack.command("destroy sc-1", user_id=OWNER, channel_id=CHANNEL)
    await bot.wait_status("sc-1", EnvStatus.DESTROYED)
    assert "destroyed" in bot.card_text()
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        gone = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                    f"{bot.prefix}sc_1")
    finally:
        await admin.close()
    assert gone == 0


async def test_malformed_input_gets_a_usage_reply_and_nothing_is_queued(bot: Bot) -> None:
    status, _ = await bot.slack.command("create sc_2 --ttl forever", user_id=OWNER,
                                        channel_id=CHANNEL)
    assert status == 200
    reply = await bot.api.wait_for("chat.postEphemeral", timeout=20)
    assert "not a valid name" in reply[0].params["text"]
    assert "Usage" in reply[0].params["text"]
    assert "Traceback" not in _text(reply[0])
    async with bot.app.store.transaction() as s:
        assert await repo.live_names(s) == set()


async def test_a_failed_phase_shows_why_and_retry_and_destroy_buttons(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    """The data server lets Ephem connect but not create databases: a permanent failure."""
    weak = f"{db_prefix}weak"
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    await admin.execute(f"DROP ROLE IF EXISTS {quote_ident(weak)}")
    await admin.execute(f"CREATE ROLE {quote_ident(weak)} LOGIN")
    await admin.close()
    weak_url = as_user(pg_admin_url, weak)
    async for bot in _bot(slack_api, bot_db_url, {"server": weak_url}, db_prefix):
        await bot.slack.command("create sc-3", user_id=OWNER, channel_id=CHANNEL)
        await bot.wait_status("sc-3", EnvStatus.FAILED)
        card = bot.card_text()
        assert "ephem:retry" in card and "ephem:destroy" in card
        assert "data" in card and "failed" in card
        assert "Traceback" not in card

        async with bot.app.store.transaction() as s:
            env = await repo.find_live_environment(s, "sc-3")
            assert env is not None and env.last_error is not None
            assert env.last_error.startswith("data apply failed")

        # The cause is fixed; Retry resumes at the failed phase, then Destroy ends it.
        admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
        await admin.execute(f"ALTER ROLE {quote_ident(weak)} CREATEDB CREATEROLE")
        await admin.close()
        status, _ = await bot.slack.action("ephem:retry", value="sc-3", user_id=OWNER,
                                           channel_id=CHANNEL)
        assert status == 200
        await bot.wait_status("sc-3", EnvStatus.READY)
        status, _ = await bot.slack.action("ephem:destroy", value="sc-3", user_id=OWNER,
                                           channel_id=CHANNEL)
        assert status == 200
        await bot.wait_status("sc-3", EnvStatus.DESTROYED)


async def test_a_direct_message_is_a_command_answered_in_the_dm(bot: Bot) -> None:
    """The manifest's Messages tab is writable: what is typed there runs like `/ephem`."""
    dm = "DANA"

    def message(text: str, ts: str, **extra: Any) -> dict[str, Any]:
        return {"type": "message", "channel_type": "im", "channel": dm, "user": OWNER,
                "text": text, "ts": ts, "event_ts": ts, **extra}

    await bot.slack.event(message("crate sc-5", "1.1"), event_id="EvDm1")
    [typo] = await bot.api.wait_for("chat.postEphemeral", timeout=20)
    assert typo.params["channel"] == dm and "Did you mean `create`?" in typo.params["text"]

    await bot.slack.event(message("create sc-5 --data none", "1.2"), event_id="EvDm2")
    await bot.api.wait_for("chat.postMessage", lambda c: c.params["channel"] == dm, timeout=20)
    assert await bot.status("sc-5") is not None
    # Ephem's own messages in the DM (its card, edits) are not commands.
    await bot.slack.event(message("list", "1.3", bot_id="BBOT"), event_id="EvDm3")
    await bot.slack.event(message("list", "1.4", subtype="message_changed"), event_id="EvDm4")
    await bot.app.inflight.drain(5)
    assert len(bot.api.calls_to("chat.postEphemeral")) == 1
