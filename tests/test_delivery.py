"""What reaches the people, end to end: signed Slack requests over HTTP into the real bolt app,
the real handlers, executor, runner and outbox on PostgreSQL, a local Slack Web API answering
(or not). Two bots on one database stand for two replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.cli.app import Ephem, build
from bot.config import load_settings, parse_blueprint
from bot.domain import EnvStatus, JobStatus
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import repo
from bot.store.models import Environment, Job
from tests.slackapi import (  # noqa: F401 (the fixture)
    FAST_OUTBOX,
    SlackApi,
    SlackSender,
    served,
    slack_api_fixture,
)

SECRET = "delivery-signing-secret"
OWNER, CHANNEL = "UANA", "CENV"


class Bot:
    def __init__(self, app: Ephem, api: SlackApi, slack: SlackSender) -> None:
        self.app, self.api, self.slack = app, api, slack

    async def env(self, name: str) -> Environment:
        async with self.app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            assert env is not None, name
            return env

    async def wait_job_done(self, name: str, timeout: float = 30) -> None:
        async def poll() -> None:
            while True:
                async with self.app.store.transaction() as s:
                    env = await repo.find_live_environment(s, name)
                    if env is not None and not await repo.pending_jobs(s, env.id) and \
                            env.status in (EnvStatus.READY, EnvStatus.FAILED):
                        return
                await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            async with self.app.store.transaction() as s:
                env = await repo.find_live_environment(s, name)
                jobs = [(j.kind, j.status, j.attempts, j.error)
                        for j in await repo.pending_jobs(s, env.id)] if env else []
            raise AssertionError(f"{name}: {env and env.status}, pending jobs {jobs}") from None


async def _bots(api: SlackApi, bot_db_url: str, prefix: str, *, count: int,
                data: dict[str, Any] | None) -> AsyncIterator[list[Bot]]:
    settings = load_settings(
        slack_bot_token="xoxb-delivery", slack_signing_secret=SECRET, slack_api_url=api.url,
        slack_app_token=None, database_url=bot_db_url, workers=2, poll_seconds=0.1,
        lease_seconds=5, grace_seconds=5, secret_key="delivery-secret-key",
    )
    phases = {"data": {"database_prefix": prefix, **data}} if data is not None else {}
    blueprint = parse_blueprint({
        "defaults": {"reference": "staging"},
        "references": {"staging": {"releases": {"api": "2.7.3"}}},
        "components": {"api": {}},
        "phases": phases,
        "retries": {"attempts": 1, "backoff": "1s"},
    })
    async with contextlib.AsyncExitStack() as stack:
        bots = []
        for _ in range(count):
            app = build(settings, blueprint, timing=FAST_OUTBOX,
                        writer=WebApiWriter(make_web_client(settings)))
            sender = await stack.enter_async_context(served(app, SECRET))
            bots.append(Bot(app, api, sender))
        yield bots


@pytest.fixture
async def bot(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
              store: object) -> AsyncIterator[Bot]:
    del store  # requested for its side effect: the bot's tables start empty
    async for bots in _bots(slack_api, bot_db_url, db_prefix, count=1,
                            data={"server": pg_admin_url}):
        yield bots[0]


async def test_a_create_where_ephem_is_not_a_member_creates_nothing_and_says_why(
    bot: Bot
) -> None:
    bot.api.outside.add("CNOTIN")

    status, _ = await bot.slack.command("create nobody-sees", user_id=OWNER,
                                        channel_id="CNOTIN",
                                        response_url=bot.api.response_url("cmd-1"))
    assert status == 200
    await bot.api.wait_for("response_url", timeout=20)

    [answer] = bot.api.responses
    assert answer["key"] == "cmd-1" and "/invite @ephem" in answer["text"]
    assert answer["response_type"] == "ephemeral"
    async with bot.app.store.transaction() as s:
        assert await s.scalar(select(func.count()).select_from(Environment)) == 0
        assert await s.scalar(select(func.count()).select_from(Job)) == 0
    assert not [c for c in bot.api.calls_to("chat.postMessage")
                if c.params["channel"] == "CNOTIN"]


async def test_slack_down_never_holds_the_job_and_everything_arrives_after(bot: Bot) -> None:
    """Slack answers 503 to every call: the command is acked, the job runs to the end at its own
    speed, and once Slack is back the card shows ready, the owner is mentioned in the thread and
    has the credentials."""
    # Bolt checks the token once (auth.test) before the first listener runs: let it, as a bot
    # that has been running for a while has.
    await bot.slack.command("help", user_id=OWNER, channel_id=CHANNEL)
    await bot.api.wait_for("chat.postEphemeral", timeout=20)
    bot.api.outage(status=503)
    before = len(bot.api.calls)

    status, _ = await bot.slack.command("create down-1", user_id=OWNER, channel_id=CHANNEL)
    assert status == 200
    await bot.wait_job_done("down-1")

    assert (await bot.env("down-1")).status is EnvStatus.READY
    assert not bot.api.messages  # nothing got through: the job did not wait for Slack
    for _ in range(200):  # the outbox keeps trying (how often depends on the machine's pace)
        if len(bot.api.calls) - before >= 4:
            break
        await asyncio.sleep(0.1)
    assert len(bot.api.calls) - before >= 4
    bot.api.restore()
    assert await bot.app.notifier.flush(30)

    [root] = bot.api.roots(CHANNEL)
    card = bot.api.messages[root]
    assert card["blocks"][0]["text"]["text"].endswith("down-1 · ready")
    thread = [m["text"] for m in bot.api.replies(root)]
    assert thread[0].startswith("Queued: *down-1*")
    assert f"<@{OWNER}> down-1 is ready" in thread
    [dm] = [m for m in bot.api.messages.values() if m["channel"] == f"D{OWNER}"]
    assert "postgresql://" in dm["text"] and "down-1" in dm["text"]


async def test_each_change_of_the_card_is_sent_once(bot: Bot) -> None:
    await bot.slack.command("create once-1", user_id=OWNER, channel_id=CHANNEL)
    await bot.wait_job_done("once-1")
    assert await bot.app.notifier.flush(20)

    [root] = bot.api.roots(CHANNEL)
    sent = [json.dumps([c.params["text"], c.params.get("blocks")])
            for c in bot.api.calls_to("chat.update") if c.params["ts"] == root]
    assert sent, "the card was never updated"
    assert len(sent) == len(set(sent)), "an identical chat.update was sent twice"
    assert "once-1 · ready" in json.loads(sent[-1])[0]


async def test_a_used_reminder_loses_its_buttons(bot: Bot) -> None:
    await bot.slack.command("create remind-1", user_id=OWNER, channel_id=CHANNEL)
    await bot.wait_job_done("remind-1")
    env = await bot.env("remind-1")
    # The scheduler's clock stands 3 hours before the expiry: the first reminder is due.
    bot.app.scheduler.clock = lambda: env.expires_at - timedelta(hours=3)
    assert (await bot.app.scheduler.tick()).reminded == [env.id]
    assert await bot.app.notifier.flush(20)
    root = env.thread_ts or (await bot.env("remind-1")).thread_ts
    assert root is not None
    [reminder_ts] = [ts for ts, m in bot.api.messages.items() if m["thread_ts"] == root
                     and any(b["type"] == "actions" for b in m["blocks"])]

    status, _ = await bot.slack.action("ephem:extend", value="remind-1", user_id=OWNER,
                                       channel_id=CHANNEL, message_ts=reminder_ts,
                                       thread_ts=root)
    assert status == 200
    await bot.api.wait_for("chat.update", lambda c: c.params["ts"] == reminder_ts, timeout=20)

    used = bot.api.messages[reminder_ts]
    assert not any(b["type"] == "actions" for b in used["blocks"])
    assert f"<@{OWNER}> extended *remind-1*" in used["blocks"][0]["text"]["text"]
    card = bot.api.messages[root]  # the card is rendered from the store, never replaced
    assert card["blocks"][0]["text"]["text"].endswith("remind-1 · ready")


async def test_a_burst_of_twenty_in_one_channel_ends_with_every_card_final(
    slack_api: SlackApi, bot_db_url: str, db_prefix: str, store: object
) -> None:
    """Twenty creates in one channel, spread over two replicas, each running jobs and each
    sending the outbox: every environment has one card, and it shows what the store says."""
    del store
    names = [f"burst-{i}" for i in range(20)]
    async for bots in _bots(slack_api, bot_db_url, db_prefix, count=2, data=None):
        answers = await asyncio.gather(*(
            bots[i % 2].slack.command(f"create {name} --data none", user_id=OWNER,
                                      channel_id=CHANNEL)
            for i, name in enumerate(names)))
        assert {status for status, _ in answers} == {200}
        for name in names:
            await bots[0].wait_job_done(name)
        assert all(await asyncio.gather(*(b.app.notifier.flush(60) for b in bots)))

        async with bots[0].app.store.transaction() as s:
            envs = {e.name: e for e in await repo.live_environments(s)}
            jobs = (await s.execute(select(Job.status))).scalars().all()
        assert sorted(envs) == sorted(names)
        assert set(jobs) == {JobStatus.SUCCEEDED}
        roots = slack_api.roots(CHANNEL)
        assert len(roots) == 20
        for name, env in envs.items():
            assert env.thread_ts in roots, name
            card = slack_api.messages[env.thread_ts]
            assert card["blocks"][0]["text"]["text"].endswith(f"{name} · {env.status}"), name
