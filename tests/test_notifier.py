"""The notifier and the Web API writer against a local Slack Web API and a real PostgreSQL.

Time-dependent logic (Retry-After, backoff, pacing) runs on a fake clock handed to the writer,
so nothing here sleeps for real and no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics
from bot.domain import (
    CREATE_ORDER,
    DataMode,
    EnvStatus,
    JobKind,
    PhaseAction,
    PhaseStatus,
    ProgressEvent,
)
from bot.ports import Invocation, Reply, Visibility
from bot.slack.notifier import Notifier
from bot.slack.writer import SlackWriteError, WebApiWriter
from bot.store import Store, repo
from tests.slackapi import SlackApi, slack_api_fixture  # noqa: F401 (the fixture)

TOKEN = "xoxb-not-a-real-token-42"


class FakeTime:
    """A clock that moves only when the writer sleeps; records each sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


_WRITERS: list[WebApiWriter] = []


@pytest.fixture(autouse=True)
async def _close_writers() -> AsyncIterator[None]:
    yield
    while _WRITERS:
        await _WRITERS.pop().close()


def writer_for(api: SlackApi, fake: FakeTime | None = None, **kw: object) -> WebApiWriter:
    fake = fake or FakeTime()
    client = AsyncWebClient(token=TOKEN, base_url=api.url, retry_handlers=[])
    writer = WebApiWriter(client, clock=fake.clock, sleep=fake.sleep, **kw)  # type: ignore[arg-type]
    _WRITERS.append(writer)
    return writer


async def new_env(store: Store, name: str = "pr-1", *, owner: str = "UOWNER",
                  channel: str = "CENV") -> int:
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name=name, owner_id=owner, channel_id=channel, reference="staging",
            release_set={"api": "1.0"}, data_mode=DataMode.SEED, data_snapshot=None,
            reason=None, expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        return env.id


