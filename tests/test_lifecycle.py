"""The lifecycle end to end: reminders (thread and direct message, exactly once, across
replicas and a crash), Extend and its menu, expiry, quotas and the budget. Signed Slack requests
over HTTP into the real bolt app, the real handlers, executor, runner, scheduler and outbox on
PostgreSQL, a local Slack Web API reading what Ephem said; the scheduler's clock is the test's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, update

from bot.cli.app import Ephem, build
from bot.config import load_settings, parse_blueprint
from bot.cost import month_start
from bot.domain import EnvStatus
from bot.pg import asyncpg_dsn
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import repo
from bot.store.models import AuditEvent, Environment, SlackOutbox
from tests.slackapi import (  # noqa: F401 (the fixture)
    FAST_OUTBOX,
    SlackApi,
    SlackSender,
    served,
    slack_api_fixture,
)

SECRET = "lifecycle-signing-secret"
OWNER, OTHER, THIRD, CHANNEL = "UANA", "UBOB", "UCAT", "CENV"


class Bot:
    def __init__(self, app: Ephem, api: SlackApi, slack: SlackSender) -> None:
        self.app, self.api, self.slack = app, api, slack

    async def env(self, name: str) -> Environment:
        async with self.app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            assert env is not None, name
            return env

    async def create_ready(self, name: str, *extra: str, user: str = OWNER) -> Environment:
        status, _ = await self.slack.command(" ".join(("create", name, *extra)), user_id=user,
                                             channel_id=CHANNEL)
        assert status == 200
        await self.wait_status(name, EnvStatus.READY)
        return await self.env(name)

    async def wait_status(self, name: str, want: EnvStatus, timeout: float = 30) -> None:
        async def poll() -> None:
            while True:
                async with self.app.store.transaction() as s:
                    found = (await s.execute(select(Environment).where(
                        Environment.name == name).order_by(Environment.id.desc()).limit(1))
                    ).scalar_one_or_none()
                    if found is not None and found.status is want and \
                            not await repo.pending_jobs(s, found.id):
                        return
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    def at(self, when: datetime) -> None:
        """Set the scheduler's clock."""
        self.app.scheduler.clock = lambda: when

    def thread(self, env: Environment) -> list[dict[str, Any]]:
        assert env.thread_ts is not None
        return self.api.replies(env.thread_ts)

    def direct(self, user: str = OWNER) -> list[dict[str, Any]]:
        return [m for m in self.api.messages.values() if m["channel"] == f"D{user}"
                and m["thread_ts"] is None]


def _blueprint(extra: dict[str, Any], prefix: str, server: str) -> dict[str, Any]:
    return {
        "defaults": {"reference": "staging", "ttl": "2d", "max_ttl": "7d",
                     "remind_before": "4h", "last_remind_before": "1h"},
        "references": {"staging": {"releases": {"api": "2.7.3"}}},
        "components": {"api": {}},
        "phases": {"data": {"server": server, "database_prefix": prefix}},
        "retries": {"attempts": 1, "backoff": "1s"},
        "reconcile": {"enabled": False},
        **extra,
    }


async def _bots(api: SlackApi, bot_db_url: str, blueprint: dict[str, Any], *,
                count: int = 1) -> AsyncIterator[list[Bot]]:
    settings = load_settings(
        slack_bot_token="xoxb-lifecycle", slack_signing_secret=SECRET, slack_api_url=api.url,
        slack_app_token=None, database_url=bot_db_url, workers=2, poll_seconds=0.1,
        lease_seconds=5, grace_seconds=5, secret_key="lifecycle-secret-key",
    )
    async with contextlib.AsyncExitStack() as stack:
        bots = []
        for _ in range(count):
            app = build(settings, parse_blueprint(blueprint), timing=FAST_OUTBOX,
                        writer=WebApiWriter(make_web_client(settings)))
            sender = await stack.enter_async_context(served(app, SECRET))
            bots.append(Bot(app, api, sender))
        yield bots


PRICES = {"cost": {"cpu_hour": 0.0, "gib_hour": 0.0, "db_gb_day": 1.5}}


