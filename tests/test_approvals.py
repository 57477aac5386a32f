"""Approvals of snapshot data, end to end: signed Slack requests over HTTP into the real bolt
app, the real handlers and store on PostgreSQL, the local Slack Web API reading the cards,
modals and Home tabs Ephem sends, and a clock the test moves. Nothing is patched."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.cli.app import Ephem, build
from bot.cli.sample_data import SHOP, make_production
from bot.config import SnapshotConfig, load_settings, parse_blueprint
from bot.domain import ApprovalStatus, DataMode, EnvStatus, JobKind, JobStatus
from bot.errors import ConfigError
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import repo
from bot.store.models import ApprovalRequest, ApprovalVote, AuditEvent, Environment, Job
from handlers.parser import Approve, Deny, Pending, ResetData, Run, parse
from pipelines.data.snapshot import build_snapshot
from tests.slackapi import (  # noqa: F401 (the fixture)
    FAST_OUTBOX,
    Call,
    SlackApi,
    SlackSender,
    served,
    slack_api_fixture,
)

SECRET = "approvals-signing-secret"
OWNER, ADMIN, APP1, APP2, STRANGER, GROUPIE = "UANA", "UADMIN", "UAPP1", "UAPP2", "UBOB", "UGRP"
CHANNEL, APPROVALS = "CENV", "CAPPROVE"
RULES = SHOP / "masking.yaml"
RULES_VERSION = hashlib.sha256(RULES.read_bytes()).hexdigest()[:12]
START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class Clock:
    """The time the bot believes it is; the test moves it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Bot:
    app: Ephem
    api: SlackApi
    slack: SlackSender
    clock: Clock

    async def wait(self, check: Callable[[], Any], timeout: float = 20) -> None:
        async def poll() -> None:
            while not await check():
                await self.app.notifier.flush(1)
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    async def request(self, name: str) -> ApprovalRequest:
        async with self.app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            assert env is not None, f"no live environment {name}"
            return (await s.execute(select(ApprovalRequest).where(
                ApprovalRequest.env_id == env.id).order_by(ApprovalRequest.id.desc()).limit(1))
            ).scalar_one()

    async def job_statuses(self, name: str) -> list[tuple[JobKind, JobStatus]]:
        async with self.app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            assert env is not None
            jobs = (await s.execute(select(Job).where(Job.env_id == env.id).order_by(Job.id))
                    ).scalars().all()
            return [(j.kind, j.status) for j in jobs]

    async def env(self, name: str) -> Environment:
        async with self.app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            assert env is not None
            return env

    async def audits(self, action: str) -> list[AuditEvent]:
        async with self.app.store.transaction() as s:
            return list((await s.execute(select(AuditEvent).where(
                AuditEvent.action == action).order_by(AuditEvent.id))).scalars().all())

    async def ask(self, name: str, *, user: str = OWNER, snapshot: str = "shop",
                  reason: str = "reproduce INC-231") -> ApprovalRequest:
        """Create `name` from `snapshot` and wait for the approval card."""
        before = len(self.api.calls_to("chat.postMessage"))
        status, _ = await self.slack.command(
            f"create {name} --data snapshot:{snapshot} --reason {reason}", user_id=user,
            channel_id=CHANNEL)
        assert status == 200
        await self.api.wait_for("chat.postMessage", lambda c: c.params["channel"] == APPROVALS,
                                count=len(self.approval_cards()) + 1, timeout=20)
        assert len(self.api.calls_to("chat.postMessage")) > before

        async def card_recorded() -> bool:  # its ts is stored once Slack answered the post
            return (await self.request(name)).card_ts is not None
        await self.wait(card_recorded)
        return await self.request(name)

    def approval_cards(self) -> list[dict[str, Any]]:
        return [self.api.messages[ts] for ts in self.api.roots(APPROVALS)]

    def card_of(self, request: ApprovalRequest) -> dict[str, Any]:
        [card] = [c for c in self.approval_cards()
                  if f"#{request.id}:" in json.dumps(c["blocks"])]
        return card

    def thread_texts(self, env_name: str) -> list[str]:
        roots = [ts for ts in self.api.roots(CHANNEL)
                 if f"*{env_name}*" in self.api.messages[ts]["text"]
                 or env_name in json.dumps(self.api.messages[ts]["blocks"])]
        assert roots, f"no thread for {env_name}"
        return [m["text"] for m in self.api.replies(roots[0])]

    async def ephemeral_to(self, user: str, count: int = 1) -> list[Call]:
        return await self.api.wait_for("chat.postEphemeral",
                                       lambda c: c.params["user"] == user, count=count,
                                       timeout=20)


