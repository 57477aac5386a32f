"""The writer, the outbox and the notifier against a local Slack Web API and a real PostgreSQL.

Two `Notifier`s on two `Store`s (two connection pools) stand for two replicas: they share the
outbox, its queues and their pace through the database only. The outbox runs at test speed
(`FAST_OUTBOX`: hundredths of a second between retries), so an outage of many retries takes a
second, not a minute. Bounds asserted on time are lower bounds that follow from what Slack
asked (a Retry-After, a pace), never how fast the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import text

from bot import metrics, redaction
from bot.domain import (
    CREATE_ORDER,
    DataMode,
    EnvStatus,
    JobKind,
    PhaseAction,
    PhaseName,
    PhaseStatus,
    ProgressEvent,
)
from bot.ports import Invocation, Reply, Visibility
from bot.slack.notifier import Notifier
from bot.slack.outbox import OutboxTiming
from bot.slack.writer import SlackUnavailable, SlackWriteError, WebApiWriter
from bot.store import Store, repo
from tests.slackapi import FAST_OUTBOX, SlackApi, slack_api_fixture  # noqa: F401 (the fixture)

TOKEN = "xoxb-not-a-real-token-42"
INV = Invocation(user_id="UASKER", channel_id="CASK")
_CLOSE: list[Any] = []


@pytest.fixture(autouse=True)
async def _close_everything() -> AsyncIterator[None]:
    yield
    while _CLOSE:
        await _CLOSE.pop()()


def writer_for(api: SlackApi) -> WebApiWriter:
    writer = WebApiWriter(AsyncWebClient(token=TOKEN, base_url=api.url, retry_handlers=[]))
    _CLOSE.append(writer.close)
    return writer


def notifier_for(api: SlackApi, store: Store, *, timing: OutboxTiming = FAST_OUTBOX,
                 **kw: Any) -> Notifier:
    notifier = Notifier(store, writer_for(api), timing=timing, **kw)
    _CLOSE.append(lambda: notifier.close(timeout=0))
    return notifier


async def replica(bot_db_url: str) -> Store:
    """Another process's connection pool on the same database."""
    other = Store(bot_db_url, pool_size=5)
    _CLOSE.append(other.close)
    return other


async def new_env(store: Store, name: str = "pr-1", *, owner: str = "UOWNER",
                  channel: str = "CENV") -> int:
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name=name, owner_id=owner, channel_id=channel, reference="staging",
            release_set={"api": "1.0"}, data_mode=DataMode.SEED, data_snapshot=None,
            reason=None, expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        return env.id


async def set_status(store: Store, env_id: int, *statuses: EnvStatus) -> None:
    async with store.transaction() as s:
        env = await repo.get_environment(s, env_id)
        for status in statuses:
            await repo.set_status(s, env, status)