@pytest.fixture
async def bot(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
              store: object) -> AsyncIterator[Bot]:
    del store  # requested for its side effect: the bot's tables start empty
    async for bots in _bots(slack_api, bot_db_url, _blueprint(PRICES, db_prefix, pg_admin_url)):
        yield bots[0]


def _buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def _reminders(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "expires in" in m["text"] and _buttons(m)]


async def test_both_reminders_reach_the_owner_in_the_thread_and_by_direct_message(
    bot: Bot
) -> None:
    env = await bot.create_ready("rem-1")
    bot.at(env.expires_at - timedelta(hours=4, minutes=1))
    tick = await bot.app.scheduler.tick()
    assert tick.reminded == [] and tick.measured == 1  # not yet; its database was measured
    bot.at(env.expires_at - timedelta(hours=3, minutes=59))
    assert (await bot.app.scheduler.tick()).reminded == [env.id]
    assert await bot.app.notifier.flush(20)

    env = await bot.env("rem-1")
    [in_thread] = _reminders(bot.thread(env))
    [by_dm] = _reminders(bot.direct())
    for message in (in_thread, by_dm):
        assert message["text"].startswith(f"<@{OWNER}> `rem-1` expires in 3h59m")
        assert re.search(r"It has cost (<)?\$[0-9.]+ so far · (<)?\$[0-9.]+/day\.",
                         message["text"]), message["text"]
        extend, menu, destroy = _buttons(message)
        stamp = int(env.expires_at.timestamp())  # the expiry it reminds of
        assert (extend["action_id"], extend["value"]) == ("ephem:extend", f"rem-1@{stamp}")
        assert menu["type"] == "static_select" and menu["action_id"] == "ephem:extend-by"
        # 7d would take it past max_ttl (7d from now): only what fits is offered.
        assert [o["value"] for o in menu["options"]] == [f"rem-1:1d@{stamp}",
                                                         f"rem-1:3d@{stamp}"]
        assert (destroy["action_id"], destroy["text"]["text"]) == ("ephem:destroy",
                                                                   "Destroy now")
    assert env.db_bytes is not None and env.db_bytes > 0

    # Ticks in between say nothing more.
    bot.at(env.expires_at - timedelta(hours=1, minutes=1))
    assert ((t := await bot.app.scheduler.tick()).reminded, t.last) == ([], [])
    bot.at(env.expires_at - timedelta(minutes=59))
    assert (await bot.app.scheduler.tick()).last == [env.id]
    assert (await bot.app.scheduler.tick()).last == []
    assert await bot.app.notifier.flush(20)
    for messages in (bot.thread(env), bot.direct()):
        _, last = _reminders(messages)
        assert last["text"].startswith(f"Last reminder: <@{OWNER}> `rem-1` expires in 59m")
        assert [b["action_id"] for b in _buttons(last)] == [
            "ephem:extend", "ephem:extend-by", "ephem:destroy"]
    async with bot.app.store.transaction() as s:
        audit = (await s.execute(select(AuditEvent.details).where(
            AuditEvent.action == "remind"))).scalars().all()
    assert [a["reminder"] for a in audit] == ["first", "last"]

    # The card and `/ephem list` show the cost too.
    await bot.app.notifier.refresh_card(env.id)
    assert await bot.app.notifier.flush(20)
    assert env.thread_ts is not None
    card = json.dumps(bot.api.messages[env.thread_ts]["blocks"])
    assert re.search(r"cost (<)?\$[0-9.]+ so far", card), card
    await bot.slack.command("list", user_id=OWNER, channel_id=CHANNEL)
    [listed] = await bot.api.wait_for(
        "chat.postEphemeral", lambda c: "live environment" in c.params["text"], timeout=20)
    assert re.search(r"\*rem-1\* — ready, .* cost (<)?\$[0-9.]+ so far · (<)?\$[0-9.]+/day",
                     listed.params["text"]), listed.params["text"]
    # And the owner's Home tab.
    await bot.slack.event({"type": "app_home_opened", "user": OWNER, "channel": f"D{OWNER}",
                           "tab": "home", "event_ts": "1.1"}, event_id="EvHomeCost")
    await bot.api.wait_for("views.publish", lambda c: c.params["user_id"] == OWNER, timeout=20)
    home = json.dumps(bot.api.homes[OWNER], ensure_ascii=False)
    assert "rem-1" in home and re.search(r"(<)?\$[0-9.]+ so far · (<)?\$[0-9.]+/day", home), home