def _buttons(message: dict[str, Any]) -> list[str]:
    return [e["action_id"] for b in message["blocks"] if b["type"] == "actions"
            for e in b["elements"]]


def blueprint_for(prefix: str, server: str, source: str = "postgresql://ro@127.0.0.1/none",
                  **approvals: Any) -> dict[str, Any]:
    return {
        "admins": [ADMIN],
        "defaults": {"reference": "staging"},
        "channels": {"approvals": APPROVALS},
        "approvals": {"users": [APP1, APP2, ADMIN], "expire_after": "2h",
                      "snapshots": {"other": {"usergroup": "SQA"}}, **approvals},
        "references": {"staging": {"releases": {"api": "2.7.3"}}},
        "components": {"api": {}},
        "phases": {"data": {
            "server": server, "database_prefix": prefix,
            "snapshots": {"shop": {"source": source, "rules": str(RULES), "pool": 0},
                          "other": {"source": source, "rules": str(RULES), "pool": 0}},
            "default_snapshot": "shop"}},
        "retries": {"attempts": 1, "backoff": "1s"},
    }


async def _bot(api: SlackApi, bot_db_url: str, raw: dict[str, Any], *, workers: int = 0
               ) -> AsyncIterator[Bot]:
    settings = load_settings(
        slack_bot_token="xoxb-approvals", slack_signing_secret=SECRET, slack_api_url=api.url,
        slack_app_token=None, database_url=bot_db_url, workers=workers, poll_seconds=0.1,
        lease_seconds=5, grace_seconds=5, secret_key="approvals-secret-key",
        scheduler_seconds=0.1,
    )
    api.usergroups["SQA"] = [GROUPIE]
    clock = Clock()
    app = build(settings, parse_blueprint(raw), timing=FAST_OUTBOX, clock=clock,
                writer=WebApiWriter(make_web_client(settings)))
    async with served(app, SECRET) as sender:
        yield Bot(app, api, sender, clock)


@pytest.fixture
async def bot(slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str,
              store: object) -> AsyncIterator[Bot]:
    del store  # requested for its side effect: the bot's tables start empty
    async for b in _bot(slack_api, bot_db_url, blueprint_for(db_prefix, pg_admin_url)):
        yield b


# --------------------------------------------------------------------------- asking


async def test_snapshot_data_needs_a_reason_and_nothing_is_created_without_one(bot: Bot) -> None:
    await bot.slack.command("create ap-0 --data snapshot", user_id=OWNER, channel_id=CHANNEL)
    [reply] = await bot.ephemeral_to(OWNER)
    assert "--reason" in reply.params["text"] and "Nothing was created" in reply.params["text"]
    async with bot.app.store.transaction() as s:
        assert await repo.live_names(s) == set()


async def test_the_card_goes_to_the_approvers_and_the_thread_says_for_whom(bot: Bot) -> None:
    request = await bot.ask("ap-1", reason="<!channel> reproduce INC-231")
    card = bot.card_of(request)
    text = json.dumps(card["blocks"])
    assert f"<@{OWNER}>" in text and "ap-1" in text and "`shop`" in text
    assert RULES_VERSION in text  # the masking rules' version, as a built snapshot records it
    assert "&lt;!channel&gt; reproduce INC-231" in text  # the reason, escaped
    assert _buttons(card) == ["ephem:approve", "ephem:deny"]
    assert request.status is ApprovalStatus.PENDING and request.card_ts is not None
    await bot.wait(lambda: _has(bot, "ap-1", "Waiting for approval"))
    waiting = next(t for t in bot.thread_texts("ap-1") if "Waiting for approval" in t)
    assert f"<@{APP1}>" in waiting and f"#{request.id}" in waiting
    assert await bot.job_statuses("ap-1") == [(JobKind.CREATE, JobStatus.AWAITING_APPROVAL)]
    # The environment's own card says what it waits for, until the decision.
    await bot.wait(lambda: _env_card_says(bot, "Waiting for approval"))
    await bot.slack.command(f"approve {request.id}", user_id=APP1, channel_id=CHANNEL)
    await bot.wait(lambda: _env_card_lacks(bot, "Waiting for approval"))
    [asked] = await bot.audits("approval-requested")
    assert asked.details["snapshot"] == "shop" and asked.details["rules_version"] == RULES_VERSION


async def _env_card_says(bot: Bot, fragment: str) -> bool:
    roots = bot.api.roots(CHANNEL)
    return bool(roots) and fragment in json.dumps(bot.api.messages[roots[0]]["blocks"])


async def _env_card_lacks(bot: Bot, fragment: str) -> bool:
    roots = bot.api.roots(CHANNEL)
    return bool(roots) and fragment not in json.dumps(bot.api.messages[roots[0]]["blocks"])