def counter(metric: object, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(f"{metric}_total", labels)
    return value or 0.0


def title(message: Mapping[str, Any]) -> str:
    return str(message["blocks"][0]["text"]["text"])


class Secrets:
    """A `CredentialsSource` saying fixed secrets (the runner's real one is tested with the data
    phase and end to end)."""

    def __init__(self, said: Mapping[str, Mapping[str, str]]) -> None:
        self.said = said
        self.asked = 0

    async def credentials(self, env_id: int) -> Mapping[str, Mapping[str, str]]:
        self.asked += 1
        return self.said


async def outbox_dump(store: Store) -> str:
    async with store.transaction() as s:
        dump = await s.scalar(text("SELECT coalesce(string_agg(t::text, ' '), '') "
                                   "FROM slack_outbox t"))
    return str(dump)


# --------------------------------------------------------------------------- the writer


async def test_a_rate_limit_says_when_to_come_back(slack_api: SlackApi) -> None:
    slack_api.fail("chat.postMessage", status=429, retry_after=7)

    with pytest.raises(SlackUnavailable) as caught:
        await writer_for(slack_api).post_message("C1", text="hello")

    assert caught.value.retry_after == 7.0  # what Slack asked for, not a guess
    assert len(slack_api.calls_to("chat.postMessage")) == 1  # one attempt: retrying is not here


@pytest.mark.parametrize(("failure", "reason"), [
    ({"status": 500}, "HTTP 500"),
    ({"status": 503}, "HTTP 503"),
    ({"disconnect": True}, "connection_error"),
    ({"error": "invalid_auth"}, "invalid_auth"),  # a token being replaced
])
async def test_what_may_land_later_is_unavailable(
    slack_api: SlackApi, failure: dict[str, Any], reason: str
) -> None:
    slack_api.fail("chat.update", **failure)

    with pytest.raises(SlackUnavailable, match=reason) as caught:
        await writer_for(slack_api).update_message("C1", "1.1", text="x")
    assert caught.value.retry_after is None


async def test_a_permanent_error_is_refused_not_unavailable(slack_api: SlackApi) -> None:
    slack_api.fail("chat.postMessage", error="channel_not_found")

    with pytest.raises(SlackWriteError, match="channel_not_found") as caught:
        await writer_for(slack_api).post_message("C1", text="x")
    assert not isinstance(caught.value, SlackUnavailable)


async def test_long_messages_are_fitted_to_block_kit_limits(slack_api: SlackApi) -> None:
    section: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000}}
    header: dict[str, Any] = {"type": "header", "text": {"type": "plain_text", "text": "h" * 200}}
    blocks = [header, *[section] * 60]

    ts = await writer_for(slack_api).post_message("C1", text="y" * 50000, blocks=blocks)

    sent = slack_api.messages[ts]  # the stub rejects what Slack would reject
    assert len(sent["blocks"]) == 50
    assert sent["blocks"][-1]["type"] == "context"
    assert "12 more not shown" in sent["blocks"][-1]["elements"][0]["text"]
    assert len(sent["blocks"][0]["text"]["text"]) == 150
    fitted = sent["blocks"][1]["text"]["text"]
    assert len(fitted) == 3000 and fitted.endswith("…")
    assert len(sent["text"]) == 40000 and sent["text"].endswith("…")
    assert len(blocks[1]["text"]["text"]) == 5000  # the caller's blocks are left alone


async def test_blocks_without_text_still_get_a_fallback_text(slack_api: SlackApi) -> None:
    ts = await writer_for(slack_api).post_message("C1", text="", blocks=[
        {"type": "section", "text": {"type": "mrkdwn", "text": "from the blocks"}}])
    assert slack_api.messages[ts]["text"] == "from the blocks"


async def test_every_text_and_block_is_scrubbed_except_a_secret_to_its_reader(
    slack_api: SlackApi
) -> None:
    secret = "s3cr3t-admin-password-9f2"
    redaction.register(secret)
    writer = writer_for(slack_api)
    block = {"type": "section", "text": {"type": "mrkdwn", "text": f"in a block: {secret}"}}

    ts = await writer.post_message("C1", text=f"tail: {secret}", blocks=[block])
    await writer.update_message("C1", ts, text=f"again {secret}")
    await writer.post_ephemeral("C1", "U1", text=f"note {secret}")
    await writer.post_direct("U1", text=f"yours: {secret}", secret=True)

    sent = [json.dumps(c.params) for c in slack_api.calls if c.method != "conversations.open"]
    assert len(sent) == 4
    assert [secret in body for body in sent] == [False, False, False, True]
    assert "***" in sent[0] and "in a block: ***" in sent[0]


async def test_a_response_url_must_be_slacks(slack_api: SlackApi) -> None:
    writer = writer_for(slack_api)

    await writer.respond(slack_api.response_url("k1"), text="answered")
    with pytest.raises(SlackWriteError, match="not a Slack response URL"):
        await writer.respond("https://evil.example/collect", text="answered")

    assert [(r["key"], r["text"], r["response_type"]) for r in slack_api.responses] == [
        ("k1", "answered", "ephemeral")]