async def test_the_extend_menu_extends_by_the_chosen_amount_and_past_the_maximum_is_refused(
    bot: Bot
) -> None:
    env = await bot.create_ready("ext-1")
    bot.at(env.expires_at - timedelta(hours=3))
    await bot.app.scheduler.tick()
    assert await bot.app.notifier.flush(20)
    [dm] = [ts for ts, m in bot.api.messages.items() if m["channel"] == f"D{OWNER}"
            and _buttons(m)]
    [in_thread] = [ts for ts, m in bot.api.messages.items() if m["channel"] == CHANNEL
                   and m["thread_ts"] == env.thread_ts and _buttons(m)]
    _, menu, _ = _buttons(bot.api.messages[dm])
    [three_days] = [o["value"] for o in menu["options"] if o["text"]["text"] == "by 3d"]

    # Extend… by 3d, chosen in the direct message.
    status, _ = await bot.slack.action("ephem:extend-by", value=three_days, selected=True,
                                       user_id=OWNER, channel_id=f"D{OWNER}", message_ts=dm)
    assert status == 200
    await bot.api.wait_for("chat.update", lambda c: c.params["ts"] == dm, timeout=20)
    extended = await bot.env("ext-1")
    assert extended.expires_at == env.expires_at + timedelta(days=3)
    assert extended.reminded_at is None and extended.last_reminded_at is None
    assert not _buttons(bot.api.messages[dm])  # used: the buttons are gone
    assert "extended *ext-1* by 3d" in bot.api.messages[dm]["blocks"][0]["text"]["text"]

    # The thread's copy of the same reminder is out of date now: its Extend changes nothing.
    [extend] = [b for b in _buttons(bot.api.messages[in_thread])
                if b["action_id"] == "ephem:extend"]
    await bot.slack.action("ephem:extend", value=extend["value"], user_id=OWNER,
                           channel_id=CHANNEL, message_ts=in_thread, thread_ts=env.thread_ts)
    [stale] = await bot.api.wait_for(
        "chat.postEphemeral", lambda c: "out of date" in c.params["text"], timeout=20)
    assert stale.params["text"].startswith("That reminder is out of date: *ext-1* was "
                                           "extended since, and now expires in 4d23h")
    assert (await bot.env("ext-1")).expires_at == extended.expires_at

    # 5d is 2d + 3d left + 5d: past the 7 days from now that an environment may live.
    status, _ = await bot.slack.command("extend ext-1 5d", user_id=OWNER, channel_id=CHANNEL)
    assert status == 200
    [refused] = await bot.api.wait_for(
        "chat.postEphemeral", lambda c: "cannot be extended" in c.params["text"], timeout=20)
    assert refused.params["user"] == OWNER
    assert "environments live at most 7d from now" in refused.params["text"]
    assert "Nothing was changed" in refused.params["text"]
    assert (await bot.env("ext-1")).expires_at == extended.expires_at

    # A menu value that is not one of ours gets an answer, not a trace.
    await bot.slack.action("ephem:extend-by", value="ext-1:forever", selected=True,
                           user_id=OWNER, channel_id=CHANNEL)
    [bad] = await bot.api.wait_for(
        "chat.postEphemeral", lambda c: "not a duration" in c.params["text"], timeout=20)
    assert "Traceback" not in bad.params["text"]