def counter(metric: object, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(f"{metric}_total", labels)
    return value or 0.0


INV = Invocation(user_id="UASKER", channel_id="CASK")


# --------------------------------------------------------------------------- the writer


async def test_rate_limited_call_is_retried_after_retry_after(slack_api: SlackApi) -> None:
    fake = FakeTime()
    writer = writer_for(slack_api, fake)
    slack_api.fail("chat.postMessage", status=429, retry_after=2)
    before = counter("ephem_slack_api_retries", method="chat.postMessage", reason="ratelimited")

    ts = await writer.post_message("C1", text="hello")

    assert len(slack_api.calls_to("chat.postMessage")) == 2
    assert slack_api.messages[ts]["text"] == "hello"
    assert fake.slept == [2.0]  # what Slack asked for, not a guess
    after = counter("ephem_slack_api_retries", method="chat.postMessage", reason="ratelimited")
    assert after == before + 1


async def test_server_errors_are_retried_with_growing_capped_backoff(slack_api: SlackApi) -> None:
    fake = FakeTime()
    writer = writer_for(slack_api, fake, backoff_base=1.0, backoff_cap=3.0, max_attempts=5)
    slack_api.fail("chat.update", status=500, times=3)
    ts = await writer.post_message("C1", text="v1")
    fake.slept.clear()
    fake.now += 10  # past the pacing interval

    await writer.update_message("C1", ts, text="v2")

    assert len(slack_api.calls_to("chat.update")) == 4
    assert slack_api.messages[ts]["text"] == "v2"
    ceilings = [1.0, 2.0, 3.0]  # base·2^n, capped
    assert len(fake.slept) == 3
    for slept, ceiling in zip(fake.slept, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling


async def test_a_dropped_connection_is_retried(slack_api: SlackApi) -> None:
    writer = writer_for(slack_api)
    slack_api.fail("chat.postEphemeral", disconnect=True)

    await writer.post_ephemeral("C1", "U1", text="only you")

    assert len(slack_api.calls_to("chat.postEphemeral")) == 2


async def test_attempts_are_bounded(slack_api: SlackApi) -> None:
    writer = writer_for(slack_api, max_attempts=3)
    slack_api.fail("chat.postMessage", status=503, times=10)

    with pytest.raises(SlackWriteError, match="gave up after 3 attempts"):
        await writer.post_message("C1", text="x")
    assert len(slack_api.calls_to("chat.postMessage")) == 3


async def test_a_permanent_error_is_not_retried(slack_api: SlackApi) -> None:
    writer = writer_for(slack_api)
    slack_api.fail("chat.postMessage", error="channel_not_found")

    with pytest.raises(SlackWriteError, match="channel_not_found"):
        await writer.post_message("C1", text="x")
    assert len(slack_api.calls_to("chat.postMessage")) == 1


async def test_posting_is_paced_per_channel(slack_api: SlackApi) -> None:
    fake = FakeTime()
    writer = writer_for(slack_api, fake, min_interval=1.0)

    ts = await writer.post_message("C1", text="1")
    await writer.update_message("C1", ts, text="1 edited")  # an update counts
    await writer.post_message("C2", text="elsewhere")  # another channel does not wait
    await writer.post_message("C1", text="2")
    await writer.post_ephemeral("C1", "U1", text="answers are not paced")

    assert fake.slept == [1.0, 1.0]
    assert [c.params["text"] for c in slack_api.calls] == [
        "1", "1 edited", "elsewhere", "2", "answers are not paced"]


async def test_long_messages_are_fitted_to_block_kit_limits(slack_api: SlackApi) -> None:
    writer = writer_for(slack_api)
    section: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000}}
    header: dict[str, Any] = {"type": "header", "text": {"type": "plain_text", "text": "h" * 200}}
    blocks = [header, *[section] * 60]

    ts = await writer.post_message("C1", text="y" * 50000, blocks=blocks)

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
    writer = writer_for(slack_api)
    ts = await writer.post_message("C1", text="", blocks=[
        {"type": "section", "text": {"type": "mrkdwn", "text": "from the blocks"}}])
    assert slack_api.messages[ts]["text"] == "from the blocks"


# --------------------------------------------------------------------------- the notifier


async def test_replies_go_where_their_visibility_says(slack_api: SlackApi, store: Store) -> None:
    env_id = await new_env(store)
    notifier = Notifier(store, writer_for(slack_api), coalesce_seconds=0.01)

    await notifier.deliver(INV, [
        Reply("just you"),
        Reply("everyone", Visibility.CHANNEL),
        Reply("in the thread", Visibility.THREAD, env_id=env_id),
        Reply("owner only", Visibility.OWNER, env_id=env_id),
    ])
    await notifier.flush()

    ephemeral = slack_api.calls_to("chat.postEphemeral")
    assert [(c.params["channel"], c.params["user"], c.params["text"]) for c in ephemeral] == [
        ("CASK", "UASKER", "just you"), ("CENV", "UOWNER", "owner only")]
    assert slack_api.roots("CASK") == [
        ts for ts, m in slack_api.messages.items() if m["text"] == "everyone"]
    [root] = slack_api.roots("CENV")
    assert [m["text"] for m in slack_api.replies(root)] == ["in the thread"]
    assert slack_api.messages[root]["blocks"][0]["type"] == "header"
    async with store.transaction() as s:
        assert (await repo.get_environment(s, env_id)).thread_ts == root