async def test_membership_is_read_from_conversations_info(slack_api: SlackApi) -> None:
    slack_api.outside.add("COUT")
    writer = writer_for(slack_api)
    assert await writer.can_post("CIN") is True
    assert await writer.can_post("COUT") is False
    slack_api.fail("conversations.info", status=503)
    assert await writer.can_post("CIN") is None  # unknown: Slack did not say


# --------------------------------------------------------------------------- replies


async def test_replies_go_where_their_visibility_says(slack_api: SlackApi, store: Store) -> None:
    env_id = await new_env(store)
    notifier = notifier_for(slack_api, store)

    await notifier.deliver(INV, [
        Reply("just you"),
        Reply("everyone", Visibility.CHANNEL),
        Reply("in the thread", Visibility.THREAD, env_id=env_id),
        Reply("owner only", Visibility.OWNER, env_id=env_id),
    ])
    assert await notifier.flush(10)

    ephemeral = slack_api.calls_to("chat.postEphemeral")
    assert sorted((c.params["channel"], c.params["user"], c.params["text"]) for c in ephemeral) \
        == [("CASK", "UASKER", "just you"), ("CENV", "UOWNER", "owner only")]
    assert slack_api.roots("CASK") == [
        ts for ts, m in slack_api.messages.items() if m["text"] == "everyone"]
    [root] = slack_api.roots("CENV")
    assert [m["text"] for m in slack_api.replies(root)] == ["in the thread"]
    assert title(slack_api.messages[root]).endswith("pr-1 · queued")
    async with store.transaction() as s:
        assert (await repo.get_environment(s, env_id)).thread_ts == root
    assert await outbox_dump(store) == ""  # everything sent is gone from the outbox


async def test_an_unreachable_ephemeral_goes_through_the_response_url_else_a_dm(
    slack_api: SlackApi, store: Store
) -> None:
    slack_api.outside.add("COUT")
    notifier = notifier_for(slack_api, store)
    asked_there = Invocation(user_id="UASKER", channel_id="COUT",
                             response_url=slack_api.response_url("cmd"))

    await notifier.deliver(asked_there, [Reply("answer one")])
    await notifier.deliver(Invocation(user_id="UASKER", channel_id="COUT"), [Reply("answer two")])
    assert await notifier.flush(10)

    assert [(r["key"], r["text"]) for r in slack_api.responses] == [("cmd", "answer one")]
    [dm] = [m for m in slack_api.messages.values() if m["channel"] == "DUASKER"]
    assert dm["text"] == "answer two"


