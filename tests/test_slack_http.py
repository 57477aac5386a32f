"""HTTP mode end to end: signed requests over real HTTP into the real bolt app, replies out to a
local Slack Web API, state in a real PostgreSQL. Only the command handler is a test double."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from bot.config import Settings, load_settings
from bot.domain import DataMode
from bot.ports import Invocation, Reply, Visibility
from bot.slack.bolt import build_bolt_app
from bot.slack.http import EVENTS_PATH, HttpServer
from bot.slack.notifier import Notifier
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import Store, repo
from bot.tasks import InFlight
from tests.slackapi import (
    FAST_OUTBOX,
    RecordingHandler,
    SlackApi,
    SlackSender,
    mention,
    slack_api_fixture,  # noqa: F401 (the fixture)
)

SECRET = "test-signing-secret"
TOKEN = "xoxb-test-token-123"
APOLOGY = re.compile(r"logged as `([0-9a-f]{8})`")


def settings_for(api: SlackApi) -> Settings:
    return load_settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET,
                         slack_api_url=api.url, slack_app_token=None)


@dataclass
class Edge:
    api: SlackApi
    store: Store
    handler: RecordingHandler
    inflight: InFlight
    server: HttpServer
    slack: SlackSender
    notifier: Notifier

    async def settle(self) -> None:
        """Let every acknowledged request finish its work, and its replies reach Slack."""
        assert await self.inflight.drain(5)
        assert await self.notifier.flush(5)


@pytest.fixture
async def edge(slack_api: SlackApi, store: Store) -> AsyncIterator[Edge]:
    settings = settings_for(slack_api)
    handler = RecordingHandler()
    inflight = InFlight()
    writer = WebApiWriter(make_web_client(settings))
    notifier = Notifier(store, writer, timing=FAST_OUTBOX)
    app = build_bolt_app(settings=settings, handler=handler, notifier=notifier, store=store,
                         inflight=inflight)
    server = HttpServer(bolt_app=app, store=store, host="127.0.0.1", port=0,
                        signing_secret=SECRET)
    await server.start()
    try:
        yield Edge(slack_api, store, handler, inflight, server,
                   SlackSender(server.url + EVENTS_PATH, SECRET), notifier)
    finally:
        await inflight.drain(5)
        await notifier.close()
        await writer.close()
        await server.stop()


async def new_env(store: Store) -> int:
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name="pr-7", owner_id="U1", channel_id="C1", reference="staging",
            release_set={}, data_mode=DataMode.SEED, data_snapshot=None, reason=None,
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        return env.id


async def test_a_command_is_acknowledged_before_the_handler_finishes(edge: Edge) -> None:
    edge.handler.gate = asyncio.Event()

    status, body = await edge.slack.command("status pr-7")

    # The answer came back while the handler was still held at the gate: ack came first.
    assert (status, body) == (200, "")
    assert not edge.handler.gate.is_set()
    edge.handler.gate.set()
    [reply] = await edge.api.wait_for("chat.postEphemeral")
    assert reply.params == {"channel": "C1", "user": "U1", "text": "you said: status pr-7"}
    assert reply.headers["Authorization"] == f"Bearer {TOKEN}"
    [inv] = edge.handler.commands
    assert inv == Invocation(user_id="U1", channel_id="C1", text="status pr-7", source="slack",
                             response_url="https://hooks.slack.invalid/commands/1")


async def test_thread_replies_post_the_card_once_and_store_its_ts(edge: Edge) -> None:
    env_id = await new_env(edge.store)
    edge.handler.answer = lambda inv: [
        Reply(f"queued: {inv.text}", Visibility.THREAD, env_id=env_id), Reply("see the thread")]

    assert (await edge.slack.command("create pr-7"))[0] == 200
    assert (await edge.slack.command("status pr-7"))[0] == 200
    await edge.settle()

    [root] = edge.api.roots("C1")
    assert edge.api.messages[root]["blocks"][0]["text"]["text"].endswith("pr-7 · queued")
    assert sorted(m["text"] for m in edge.api.replies(root)) == [
        "queued: create pr-7", "queued: status pr-7"]
    assert len(edge.api.calls_to("chat.postEphemeral")) == 2
    async with edge.store.transaction() as s:
        assert (await repo.get_environment(s, env_id)).thread_ts == root


async def test_a_bad_signature_is_refused(edge: Edge) -> None:
    status, _ = await edge.slack.command("destroy pr-7", secret="not-the-secret")
    assert status == 401
    await edge.settle()
    assert edge.handler.commands == []


async def test_a_stale_timestamp_is_refused(edge: Edge) -> None:
    status, _ = await edge.slack.command("destroy pr-7", timestamp=int(time.time()) - 600)
    assert status == 401
    await edge.settle()
    assert edge.handler.commands == []


async def test_a_failing_handler_gets_an_apology_with_an_id_and_no_trace(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(_: Invocation) -> list[Reply]:
        raise RuntimeError("connection to db:5432 failed, password=hunter2")

    edge.handler.answer = explode
    caplog.set_level(logging.ERROR)

    assert (await edge.slack.command("list"))[0] == 200
    [reply] = await edge.api.wait_for("chat.postEphemeral")

    text = reply.params["text"]
    found = APOLOGY.search(text)
    assert found, text
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert reply.params["user"] == "U1"
    assert found.group(1) in caplog.text  # the id leads to the log line with the trace
    assert "RuntimeError" in caplog.text


async def test_a_retried_mention_is_handled_once(edge: Edge) -> None:
    event = mention("status pr-7")

    first = await edge.slack.event(event, event_id="Ev0001")
    retry = await edge.slack.event(event, event_id="Ev0001", retry_num=1)
    await edge.settle()

    assert first[0] == retry[0] == 200
    [inv] = edge.handler.commands
    assert inv.text == "status pr-7" and inv.source == "mention"
    assert len(edge.api.calls_to("chat.postEphemeral")) == 1


async def test_a_button_click_reaches_the_handler(edge: Edge) -> None:
    status, _ = await edge.slack.action("ephem:retry", value="pr-7", message_ts="1.5")
    await edge.settle()

    assert status == 200
    [(inv, action_id, value)] = edge.handler.actions
    assert (action_id, value) == ("retry", "pr-7")
    assert inv.source == "button" and inv.thread_ts == "1.5" and inv.user_id == "U1"
    assert len(edge.api.calls_to("chat.postEphemeral")) == 1


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_health_readiness_and_metrics(edge: Edge) -> None:
    base = edge.server.url
    assert (await get(base + "/healthz"))[0] == 200
    assert (await get(base + "/readyz"))[0] == 503  # not marked ready yet
    edge.server.mark_ready()
    assert (await get(base + "/readyz"))[0] == 200

    await edge.slack.command("help")
    await edge.settle()
    status, content_type, text = await get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert 'ephem_commands_total{outcome="ok",verb="help"}' in text
    assert "ephem_ack_seconds_count" in text
    assert 'ephem_slack_api_calls_total{method="chat.postEphemeral",outcome="ok"}' in text


async def test_not_ready_while_the_database_does_not_answer(slack_api: SlackApi) -> None:
    unreachable = Store("postgresql://postgres@127.0.0.1:9/nowhere")
    settings = settings_for(slack_api)
    app = build_bolt_app(settings=settings, handler=RecordingHandler(),
                         notifier=Notifier(unreachable, WebApiWriter(make_web_client(settings))),
                         store=unreachable, inflight=InFlight())
    server = HttpServer(bolt_app=app, store=unreachable, host="127.0.0.1", port=0,
                        signing_secret=SECRET)
    await server.start()
    try:
        server.mark_ready()
        status, _, text = await get(server.url + "/readyz")
        assert status == 503 and "database" in text
        assert (await get(server.url + "/healthz"))[0] == 200
    finally:
        await server.stop()
        await unreachable.close()