async def _has(bot: Bot, name: str, fragment: str) -> bool:
    try:
        return any(fragment in t for t in bot.thread_texts(name))
    except AssertionError:
        return False


async def test_a_card_the_approvals_channel_refuses_goes_to_the_requesters_channel(
    bot: Bot
) -> None:
    bot.api.outside.add(APPROVALS)  # private, and Ephem was never invited
    await bot.slack.command("create ap-14 --data snapshot --reason check", user_id=OWNER,
                            channel_id=CHANNEL)

    async def posted() -> bool:
        async with bot.app.store.transaction() as s:
            found = (await s.execute(select(ApprovalRequest))).scalar_one_or_none()
            return found is not None and found.card_ts is not None
    await bot.wait(posted)
    request = await bot.request("ap-14")
    assert request.card_channel == CHANNEL
    assert "ephem:approve" in json.dumps(bot.api.messages[request.card_ts or ""]["blocks"])
    await bot.slack.command(f"approve {request.id}", user_id=APP1, channel_id=CHANNEL)
    await bot.wait(lambda: _request_is(bot, request.id, ApprovalStatus.APPROVED))

    async def updated() -> bool:
        return "Approved by" in json.dumps(bot.api.messages[request.card_ts or ""]["blocks"])
    await bot.wait(updated)


# --------------------------------------------------------------------------- who may click


async def test_a_non_approver_is_refused_and_nothing_changes(bot: Bot) -> None:
    request = await bot.ask("ap-2")
    await bot.slack.action("ephem:approve", value=str(request.id), user_id=STRANGER,
                           channel_id=APPROVALS, message_ts=request.card_ts or "")
    [refusal] = await bot.ephemeral_to(STRANGER)
    assert "Only" in refusal.params["text"] and "Nothing was changed" in refusal.params["text"]
    assert (await bot.request("ap-2")).status is ApprovalStatus.PENDING
    assert _buttons(bot.card_of(request)) == ["ephem:approve", "ephem:deny"]
    [refused] = await bot.audits("approval-refused")
    assert refused.actor == STRANGER and refused.details["why"] == "not an approver"


async def test_an_admin_approver_cannot_approve_their_own_request(bot: Bot) -> None:
    request = await bot.ask("ap-3", user=ADMIN)
    await bot.slack.action("ephem:approve", value=str(request.id), user_id=ADMIN,
                           channel_id=APPROVALS, message_ts=request.card_ts or "")
    [refusal] = await bot.ephemeral_to(ADMIN)
    assert "nobody decides their own request" in refusal.params["text"]
    await bot.slack.command(f"approve {request.id}", user_id=ADMIN, channel_id=CHANNEL)
    await bot.ephemeral_to(ADMIN, count=2)
    assert (await bot.request("ap-3")).status is ApprovalStatus.PENDING
    assert await bot.job_statuses("ap-3") == [(JobKind.CREATE, JobStatus.AWAITING_APPROVAL)]


async def test_a_double_click_makes_one_decision(bot: Bot) -> None:
    request = await bot.ask("ap-4")
    clicks = [bot.slack.action("ephem:approve", value=str(request.id), user_id=APP1,
                               channel_id=APPROVALS, message_ts=request.card_ts or "")
              for _ in range(2)]
    assert [status for status, _ in await asyncio.gather(*clicks)] == [200, 200]
    [late] = await bot.ephemeral_to(APP1)
    assert f"already approved by <@{APP1}>" in late.params["text"]
    decided = await bot.request("ap-4")
    assert (decided.status, decided.decided_by) == (ApprovalStatus.APPROVED, APP1)
    assert await bot.job_statuses("ap-4") == [(JobKind.CREATE, JobStatus.QUEUED)]
    assert len(await bot.audits("approve")) == 1
    async with bot.app.store.transaction() as s:
        assert await s.scalar(select(func.count()).select_from(ApprovalVote)) == 1


async def test_two_approvers_at_once_make_exactly_one_decision(bot: Bot) -> None:
    request = await bot.ask("ap-5")
    bot.api.slow("chat.postEphemeral", 0.05)
    statuses = await asyncio.gather(*(
        bot.slack.action("ephem:approve", value=str(request.id), user_id=who,
                         channel_id=APPROVALS, message_ts=request.card_ts or "")
        for who in (APP1, APP2)))
    assert [s for s, _ in statuses] == [200, 200]
    await bot.wait(lambda: _answered(bot, (APP1, APP2)))
    decided = await bot.request("ap-5")
    assert decided.status is ApprovalStatus.APPROVED and decided.decided_by in (APP1, APP2)
    loser = APP2 if decided.decided_by == APP1 else APP1
    [told] = [c for c in bot.api.calls_to("chat.postEphemeral") if c.params["user"] == loser]
    assert f"already approved by <@{decided.decided_by}>" in told.params["text"]
    assert len(await bot.audits("approve")) == 1
    assert await bot.job_statuses("ap-5") == [(JobKind.CREATE, JobStatus.QUEUED)]
    # The card shows the decision in place, without buttons.
    await bot.wait(lambda: _card_says(bot, request, "Approved by"))
    assert _buttons(bot.card_of(request)) == []