async def test_a_refused_write_is_dropped_and_logged_without_its_text(
    slack_api: SlackApi, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = notifier_for(slack_api, store)
    slack_api.fail("chat.postMessage", error="invalid_blocks")
    caplog.set_level(logging.INFO)
    before = counter("ephem_slack_outbox_dropped", kind="post", reason="refused")

    await notifier.deliver(INV, [Reply("password: hunter2", Visibility.CHANNEL)])
    assert await notifier.flush(10)

    assert len(slack_api.calls_to("chat.postMessage")) == 1  # not retried: Slack would repeat
    assert "invalid_blocks" in caplog.text
    assert "hunter2" not in caplog.text and TOKEN not in caplog.text
    assert counter("ephem_slack_outbox_dropped", kind="post", reason="refused") == before + 1


# --------------------------------------------------------------------------- the card


async def test_the_card_root_is_posted_once_by_two_replicas(
    slack_api: SlackApi, store: Store, bot_db_url: str
) -> None:
    env_id = await new_env(store)
    slack_api.slow("chat.postMessage", 0.15)  # every sender is inside the race window
    first = notifier_for(slack_api, store)
    second = notifier_for(slack_api, await replica(bot_db_url))

    await asyncio.gather(*(
        notifier.deliver(INV, [Reply(f"reply {i}", Visibility.THREAD, env_id=env_id)])
        for i in range(2) for notifier in (first, second)
    ))
    assert all(await asyncio.gather(first.flush(10), second.flush(10)))

    [root] = slack_api.roots("CENV")
    async with store.transaction() as s:
        assert (await repo.get_environment(s, env_id)).thread_ts == root
    assert sorted(m["text"] for m in slack_api.replies(root)) == [
        "reply 0", "reply 0", "reply 1", "reply 1"]
    assert len(slack_api.messages) == 5  # the card and the four replies, nothing else


async def test_a_burst_of_progress_coalesces_and_the_final_state_lands(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store)
    # Slack's own pace, so that the burst gathers behind the first update.
    notifier = notifier_for(slack_api, store, timing=OutboxTiming(pace=0.3, poll=0.05))
    await notifier.refresh_card(env_id)  # the card exists before the work starts
    assert await notifier.flush(10)
    [ts] = slack_api.roots("CENV")

    events = 0
    async with store.transaction() as s:
        job = await repo.enqueue_job(s, env_id=env_id, kind=JobKind.CREATE, requested_by="U1")
    await set_status(store, env_id, EnvStatus.CREATING)
    for phase in CREATE_ORDER:
        async with store.transaction() as s:
            run = await repo.start_phase_run(s, env_id=env_id, job_id=job.id, phase=phase,
                                             action=PhaseAction.APPLY)
        for step in range(3):
            async with store.transaction() as s:
                (await s.get_one(type(run), run.id)).detail = f"step {step}"
            await notifier.progress(ProgressEvent(env_id, phase, PhaseStatus.RUNNING,
                                                  f"step {step}"))
            events += 1
        async with store.transaction() as s:
            done = await s.get_one(type(run), run.id)
            done.status = PhaseStatus.SUCCEEDED
            done.finished_at = done.started_at + timedelta(seconds=75)
        await notifier.progress(ProgressEvent(env_id, phase, PhaseStatus.SUCCEEDED))
        events += 1
    await set_status(store, env_id, EnvStatus.READY)
    await notifier.progress(ProgressEvent(env_id, None, PhaseStatus.SUCCEEDED))
    events += 1

    assert await notifier.flush(10)

    updates = slack_api.calls_to("chat.update")
    assert events == 13
    assert 1 <= len(updates) < events // 2, f"{len(updates)} updates for {events} events"
    final = slack_api.messages[ts]
    assert title(final).endswith("pr-1 · ready")
    [phases] = [b["text"]["text"] for b in final["blocks"] if b["type"] == "section"
                and b["text"]["text"].lstrip(":").startswith(("white_check", "x", "hour"))][:1]
    assert phases.count("done in 1m") == 3, phases
    assert slack_api.roots("CENV") == [ts]


async def test_an_unchanged_card_is_not_sent_again(slack_api: SlackApi, store: Store) -> None:
    env_id = await new_env(store)
    notifier = notifier_for(slack_api, store)
    await notifier.refresh_card(env_id)
    assert await notifier.flush(10)
    await set_status(store, env_id, EnvStatus.CREATING)

    for _ in range(3):  # the runner's event, a thread reply, a milestone: one change
        await notifier.progress(ProgressEvent(env_id, None, PhaseStatus.RUNNING, "creating"))
        await notifier.deliver(INV, [Reply("a reply", Visibility.THREAD, env_id=env_id)])
        assert await notifier.flush(10)

    [update] = slack_api.calls_to("chat.update")
    assert "pr-1 · creating" in update.params["text"]


async def test_the_last_card_update_wins_across_replicas(
    slack_api: SlackApi, store: Store, bot_db_url: str
) -> None:
    """Each replica reports every change, and Slack is slow to answer updates: the updates that
    land never go back to an older state, and the last one shows the store's final state."""
    env_id = await new_env(store)
    other = await replica(bot_db_url)
    first = notifier_for(slack_api, store)
    second = notifier_for(slack_api, other)
    await first.refresh_card(env_id)
    assert await first.flush(10)
    slack_api.slow("chat.update", 0.1)
    order = [EnvStatus.CREATING, EnvStatus.READY, EnvStatus.DESTROYING, EnvStatus.DESTROYED]

    for status in order:
        await set_status(store, env_id, status)
        for notifier in (first, second):
            await notifier.progress(ProgressEvent(env_id, None, PhaseStatus.RUNNING))
        await asyncio.sleep(0.03)  # a change every now and then, while updates are in flight
    assert all(await asyncio.gather(first.flush(20), second.flush(20)))

    shown = [next(s for s in order if f"pr-1 · {s}" in c.params["text"])
             for c in slack_api.calls_to("chat.update")]
    assert shown and shown[-1] is EnvStatus.DESTROYED
    assert shown == sorted(shown, key=order.index), shown  # never an older state after a newer
    [root] = slack_api.roots("CENV")
    assert title(slack_api.messages[root]).endswith("pr-1 · destroyed")


async def test_milestones_go_in_the_thread_and_the_end_mentions_the_owner(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store)
    notifier = notifier_for(slack_api, store)

    await notifier.progress(ProgressEvent(env_id, PhaseName.DATA, PhaseStatus.SUCCEEDED,
                                          "api: http://pr-1.example", milestone=True))
    await set_status(store, env_id, EnvStatus.CREATING, EnvStatus.READY)
    await notifier.progress(ProgressEvent(env_id, None, PhaseStatus.SUCCEEDED, "pr-1 is ready",
                                          milestone=True))
    assert await notifier.flush(10)

    [root] = slack_api.roots("CENV")
    assert [m["text"] for m in slack_api.replies(root)] == [
        "api: http://pr-1.example", "<@UOWNER> pr-1 is ready"]
    assert title(slack_api.messages[root]).endswith("pr-1 · ready")


# --------------------------------------------------------------------------- Slack away


async def test_an_outage_of_many_retries_loses_nothing(
    slack_api: SlackApi, store: Store
) -> None:
    """Slack answers 503 to everything for far more tries than any fixed attempt count; the
    job's side returns at once, and when Slack is back the card, the thread and the owner's
    credentials all arrive — the credentials never having been stored on the way."""
    secret = "pw-outage-7c1d9e"
    env_id = await new_env(store)
    source = Secrets({"data": {"database_url": f"postgresql://app:{secret}@db/app"}})
    notifier = notifier_for(slack_api, store, credentials=source)
    slack_api.outage(status=503)

    await set_status(store, env_id, EnvStatus.CREATING, EnvStatus.READY)
    await notifier.credentials_ready(env_id, PhaseName.DATA)
    await notifier.progress(ProgressEvent(env_id, None, PhaseStatus.SUCCEEDED, "pr-1 is ready",
                                          milestone=True))
    assert not await notifier.flush(0.5)  # Slack is away; the rows wait
    await slack_api.wait_for("chat.postMessage", count=12, timeout=20)
    assert secret not in await outbox_dump(store)
    slack_api.restore()
    assert await notifier.flush(20)

    [root] = slack_api.roots("CENV")
    assert title(slack_api.messages[root]).endswith("pr-1 · ready")
    assert [m["text"] for m in slack_api.replies(root)] == ["<@UOWNER> pr-1 is ready"]
    [dm] = [m for m in slack_api.messages.values() if m["channel"] == "DUOWNER"]
    assert secret in dm["text"]
    ephemeral = [c for c in slack_api.calls_to("chat.postEphemeral")
                 if secret in c.params["text"]]
    assert ephemeral[-1].params["user"] == "UOWNER"
    assert source.asked >= 2  # derived at each send, never kept


async def test_a_rate_limit_storm_is_waited_out_and_never_given_up(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store)
    notifier = notifier_for(slack_api, store)
    slack_api.outage(2.0, status=429, retry_after=0.3)

    await notifier.deliver(INV, [Reply(f"reply {i}", Visibility.THREAD, env_id=env_id)
                                 for i in range(3)])
    await slack_api.wait_for("chat.postMessage", count=2, timeout=10)
    async with store.transaction() as s:
        waiting = (await s.execute(text(
            "SELECT attempts, last_error FROM slack_outbox ORDER BY position"))).all()
    assert assert_all_rate_limited(waiting)
    assert await notifier.flush(20)

    [root] = slack_api.roots("CENV")
    assert [m["text"] for m in slack_api.replies(root)] == ["reply 0", "reply 1", "reply 2"]
    posts = [c.at for c in slack_api.calls_to("chat.postMessage")]
    storm = [b - a for a, b in itertools.pairwise(posts)][:2]
    assert all(gap >= 0.29 for gap in storm), storm  # back no sooner than Slack said


def assert_all_rate_limited(rows: list[Any]) -> bool:
    """Every waiting row: no attempt counted against it; the one tried was told to wait."""
    assert rows, "nothing was waiting"
    assert all(attempts == 0 for attempts, _ in rows), rows
    assert {error for _, error in rows} == {None, "ratelimited"}, rows
    return True


async def test_credentials_reach_the_owner_by_dm_when_the_ephemeral_cannot(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store, channel="COUT")
    slack_api.outside.add("COUT")
    source = Secrets({"data": {"database_url": "postgresql://app:pw-dm-only@db/app"}})
    notifier = notifier_for(slack_api, store, credentials=source, credentials_by_dm=False)

    await notifier.credentials_ready(env_id, PhaseName.DATA)
    assert await notifier.flush(10)

    [dm] = [m for m in slack_api.messages.values() if m["channel"] == "DUOWNER"]
    assert "pw-dm-only" in dm["text"] and "pr-1" in dm["text"]


async def test_nothing_is_said_for_credentials_that_are_gone(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store)
    notifier = notifier_for(slack_api, store, credentials=Secrets({}))  # destroyed meanwhile

    await notifier.credentials_ready(env_id, PhaseName.DATA)
    assert await notifier.flush(10)

    assert not slack_api.calls_to("chat.postEphemeral")
    assert not slack_api.calls_to("conversations.open")


# --------------------------------------------------------------------------- pace


async def test_two_replicas_keep_one_pace_per_channel(
    slack_api: SlackApi, store: Store, bot_db_url: str
) -> None:
    pace = 0.15
    timing = OutboxTiming(pace=pace, poll=0.05, backoff_base=0.01, backoff_cap=0.05)
    env_ids = [await new_env(store, f"pr-{i}") for i in range(4)]
    first = notifier_for(slack_api, store, timing=timing)
    second = notifier_for(slack_api, await replica(bot_db_url), timing=timing)

    await asyncio.gather(*(
        notifier.deliver(INV, [Reply(f"{env_id}/{n}", Visibility.THREAD, env_id=env_id)
                               for n in range(2)])
        for env_id in env_ids for notifier in (first, second)))
    assert all(await asyncio.gather(first.flush(30), second.flush(30)))

    into = sorted(c.at for c in slack_api.calls if c.params.get("channel") == "CENV")
    assert len(into) == 4 + 4 * 4  # four cards (roots), sixteen replies
    gaps = [b - a for a, b in itertools.pairwise(into)]
    # Each slot opens a pace after the last, in the database's clock. Arrival times at the stub
    # (which shares the test's event loop) add jitter, so allow a stray short gap — two replicas
    # pacing on their own post in pairs: half the gaps would be near zero.
    assert sum(gap < pace / 2 for gap in gaps) <= 2, sorted(gaps)[:4]
    assert into[-1] - into[0] >= 0.9 * pace * (len(into) - 1)


async def test_a_card_goes_before_the_replies_waiting_in_its_channel(
    slack_api: SlackApi, store: Store
) -> None:
    """In a busy channel the card, which shows the state now, does not wait behind every other
    thread's replies (the replies keep their own order)."""
    timing = OutboxTiming(pace=0.1, poll=0.05, backoff_base=0.01, backoff_cap=0.05)
    notifier = notifier_for(slack_api, store, timing=timing)
    busy, other = await new_env(store, "pr-busy"), await new_env(store, "pr-other")
    for env_id in (busy, other):
        await notifier.refresh_card(env_id)
    assert await notifier.flush(10)

    await notifier.deliver(INV, [Reply(f"reply {n}", Visibility.THREAD, env_id=busy)
                                 for n in range(5)])
    await set_status(store, other, EnvStatus.CREATING, EnvStatus.READY)
    await notifier.refresh_card(other)
    assert await notifier.flush(10)

    order = [c.params["text"].split("\n")[0] for c in slack_api.calls
             if c.method in ("chat.postMessage", "chat.update")][2:]
    assert order.index("pr-other · ready") < order.index("reply 4"), order
    assert [t for t in order if t.startswith("reply")] == [f"reply {n}" for n in range(5)]


async def test_credentials_asked_for_again_go_to_the_owner_only(
    slack_api: SlackApi, store: Store
) -> None:
    """A `CREDENTIALS` reply (`/ephem creds`, a button) carries no text: the credentials are
    derived when sent, and go to the owner whoever asked."""
    env_id = await new_env(store)
    source = Secrets({"data": {"database_url": "postgresql://app:pw-again-1@db/app"}})
    notifier = notifier_for(slack_api, store, credentials=source)

    owner_asks = Invocation(user_id="UOWNER", channel_id="CASK")
    await notifier.deliver(owner_asks, [Reply("", Visibility.CREDENTIALS, env_id=env_id)])
    admin_asks = Invocation(user_id="UADMIN", channel_id="CASK")
    await notifier.deliver(admin_asks, [Reply("", Visibility.CREDENTIALS, env_id=env_id)])
    assert await notifier.flush(10)

    sent = [(c.params["channel"], c.params["user"]) for c in slack_api.calls_to(
        "chat.postEphemeral") if "pw-again-1" in c.params["text"]]
    assert sent == [("CASK", "UOWNER"), ("CENV", "UOWNER")]
    assert not slack_api.calls_to("conversations.open")  # asked for: the answer is enough


async def test_a_card_busy_with_progress_does_not_hold_back_its_threads_replies(
    slack_api: SlackApi, store: Store
) -> None:
    """A phase reporting progress faster than the pace asks for its card again before each
    slot; the reply added meanwhile (the thread's "Queued") still goes within a few slots, not
    after the job has ended."""
    timing = OutboxTiming(pace=0.1, poll=0.05, backoff_base=0.01, backoff_cap=0.05)
    notifier = notifier_for(slack_api, store, timing=timing)
    env_id = await new_env(store)
    await notifier.refresh_card(env_id)
    assert await notifier.flush(10)
    async with store.transaction() as s:
        job = await repo.enqueue_job(s, env_id=env_id, kind=JobKind.CREATE, requested_by="U1")
    await set_status(store, env_id, EnvStatus.CREATING)
    async with store.transaction() as s:
        run = await repo.start_phase_run(s, env_id=env_id, job_id=job.id,
                                         phase=CREATE_ORDER[0], action=PhaseAction.APPLY)

    await notifier.deliver(INV, [Reply("queued reply", Visibility.THREAD, env_id=env_id)])
    busy_until = time.time() + 2.0
    step = 0
    while time.time() < busy_until:
        async with store.transaction() as s:
            (await s.get_one(type(run), run.id)).detail = f"step {step}"
        await notifier.progress(ProgressEvent(env_id, CREATE_ORDER[0], PhaseStatus.RUNNING,
                                              f"step {step}"))
        step += 1
        await asyncio.sleep(0.02)
    assert await notifier.flush(10)

    [reply] = [c for c in slack_api.calls_to("chat.postMessage")
               if c.params.get("text") == "queued reply"]
    updates = slack_api.calls_to("chat.update")
    assert len(updates) >= 5  # the card did keep changing meanwhile
    assert reply.at < busy_until - 1.0, (reply.at, busy_until)
