"""Socket Mode against a local WebSocket server handed out by the Web API stand-in's
`apps.connections.open`: commands arrive and are acked over the socket, and a socket that goes
silent is replaced by the watchdog."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from bot.config import load_settings
from bot.slack.bolt import build_bolt_app
from bot.slack.notifier import Notifier
from bot.slack.socket_mode import SocketMode
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import Store
from bot.tasks import InFlight
from tests.slackapi import (
    FAST_OUTBOX,
    TEAM_ID,
    RecordingHandler,
    SlackApi,
    slack_api_fixture,  # noqa: F401 (the fixture)
)

APP_TOKEN = "xapp-1-test-app-token"

@pytest.fixture
async def socket_mode(
    slack_api: SlackApi, store: Store
) -> AsyncIterator[Callable[..., SocketMode]]:
    """A factory for a started-on-demand SocketMode; everything it made is stopped after."""
    settings = load_settings(slack_bot_token="xoxb-test", slack_signing_secret="",
                             slack_app_token=APP_TOKEN, slack_api_url=slack_api.url)
    inflight = InFlight()
    writer = WebApiWriter(make_web_client(settings))
    notifier = Notifier(store, writer, timing=FAST_OUTBOX)
    made: list[SocketMode] = []

    def make(handler: RecordingHandler, **kw: float) -> SocketMode:
        app = build_bolt_app(settings=settings, handler=handler, notifier=notifier, store=store,
                             inflight=inflight)
        made.append(SocketMode(bolt_app=app, app_token=APP_TOKEN, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for sm in made:
            await sm.stop()
        await inflight.drain(5)
        await notifier.close()
        await writer.close()


async def test_a_command_arrives_and_is_acked_over_the_socket(
    slack_api: SlackApi, socket_mode: Callable[..., SocketMode]
) -> None:
    slack_api.socket_silent = False
    handler = RecordingHandler()
    sm = socket_mode(handler, ping_interval=30, silence_seconds=60)
    await sm.start()
    [peer] = await slack_api.wait_for_sockets(1)

    await peer.ws.send_json({
        "envelope_id": "env-1", "type": "slash_commands", "accepts_response_payload": True,
        "payload": {"team_id": TEAM_ID, "channel_id": "C1", "user_id": "U1",
                    "command": "/ephem", "text": "list", "api_app_id": "A0001"},
    })

    ack = await slack_api.wait_for_socket_message(peer, lambda m: m.get("envelope_id") == "env-1")
    assert not ack.get("payload")  # an empty ack, as for HTTP
    [reply] = await slack_api.wait_for("chat.postEphemeral")
    assert reply.params["text"] == "you said: list"
    assert [inv.source for inv in handler.commands] == ["slack"]
    [opened] = slack_api.calls_to("apps.connections.open")
    assert opened.headers["Authorization"] == f"Bearer {APP_TOKEN}"


async def test_a_silent_socket_is_replaced_by_a_new_connection(
    slack_api: SlackApi, socket_mode: Callable[..., SocketMode]
) -> None:
    slack_api.socket_silent = True  # after `hello`: no messages, no pongs, no close frame
    # slack_sdk's own monitor acts after 4 ping intervals (2 minutes here); the watchdog after
    # a third of a second of silence. A new connection within the test is the watchdog's.
    sm = socket_mode(RecordingHandler(), ping_interval=30, silence_seconds=0.3)
    await sm.start()
    first = sm.client.current_session
    assert first is not None

    await slack_api.wait_for_sockets(2)

    assert len(slack_api.calls_to("apps.connections.open")) >= 2
    assert sm.reconnects >= 1
    assert first.closed  # the dead connection was dropped, not left open beside the new one
    assert sm.client.current_session is not first


async def test_a_malformed_request_over_the_socket_is_acked_and_logged_in_one_line(
    slack_api: SlackApi, socket_mode: Callable[..., SocketMode],
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack_api.socket_silent = False
    handler = RecordingHandler()
    sm = socket_mode(handler, ping_interval=30, silence_seconds=60)
    await sm.start()
    [peer] = await slack_api.wait_for_sockets(1)

    await peer.ws.send_json({  # a user id that is a number, no channel: nobody to answer
        "envelope_id": "env-bad", "type": "slash_commands", "accepts_response_payload": True,
        "payload": {"team_id": TEAM_ID, "user_id": 7, "command": "/ephem", "text": "list"},
    })
    await peer.ws.send_json({
        "envelope_id": "env-good", "type": "slash_commands", "accepts_response_payload": True,
        "payload": {"team_id": TEAM_ID, "channel_id": "C1", "user_id": "U1",
                    "command": "/ephem", "text": "status pr-1", "api_app_id": "A0001"},
    })

    for envelope in ("env-bad", "env-good"):
        await slack_api.wait_for_socket_message(peer,
                                                lambda m, e=envelope: m.get("envelope_id") == e)
    [reply] = await slack_api.wait_for("chat.postEphemeral")
    assert reply.params["text"] == "you said: status pr-1"
    assert [inv.text for inv in handler.commands] == ["status pr-1"]
    assert "ignored a request Ephem cannot read" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