async def _answered(bot: Bot, users: tuple[str, ...]) -> bool:
    told = {c.params["user"] for c in bot.api.calls_to("chat.postEphemeral")}
    return bool(told & set(users))


async def _card_says(bot: Bot, request: ApprovalRequest, fragment: str) -> bool:
    return fragment in json.dumps(bot.card_of(request)["blocks"])


async def test_two_approvals_needed_count_once_per_approver(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    del store
    raw = blueprint_for(db_prefix, pg_admin_url, required=2)
    async for bot in _bot(slack_api, bot_db_url, raw):
        await _two_approvals(bot)


async def _two_approvals(bot: Bot) -> None:
    request = await bot.ask("ap-30")
    assert request.required == 2
    await bot.slack.command(f"approve {request.id}", user_id=APP1, channel_id=CHANNEL)
    await bot.wait(lambda: _has(bot, "ap-30", "1 of 2 approvals"))
    await bot.slack.action("ephem:approve", value=str(request.id), user_id=APP1,
                           channel_id=APPROVALS, message_ts=request.card_ts or "")
    [again] = await bot.ephemeral_to(APP1)
    assert "You approved request" in again.params["text"] and "1 of 2" in again.params["text"]
    assert (await bot.request("ap-30")).status is ApprovalStatus.PENDING
    assert await bot.job_statuses("ap-30") == [(JobKind.CREATE, JobStatus.AWAITING_APPROVAL)]
    await bot.wait(lambda: _card_says(bot, request, "1 of 2 so far"))
    await bot.slack.command(f"approve {request.id}", user_id=APP2, channel_id=CHANNEL)
    await bot.wait(lambda: _request_is(bot, request.id, ApprovalStatus.APPROVED))
    await bot.wait(lambda: _card_says(bot, request, f"Approved by <@{APP1}>, <@{APP2}>"))
    assert await bot.job_statuses("ap-30") == [(JobKind.CREATE, JobStatus.QUEUED)]
    assert [a.actor for a in await bot.audits("approval-vote")] == [APP1, APP2]


# --------------------------------------------------------------------------- outcomes


async def test_deny_asks_why_in_a_modal_and_fails_the_request_with_it(bot: Bot) -> None:
    request = await bot.ask("ap-6")
    await bot.slack.action("ephem:deny", value=str(request.id), user_id=APP2,
                           channel_id=APPROVALS, message_ts=request.card_ts or "")
    [opened] = await bot.api.wait_for("views.open", timeout=20)
    assert opened.params["trigger_id"] == "1.2.3"
    view = bot.api.views[0]
    assert view["callback_id"] == "ephem:deny-reason"
    assert view["private_metadata"] == str(request.id)
    assert (await bot.request("ap-6")).status is ApprovalStatus.PENDING  # not until it is sent

    status, _ = await bot.slack.view_submission("ephem:deny-reason", metadata=str(request.id),
                                                values={"reason": "use --data seed <please>"},
                                                user_id=APP2)
    assert status == 200
    await bot.wait(lambda: _has(bot, "ap-6", "denied snapshot data"))
    said = next(t for t in bot.thread_texts("ap-6") if "denied" in t)
    assert f"<@{APP2}>" in said and "use --data seed &lt;please&gt;" in said
    denied = await bot.request("ap-6")
    assert (denied.status, denied.decided_by) == (ApprovalStatus.DENIED, APP2)
    assert await bot.job_statuses("ap-6") == [(JobKind.CREATE, JobStatus.FAILED)]
    assert (await bot.env("ap-6")).status is EnvStatus.FAILED
    await bot.wait(lambda: _card_says(bot, request, "Denied by"))
    assert _buttons(bot.card_of(request)) == []
    [deny] = await bot.audits("deny")
    assert deny.details["reason"] == "use --data seed <please>"

    # A click after the decision says who decided and when.
    await bot.slack.action("ephem:approve", value=str(request.id), user_id=APP1,
                           channel_id=APPROVALS, message_ts=request.card_ts or "")
    [late] = await bot.ephemeral_to(APP1)
    assert f"already denied by <@{APP2}> on <!date^" in late.params["text"]

    # Retry asks the approvers again, with the same reason: a denial is not an approval.
    await bot.slack.action("ephem:retry", value="ap-6", user_id=OWNER, channel_id=CHANNEL)
    await bot.api.wait_for("chat.postMessage", lambda c: c.params["channel"] == APPROVALS,
                           count=2, timeout=20)
    again = await bot.request("ap-6")
    assert again.id != request.id and again.status is ApprovalStatus.PENDING
    assert again.reason == "reproduce INC-231"
    assert (await bot.job_statuses("ap-6"))[-1] == (JobKind.CREATE, JobStatus.AWAITING_APPROVAL)


async def test_an_unanswered_request_expires_and_the_thread_says_so(bot: Bot) -> None:
    request = await bot.ask("ap-7")
    bot.app.scheduler.start()
    await asyncio.sleep(0.3)  # a few beats before its time: nothing happens
    assert (await bot.request("ap-7")).status is ApprovalStatus.PENDING
    bot.clock.now += timedelta(hours=2, seconds=1)
    await bot.wait(lambda: _has(bot, "ap-7", "request expired"))
    assert (await bot.request("ap-7")).status is ApprovalStatus.EXPIRED
    assert await bot.job_statuses("ap-7") == [(JobKind.CREATE, JobStatus.FAILED)]
    assert (await bot.env("ap-7")).status is EnvStatus.FAILED
    await bot.wait(lambda: _card_says(bot, request, "Expired"))
    assert _buttons(bot.card_of(request)) == []
    assert len(await bot.audits("approval-expired")) == 1
    await bot.slack.command(f"approve {request.id}", user_id=APP1, channel_id=CHANNEL)
    [late] = await bot.ephemeral_to(APP1)
    assert "already expired" in late.params["text"]


async def test_approve_deny_and_pending_commands(bot: Bot) -> None:
    first = await bot.ask("ap-8")
    second = await bot.ask("ap-9", reason="load test")
    await bot.slack.command("pending", user_id=APP1, channel_id=CHANNEL)
    [listed] = await bot.ephemeral_to(APP1)
    assert f"#{first.id}" in listed.params["text"] and f"#{second.id}" in listed.params["text"]
    await bot.slack.command("pending", user_id=OWNER, channel_id=CHANNEL)
    [own] = await bot.ephemeral_to(OWNER)
    assert "Nothing waits for your decision" in own.params["text"]
    assert "Your own requests" in own.params["text"] and f"#{first.id}" in own.params["text"]

    await bot.slack.command(f"approve {first.id}", user_id=APP1, channel_id=CHANNEL)
    await bot.slack.command(f"deny #{second.id} not on production data", user_id=APP2,
                            channel_id=CHANNEL)
    await bot.wait(lambda: _has(bot, "ap-9", "not on production data"))
    assert (await bot.request("ap-8")).status is ApprovalStatus.APPROVED
    assert (await bot.request("ap-9")).status is ApprovalStatus.DENIED
    await bot.slack.command("pending", user_id=APP1, channel_id=CHANNEL)
    [_, after] = await bot.ephemeral_to(APP1, count=2)
    assert "Nothing waits for your decision" in after.params["text"]
    await bot.slack.command("approve 999999", user_id=APP1, channel_id=CHANNEL)
    [*_, missing] = await bot.ephemeral_to(APP1, count=3)
    assert "There is no approval request #999999" in missing.params["text"]


async def test_a_user_group_decides_its_snapshot(bot: Bot) -> None:
    request = await bot.ask("ap-10", snapshot="other")
    assert request.usergroup == "SQA" and request.approvers == []
    await bot.slack.command(f"approve {request.id}", user_id=APP1, channel_id=CHANNEL)
    [refused] = await bot.ephemeral_to(APP1)  # listed for every snapshot, but not for this one
    assert "Only a member of <!subteam^SQA>" in refused.params["text"]
    await bot.slack.command(f"approve {request.id}", user_id=GROUPIE, channel_id=CHANNEL)
    await bot.wait(lambda: _has(bot, "ap-10", "approved snapshot data"))
    assert (await bot.request("ap-10")).decided_by == GROUPIE
    assert bot.api.calls_to("usergroups.users.list")[0].params["usergroup"] == "SQA"


async def test_destroy_withdraws_a_waiting_request(bot: Bot) -> None:
    request = await bot.ask("ap-11")
    await bot.slack.command("destroy ap-11", user_id=OWNER, channel_id=CHANNEL)
    await bot.wait(lambda: _card_says(bot, request, "Withdrawn"))
    assert (await bot.request("ap-11")).status is ApprovalStatus.CANCELLED
    assert await bot.job_statuses("ap-11") == [(JobKind.CREATE, JobStatus.CANCELLED),
                                               (JobKind.DESTROY, JobStatus.QUEUED)]


async def test_a_decision_racing_a_destroy_settles_one_way_without_an_error(bot: Bot) -> None:
    for attempt in range(3):
        name = f"ap-race-{attempt}"
        request = await bot.ask(name)
        await asyncio.gather(
            bot.slack.action("ephem:approve", value=str(request.id), user_id=APP1,
                             channel_id=APPROVALS, message_ts=request.card_ts or ""),
            bot.slack.command(f"destroy {name}", user_id=OWNER, channel_id=CHANNEL))
        await bot.app.inflight.drain(10)
        await bot.app.notifier.flush(10)
        async with bot.app.store.transaction() as s:
            settled = await s.get(ApprovalRequest, request.id)
            assert settled is not None
            assert settled.status in (ApprovalStatus.APPROVED, ApprovalStatus.CANCELLED)
            jobs = (await s.execute(select(Job).where(Job.env_id == settled.env_id)
                                    .order_by(Job.id))).scalars().all()
        assert jobs[-1].kind is JobKind.DESTROY
        assert JobStatus.AWAITING_APPROVAL not in {j.status for j in jobs}
    said = json.dumps([c.params for c in bot.api.calls])
    assert "something went wrong" not in said


# --------------------------------------------------------------------------- coverage


async def _ready(bot: Bot, name: str) -> None:
    """The create ran (this bot has no workers): what the runner records when it succeeds."""
    async with bot.app.store.transaction() as s:
        env = await repo.find_live_environment(s, name, for_update=True)
        assert env is not None
        jobs = (await s.execute(select(Job).where(Job.env_id == env.id))).scalars().all()
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                job.status = JobStatus.SUCCEEDED
        await repo.set_status(s, env, EnvStatus.CREATING)
        await repo.set_status(s, env, EnvStatus.READY)


async def test_an_approval_covers_that_environment_snapshot_and_requester(bot: Bot) -> None:
    request = await bot.ask("ap-12")
    await bot.slack.command(f"approve {request.id}", user_id=APP1, channel_id=CHANNEL)
    await bot.wait(lambda: _has(bot, "ap-12", "approved snapshot data"))
    await _ready(bot, "ap-12")

    # The same snapshot, by the same person, within the environment's life: covered.
    await bot.slack.command("reset-data ap-12", user_id=OWNER, channel_id=CHANNEL)
    await bot.wait(lambda: _has(bot, "ap-12", "covered by the approval"))
    assert (await bot.job_statuses("ap-12"))[-1] == (JobKind.RESET_DATA, JobStatus.QUEUED)
    await _ready(bot, "ap-12")

    # Someone else (an admin) asking for it is a changed request: a new approval.
    await bot.slack.command("reset-data ap-12 --reason admin check", user_id=ADMIN,
                            channel_id=CHANNEL)
    await bot.api.wait_for("chat.postMessage", lambda c: c.params["channel"] == APPROVALS,
                           count=2, timeout=20)
    by_admin = await bot.request("ap-12")
    assert by_admin.id != request.id and by_admin.requester_id == ADMIN
    assert (await bot.job_statuses("ap-12"))[-1] == (JobKind.RESET_DATA,
                                                     JobStatus.AWAITING_APPROVAL)
    await bot.slack.command(f"deny {by_admin.id}", user_id=APP1, channel_id=CHANNEL)
    await bot.wait(lambda: _request_is(bot, by_admin.id, ApprovalStatus.DENIED))
    assert (await bot.env("ap-12")).status is EnvStatus.READY  # a denied reset changes nothing

    # A different snapshot needs its own approval, and a reason; the data changes once approved.
    await bot.slack.command("reset-data ap-12 --data snapshot:other", user_id=OWNER,
                            channel_id=CHANNEL)
    [*_, no_reason] = await bot.ephemeral_to(OWNER)
    assert "--reason" in no_reason.params["text"] and "Nothing was reset" in \
        no_reason.params["text"]
    await bot.slack.command("reset-data ap-12 --data snapshot:other --reason schema drift",
                            user_id=OWNER, channel_id=CHANNEL)
    await bot.api.wait_for("chat.postMessage", lambda c: c.params["channel"] == APPROVALS,
                           count=3, timeout=20)
    other = await bot.request("ap-12")
    assert other.snapshot == "other" and other.status is ApprovalStatus.PENDING
    assert (await bot.env("ap-12")).data_snapshot == "shop"
    await bot.slack.command(f"approve {other.id}", user_id=GROUPIE, channel_id=CHANNEL)
    await bot.wait(lambda: _request_is(bot, other.id, ApprovalStatus.APPROVED))
    env = await bot.env("ap-12")
    assert (env.data_mode, env.data_snapshot) == (DataMode.SNAPSHOT, "other")
    assert (await bot.job_statuses("ap-12"))[-1] == (JobKind.RESET_DATA, JobStatus.QUEUED)


async def _request_is(bot: Bot, request_id: int, status: ApprovalStatus) -> bool:
    async with bot.app.store.transaction() as s:
        found = await s.get(ApprovalRequest, request_id)
        return found is not None and found.status is status


# --------------------------------------------------------------------------- App Home


async def test_app_home_is_published_on_open_and_after_a_decision(bot: Bot) -> None:
    request = await bot.ask("ap-13")
    for user, event_id in ((APP1, "EvHome1"), (OWNER, "EvHome2")):
        await bot.slack.event({"type": "app_home_opened", "user": user, "channel": f"D{user}",
                               "tab": "home", "event_ts": "1.1"}, event_id=event_id)
    await bot.api.wait_for("views.publish", lambda c: c.params["user_id"] == APP1, timeout=20)
    await bot.api.wait_for("views.publish", lambda c: c.params["user_id"] == OWNER, timeout=20)
    approver_home = json.dumps(bot.api.homes[APP1])
    assert "Waiting for your decision" in approver_home and f"#{request.id}" in approver_home
    assert "ephem:approve" in approver_home and "ephem:deny" in approver_home
    owner_home = json.dumps(bot.api.homes[OWNER])
    assert "ap-13" in owner_home and "queued" in owner_home
    assert "Waiting for your decision" not in owner_home  # never one's own request

    await bot.app.notifier.flush(5)
    published = len(bot.api.calls_to("views.publish"))
    await bot.slack.command(f"approve {request.id}", user_id=APP2, channel_id=CHANNEL)
    await bot.wait(lambda: _home_lacks(bot, APP1, "Waiting for your decision"))
    assert len(bot.api.calls_to("views.publish")) > published

    # An environment's status change republishes its owner's Home: Extend and Destroy appear.
    await _ready(bot, "ap-13")
    env = await bot.env("ap-13")
    await bot.app.notifier.progress(_job_done(env.id))
    await bot.wait(lambda: _home_says(bot, OWNER, "ephem:extend"))
    assert "ready" in json.dumps(bot.api.homes[OWNER])

    # Its buttons work from the Home tab, which has no channel: Extend answers in the thread,
    # and a refusal reaches its person directly.
    before = env.expires_at
    await bot.app.notifier.flush(5)
    published = len(bot.api.calls_to("views.publish"))
    status, _ = await bot.slack.action("ephem:extend", value="ap-13", user_id=OWNER, home=True)
    assert status == 200
    await bot.wait(lambda: _has(bot, "ap-13", "extended *ap-13*"))
    after = (await bot.env("ap-13")).expires_at
    assert after > before
    # The Home shows the new expiry: an extend republishes it too.
    await bot.wait(lambda: _home_says(bot, OWNER, f"<!date^{int(after.timestamp())}^"))
    assert len(bot.api.calls_to("views.publish")) > published
    status, _ = await bot.slack.action("ephem:destroy", value="ap-13", user_id=STRANGER,
                                       home=True)
    assert status == 200
    [refused] = await bot.ephemeral_to(STRANGER)
    assert refused.params["channel"] == f"D{STRANGER}"
    assert "belongs to <@UANA>" in refused.params["text"]


def _job_done(env_id: int) -> Any:
    from bot.domain import PhaseStatus, ProgressEvent
    return ProgressEvent(env_id, None, PhaseStatus.SUCCEEDED, detail="ready", milestone=True)


async def _home_lacks(bot: Bot, user: str, fragment: str) -> bool:
    return user in bot.api.homes and fragment not in json.dumps(bot.api.homes[user])


async def _home_says(bot: Bot, user: str, fragment: str) -> bool:
    return fragment in json.dumps(bot.api.homes.get(user, {}))


# --------------------------------------------------------------------------- approve → ready


async def test_approve_resumes_the_job_to_ready_and_waiting_holds_no_worker(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, store: object
) -> None:
    """One worker: a request waiting for approval does not keep it from other work."""
    del store
    source = await make_production(pg_admin_url, f"{db_prefix}ap_prod", customers=60)
    snap = SnapshotConfig(source=source.url, rules=RULES, pool=0)
    await build_snapshot(name="shop", config=snap, target_admin_url=pg_admin_url,
                         prefix=db_prefix, key=b"approvals-key")
    raw = blueprint_for(db_prefix, pg_admin_url, source=source.url)
    async for bot in _bot(slack_api, bot_db_url, raw, workers=1):
        await _approve_then_ready(bot, db_prefix)


async def _approve_then_ready(bot: Bot, db_prefix: str) -> None:
    request = await bot.ask("ap-20")
    await bot.slack.command("create ap-21 --data none", user_id=OWNER, channel_id=CHANNEL)
    await bot.wait(lambda: _env_is(bot, "ap-21", EnvStatus.READY))
    assert await bot.job_statuses("ap-20") == [(JobKind.CREATE,
                                                JobStatus.AWAITING_APPROVAL)]
    await bot.slack.action("ephem:approve", value=str(request.id), user_id=APP1,
                           channel_id=APPROVALS, message_ts=request.card_ts or "")
    await bot.wait(lambda: _env_is(bot, "ap-20", EnvStatus.READY), timeout=60)
    # The environment is ready a moment before its job is marked done.
    done = [(JobKind.CREATE, JobStatus.SUCCEEDED)]
    await bot.wait(lambda: _jobs_are(bot, "ap-20", done))
    assert (await bot.env("ap-20")).outputs["data"]["snapshot"].startswith(db_prefix)
    for name in ("ap-20", "ap-21"):
        await bot.slack.command(f"destroy {name}", user_id=OWNER, channel_id=CHANNEL)
    for name in ("ap-20", "ap-21"):
        await bot.wait(lambda n=name: _gone(bot, n), timeout=60)


async def _env_is(bot: Bot, name: str, status: EnvStatus) -> bool:
    async with bot.app.store.transaction() as s:
        env = await repo.find_live_environment(s, name)
        return env is not None and env.status is status


async def _jobs_are(bot: Bot, name: str, want: list[tuple[JobKind, JobStatus]]) -> bool:
    return await bot.job_statuses(name) == want


async def _gone(bot: Bot, name: str) -> bool:
    async with bot.app.store.transaction() as s:
        return await repo.find_live_environment(s, name) is None


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("text", "want"), [
    ("approve 12", Run(Approve(12))),
    ("approve #12", Run(Approve(12))),
    ("deny 3", Run(Deny(3))),
    ("deny 3 not production data", Run(Deny(3, "not production data"))),
    ("pending", Run(Pending())),
    ("reset-data pr-1", Run(ResetData("pr-1"))),
])
def test_the_approval_commands_parse(text: str, want: object) -> None:
    assert parse(text) == want