async def test_card_root_is_posted_once_under_concurrent_deliveries(
    slack_api: SlackApi, store: Store, bot_db_url: str
) -> None:
    env_id = await new_env(store)
    slack_api.slow("chat.postMessage", 0.15)  # every caller is inside the race window
    other_process = Store(bot_db_url, pool_size=5)
    try:
        first = Notifier(store, writer_for(slack_api, min_interval=0), coalesce_seconds=0.01)
        second = Notifier(other_process, writer_for(slack_api, min_interval=0),
                          coalesce_seconds=0.01)
        await asyncio.gather(*(
            notifier.deliver(INV, [Reply(f"reply {i}", Visibility.THREAD, env_id=env_id)])
            for i in range(2) for notifier in (first, second)
        ))
        await asyncio.gather(first.flush(), second.flush())
    finally:
        await other_process.close()

    [root] = slack_api.roots("CENV")
    async with store.transaction() as s:
        assert (await repo.get_environment(s, env_id)).thread_ts == root
    assert len(slack_api.replies(root)) == 4
    assert len(slack_api.messages) == 5  # the card and the four replies, nothing else


async def test_a_burst_of_progress_coalesces_and_the_final_state_lands(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store)
    notifier = Notifier(store, writer_for(slack_api, min_interval=0), coalesce_seconds=0.3)
    await notifier.refresh_card(env_id)  # the card exists before the work starts
    [ts] = slack_api.roots("CENV")

    events = 0
    async with store.transaction() as s:
        job = await repo.enqueue_job(s, env_id=env_id, kind=JobKind.CREATE, requested_by="U1")
        await repo.set_status(s, await repo.get_environment(s, env_id), EnvStatus.CREATING)
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
    async with store.transaction() as s:
        await repo.set_status(s, await repo.get_environment(s, env_id), EnvStatus.READY)
    await notifier.progress(ProgressEvent(env_id, None, PhaseStatus.SUCCEEDED))
    events += 1

    await notifier.flush()

    updates = slack_api.calls_to("chat.update")
    assert events == 13
    assert 1 <= len(updates) <= 3, f"{len(updates)} updates for {events} events"
    final = slack_api.messages[ts]
    assert final["blocks"][0]["text"]["text"].endswith("pr-1 · ready")
    [phases] = [b["text"]["text"] for b in final["blocks"] if b["type"] == "section"]
    assert phases.count("done in 1m") == 3, phases
    assert "pr-1 · ready" in final["text"]
    assert slack_api.roots("CENV") == [ts]


async def test_a_milestone_is_posted_in_the_thread(slack_api: SlackApi, store: Store) -> None:
    env_id = await new_env(store)
    notifier = Notifier(store, writer_for(slack_api, min_interval=0), coalesce_seconds=0.01)

    await notifier.progress(ProgressEvent(env_id, CREATE_ORDER[0], PhaseStatus.SUCCEEDED,
                                          "Infrastructure is up.", milestone=True))
    await notifier.flush()

    [root] = slack_api.roots("CENV")
    assert [m["text"] for m in slack_api.replies(root)] == ["Infrastructure is up."]


async def test_a_failed_write_is_logged_without_secrets_and_not_raised(
    slack_api: SlackApi, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    env_id = await new_env(store)
    notifier = Notifier(store, writer_for(slack_api, max_attempts=2))
    slack_api.fail("chat.postEphemeral", status=500, times=5)
    caplog.set_level(logging.INFO)

    await notifier.to_owner(env_id, "password: hunter2")  # does not raise

    assert len(slack_api.calls_to("chat.postEphemeral")) == 2
    assert "could not write to the owner" in caplog.text
    assert "chat.postEphemeral" in caplog.text
    assert "hunter2" not in caplog.text
    assert TOKEN not in caplog.text


async def test_an_unreachable_ephemeral_becomes_a_direct_message(
    slack_api: SlackApi, store: Store
) -> None:
    env_id = await new_env(store)
    notifier = Notifier(store, writer_for(slack_api))
    slack_api.fail("chat.postEphemeral", error="not_in_channel")

    await notifier.to_owner(env_id, "your credentials")

    [opened] = slack_api.calls_to("conversations.open")
    assert opened.params["users"] == "UOWNER"
    [dm] = slack_api.calls_to("chat.postMessage")
    assert dm.params["channel"] == "DUOWNER" and dm.params["text"] == "your credentials"