async def test_two_schedulers_at_once_send_each_reminder_once(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    del store
    async for bots in _bots(slack_api, bot_db_url,
                            _blueprint({}, db_prefix, pg_admin_url), count=2):
        envs = [await bots[0].create_ready(f"two-{i}", "--data none") for i in range(3)]
        when = max(e.expires_at for e in envs) - timedelta(hours=3)
        for b in bots:
            b.at(when)
        ticks = await asyncio.gather(*(b.app.scheduler.tick() for b in bots),
                                     *(b.app.scheduler.tick() for b in bots))
        assert sorted(e for t in ticks for e in t.reminded) == sorted(e.id for e in envs)
        assert all(await asyncio.gather(*(b.app.notifier.flush(30) for b in bots)))
        for made in envs:
            env = await bots[0].env(made.name)
            assert len(_reminders(bots[0].thread(env))) == 1
        assert len(_reminders(bots[0].direct())) == 3


async def test_a_crash_between_the_decision_and_the_post_still_delivers_exactly_once(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    """Replica A decides and commits, and its sending side is dead before it sends anything
    (its outbox drainer stopped): replica B's drainer delivers the rows, once."""
    del store
    blueprint = _blueprint({}, db_prefix, pg_admin_url)
    async for (a,) in _bots(slack_api, bot_db_url, blueprint):
        env = await a.create_ready("crash-1", "--data none")
        assert await a.app.notifier.flush(20)
        await a.app.notifier.close(timeout=0)  # A's delivering side is gone
        a.at(env.expires_at - timedelta(hours=3))
        assert (await a.app.scheduler.tick()).reminded == [env.id]
        await asyncio.sleep(0.5)
        assert not _reminders(a.thread(await a.env("crash-1")))  # nothing was sent...
        async with a.app.store.transaction() as s:
            waiting = (await s.execute(select(SlackOutbox.kind).where(
                SlackOutbox.env_id == env.id))).scalars().all()
        assert sorted(waiting) == ["direct", "thread"]  # ...and nothing was lost

    # A new process (a new outbox drainer, a new holder) delivers what A decided, once.
    async def delivered(b: Bot, env_id: int) -> None:
        while True:
            async with b.app.store.transaction() as s:
                if (await s.execute(select(SlackOutbox.id).where(
                        SlackOutbox.env_id == env_id))).first() is None:
                    return
            await asyncio.sleep(0.05)

    async for (b,) in _bots(slack_api, bot_db_url, blueprint):
        await asyncio.wait_for(delivered(b, env.id), 20)
        # The decision was made once: another tick, in another process, decides nothing.
        b.at(env.expires_at - timedelta(hours=3))
        assert (await b.app.scheduler.tick()).reminded == []
        env = await b.env("crash-1")
        assert len(_reminders(b.thread(env))) == 1
        assert len(_reminders(b.direct())) == 1


async def test_expiry_destroys_and_says_what_was_removed_and_how_long_it_lived(
    bot: Bot, pg_admin_url: str, db_prefix: str
) -> None:
    env = await bot.create_ready("exp-1")
    now = datetime.now(UTC)
    async with bot.app.store.transaction() as s:  # made two days and an hour ago, expired
        await s.execute(update(Environment).where(Environment.id == env.id).values(
            created_at=now - timedelta(days=2, hours=1), expires_at=now - timedelta(minutes=1)))
    bot.at(now)
    assert (await bot.app.scheduler.tick()).reaped == [env.id]
    assert (await bot.app.scheduler.tick()).reaped == []  # queued once
    await bot.wait_status("exp-1", EnvStatus.DESTROYED)
    assert await bot.app.notifier.flush(20)

    texts = [m["text"] for m in bot.thread(env)]
    assert any(t.startswith("`exp-1` expired after 2d1h") for t in texts), texts
    [end] = [t for t in texts if "expired and was destroyed" in t]
    assert end.startswith(f"<@{OWNER}> `exp-1` expired and was destroyed after living 2d1h")
    assert f"Removed: data (database {db_prefix}exp_1" in end
    conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   f"{db_prefix}exp_1") == 0
    finally:
        await conn.close()
    async with bot.app.store.transaction() as s:
        actions = (await s.execute(select(AuditEvent.action).where(
            AuditEvent.env_id == env.id).order_by(AuditEvent.id))).scalars().all()
    assert actions[-2:] == ["expire", "destroy-succeeded"]


async def test_quotas_per_user_and_per_channel(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    del store
    quotas = {"quotas": {"per_user": 1, "per_channel": 2}}
    async for (bot,) in _bots(slack_api, bot_db_url,
                              _blueprint(quotas, db_prefix, pg_admin_url)):
        await bot.create_ready("q-1", "--data none")
        await bot.slack.command("create q-2 --data none", user_id=OWNER, channel_id=CHANNEL)
        [mine] = await bot.api.wait_for(
            "chat.postEphemeral", lambda c: c.params["text"].startswith("Nothing"), timeout=20)
        assert mine.params["text"].startswith(
            "Nothing was created: you have 1 live environment, the most this project allows "
            "(`quotas.per_user`). Destroy one first:")
        [listed] = [b for b in mine.params["blocks"] if b.get("accessory")]
        assert listed["text"]["text"].startswith("*q-1* — ready, expires in 1d23h")
        assert (listed["accessory"]["action_id"], listed["accessory"]["value"]) == (
            "ephem:destroy", "q-1")

        await bot.create_ready("q-3", "--data none", user=OTHER)
        await bot.slack.command("create q-4 --data none", user_id=THIRD, channel_id=CHANNEL)
        [full] = await bot.api.wait_for(
            "chat.postEphemeral", lambda c: c.params["user"] == THIRD, timeout=20)
        assert full.params["text"].startswith(
            "Nothing was created: this channel has 2 live environments, the most this project "
            "allows (`quotas.per_channel`).")
        async with bot.app.store.transaction() as s:
            assert await repo.live_names(s) == {"q-1", "q-3"}

        # The Destroy button from the refusal frees the place.
        await bot.slack.action("ephem:destroy", value="q-1", user_id=OWNER,
                               channel_id=CHANNEL)
        await bot.wait_status("q-1", EnvStatus.DESTROYED)
        await bot.create_ready("q-2", "--data none")


async def test_a_create_that_would_pass_the_channel_budget_is_refused_saying_by_how_much(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    del store
    budget = {"cost": {"db_gb_day": 2.4, "monthly_channel_budget": 100}}
    async for (bot,) in _bots(slack_api, bot_db_url,
                              _blueprint(budget, db_prefix, pg_admin_url)):
        env = await bot.create_ready("b-1", "--data none")
        # Its database has cost $150 this month: an hour and a half of 1,000 GB
        # (1000 * 2.4 * 1.5 / 24), or, early in a month (what came before is last month's),
        # a bigger database since the month began.
        now = datetime.now(UTC)
        created = max(now - timedelta(hours=1, minutes=30), month_start(now))
        hours = (now - created) / timedelta(hours=1)
        async with bot.app.store.transaction() as s:
            await s.execute(update(Environment).where(Environment.id == env.id).values(
                db_bytes=round(150 * 24 / (2.4 * hours) * 10**9), created_at=created))
        await bot.slack.command("create b-2 --data none", user_id=OWNER, channel_id=CHANNEL)
        [refused] = await bot.api.wait_for(
            "chat.postEphemeral", lambda c: c.params["text"].startswith("Nothing"), timeout=20)
        since = (datetime.now(UTC) - now) / timedelta(hours=1)  # it costs more as we wait
        text = refused.params["text"]
        m = re.fullmatch(
            r"Nothing was created: this channel has spent \$([0-9,]+\.[0-9]{2}) this month, "
            r"and with this environment it would reach \$([0-9,]+\.[0-9]{2}), "
            r"\$([0-9,]+\.[0-9]{2}) over its monthly budget of \$100\.00 "
            r"\(`cost.monthly_channel_budget`\)\. .*", text)
        assert m is not None, text
        spent, reach, over = (float(g.replace(",", "")) for g in m.groups())
        assert 149.99 <= spent <= 150 * (hours + since) / hours + 0.01, text
        assert reach == spent  # b-2 has no quota and no database: it adds nothing
        assert f"{over:.2f}" == f"{reach - 100:.2f}"
        async with bot.app.store.transaction() as s:
            assert await repo.live_names(s) == {"b-1"}