@pytest.mark.parametrize(("text", "fragment"), [
    ("approve", "needs the number"),
    ("approve twelve", "is not a request number"),
    ("approve 1 2", "is extra"),
    ("pending now", "takes nothing"),
    ("reset-data pr-1 --data snapshot:x --data seed", "given twice"),
])
def test_malformed_approval_commands_get_their_usage(text: str, fragment: str) -> None:
    said = parse(text)
    assert fragment in getattr(said, "text", "") and "Usage" in getattr(said, "text", "")


@pytest.mark.parametrize(("approvals", "fragment"), [
    ({"snapshots": {"shpo": {"users": ["U1"]}}}, "approvals.snapshots.shpo"),
    ({"users": ["U1"], "required": 2}, "`required` is 2 but only 1"),
    ({"users": ["ana"]}, "approvals.users.0: expected a Slack user id"),
    ({"usergroup": "U1"}, "approvals.usergroup: expected a Slack user group id"),
    ({"expire_after": "soon"}, "approvals.expire_after"),
])
def test_a_bad_approvals_section_names_the_key(approvals: dict[str, Any],
                                               fragment: str) -> None:
    raw = blueprint_for("t_", "postgresql://a@b/c")
    raw["approvals"] = approvals
    with pytest.raises(ConfigError) as err:
        parse_blueprint(raw)
    assert fragment in str(err.value)


def test_without_approvers_the_admins_decide_and_without_either_nobody_is_asked() -> None:
    raw = blueprint_for("t_", "postgresql://a@b/c")
    del raw["approvals"]
    with_admins = parse_blueprint(raw)
    rule = with_admins.approvals.rule_for("shop", with_admins.admins)
    assert rule is not None and rule.users == [ADMIN]
    raw["admins"] = []
    nobody = parse_blueprint(raw)
    assert nobody.approvals.rule_for("shop", nobody.admins) is None


def test_doctor_says_who_decides_each_snapshot() -> None:
    from bot.cli.doctor import approval_check

    configured = parse_blueprint(blueprint_for("t_", "postgresql://a@b/c"))
    shop = approval_check(configured, "shop")
    assert shop.ok and f"1 of {APP1}, {APP2}, {ADMIN} decide(s), in {APPROVALS}" in shop.line()
    assert "user group SQA" in approval_check(configured, "other").line()
    raw = blueprint_for("t_", "postgresql://a@b/c")
    del raw["approvals"]
    raw["admins"] = []
    nobody = approval_check(parse_blueprint(raw), "shop")
    assert nobody.ok and "nobody is asked" in nobody.line()
