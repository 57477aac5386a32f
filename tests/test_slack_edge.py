"""The Slack edge under attack, over real HTTP into the real bolt app and the real command
handlers: forged signatures, oversized and malformed bodies, replays, mentions smuggled in user
text. Replies go to a local Slack Web API (`tests/slackapi.py`), state to a real PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.config import load_settings, parse_blueprint
from bot.slack import http as slack_http
from bot.slack import inbound
from bot.slack.bolt import build_bolt_app
from bot.slack.http import EVENTS_PATH, HttpServer
from bot.slack.notifier import Notifier
from bot.slack.writer import WebApiWriter, make_web_client
from bot.store import Store, repo
from bot.store.models import AuditEvent, Environment
from bot.tasks import InFlight
from handlers.commands import Commands
from tests.slackapi import (
    API_APP_ID,
    FAST_OUTBOX,
    TEAM_ID,
    SlackApi,
    SlackSender,
    mention,
    slack_api_fixture,  # noqa: F401 (the fixture)
)

SECRET = "edge-signing-secret"
TOKEN = "xoxb-edge-token"
FORM = "application/x-www-form-urlencoded"
MARKER = "forged-body-marker"
BLUEPRINT = parse_blueprint({"defaults": {"ttl": "1d", "max_ttl": "14d", "data": "none"}})
MAX_BODY = 8 * 1024


@dataclass
class Edge:
    api: SlackApi
    store: Store
    inflight: InFlight
    url: str
    slack: SlackSender
    notifier: Notifier

    async def settle(self) -> None:
        """Every acked request handled, and everything it said delivered to Slack."""
        assert await self.inflight.drain(10)
        assert await self.notifier.flush(10)

    async def raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, \
                session.post(self.url, data=body, headers=headers) as response:
            return response.status, await response.text()

    async def count(self, model: type[object]) -> int:
        async with self.store.transaction() as s:
            return int(await s.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def edge(slack_api: SlackApi, store: Store) -> AsyncIterator[Edge]:
    settings = load_settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET,
                             slack_api_url=slack_api.url, slack_app_token=None)
    inflight = InFlight()
    writer = WebApiWriter(make_web_client(settings))
    notifier = Notifier(store, writer, timing=FAST_OUTBOX)
    app = build_bolt_app(settings=settings, handler=Commands(store=store, blueprint=BLUEPRINT),
                         notifier=notifier, store=store, inflight=inflight)
    server = HttpServer(bolt_app=app, store=store, host="127.0.0.1", port=0,
                        signing_secret=SECRET, max_body=MAX_BODY)
    await server.start()
    url = server.url + EVENTS_PATH
    try:
        yield Edge(slack_api, store, inflight, url, SlackSender(url, SECRET), notifier)
    finally:
        await inflight.drain(5)
        await notifier.close()
        await writer.close()
        await server.stop()


def command_body(text: str, *, user_id: str = "U1", channel_id: str = "C1") -> str:
    return urlencode({
        "token": "legacy", "team_id": TEAM_ID, "channel_id": channel_id, "user_id": user_id,
        "command": "/ephem", "text": text, "api_app_id": API_APP_ID,
        "response_url": "https://hooks.slack.invalid/commands/1", "trigger_id": "1.2.3",
    })


def click_body(action_id: str, value: str, *, action_ts: str, user_id: str = "U1",
               message_ts: str = "1700000000.000001") -> str:
    payload = {
        "type": "block_actions", "team": {"id": TEAM_ID}, "api_app_id": API_APP_ID,
        "user": {"id": user_id, "team_id": TEAM_ID}, "channel": {"id": "C1"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": "C1"},
        "message": {"ts": message_ts, "text": "card"}, "trigger_id": "1.2.3",
        "actions": [{"type": "button", "action_id": action_id, "value": value,
                     "block_id": "b1", "action_ts": action_ts}],
    }
    return urlencode({"payload": json.dumps(payload)})


def signed(body: bytes, *, secret: str = SECRET, ts: int | None = None,
           content_type: str = FORM) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    base = f"v0:{stamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(stamp),
            "X-Slack-Signature": "v0=" + digest}


def assert_quiet_log(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback and no piece of a forged body in anything logged."""
    assert "Traceback" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage()
                                                             for r in caplog.records]
    assert MARKER not in caplog.text


# --------------------------------------------------------------------------- forged requests


def _forgeries() -> list[tuple[str, bytes, dict[str, str]]]:
    now = int(time.time())
    body = command_body(f"create pr-9 --reason {MARKER}", user_id="UFORGED").encode()
    good = signed(body)
    other = signed(body, secret="not-the-secret")
    v1 = good["X-Slack-Signature"].replace("v0=", "v1=")
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("no headers", body, {"Content-Type": FORM}),
        ("no signature", body, {"Content-Type": FORM, "X-Slack-Request-Timestamp": str(now)}),
        ("no timestamp", body, {"Content-Type": FORM,
                                "X-Slack-Signature": good["X-Slack-Signature"]}),
        ("another secret", body, other),
        ("v1 scheme", body, {**good, "X-Slack-Signature": v1}),
        ("upper-case digest", body,
         {**good, "X-Slack-Signature": "v0=" + good["X-Slack-Signature"][3:].upper()}),
        ("truncated digest", body, {**good, "X-Slack-Signature": good["X-Slack-Signature"][:-2]}),
        ("stale", body, signed(body, ts=now - 301)),
        ("from the future", body, signed(body, ts=now + 3600)),  # not 301: time passes
        ("another body", body + b"&x=1", good),
        ("binary body", b"\xff\xfe" + MARKER.encode() + b"\x00", good),
        ("payload=null", b"payload=null", other),
        ("json", json.dumps({"command": "/ephem", "text": MARKER}).encode(),
         {**other, "Content-Type": "application/json"}),
    ]
    for ts in ("abc", "nan", "NaN", "inf", "1e9", "-1", "", " 1", f"{now}.5", "0x10",
               "9" * 40):
        cases.append((f"timestamp {ts!r}", body, {**good, "X-Slack-Request-Timestamp": ts}))
    return cases


async def test_every_forged_request_gets_401_and_touches_nothing(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, body, headers in _forgeries():
        status, text = await edge.raw(body, headers)
        assert (status, text) == (401, slack_http.UNSIGNED), name
    await edge.settle()
    # Not a reply, not even bolt's auth.test: nothing reached Slack or the database.
    assert edge.api.calls == []
    assert await edge.count(Environment) == 0 and await edge.count(AuditEvent) == 0
    assert_quiet_log(caplog)
    refusals = [r for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(refusals) == len(_forgeries())
    assert all(len(r.getMessage()) < 200 for r in refusals)


async def test_a_body_over_the_limit_gets_413_signed_or_not(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    big = command_body("create pr-1 --reason " + MARKER * (MAX_BODY // len(MARKER))).encode()
    assert len(big) > MAX_BODY
    assert await edge.raw(big, signed(big)) == (413, slack_http.TOO_LARGE)
    assert await edge.raw(big, {"Content-Type": FORM}) == (413, slack_http.TOO_LARGE)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: found while reading
        for start in range(0, len(big), 1024):
            yield big[start:start + 1024]

    async with aiohttp.ClientSession() as session, \
            session.post(edge.url, data=chunks(), headers=signed(big)) as response:
        assert (response.status, await response.text()) == (413, slack_http.TOO_LARGE)
    await edge.settle()
    assert edge.api.calls == []
    assert_quiet_log(caplog)


# --------------------------------------------------------------------------- signed, malformed


def _malformed() -> list[tuple[str, bytes, str]]:
    def payload(value: Any) -> bytes:
        return urlencode({"payload": json.dumps(value)}).encode()

    base = {"type": "block_actions", "user": {"id": "U1"}, "channel": {"id": "C1"},
            "actions": [{"action_id": "ephem:extend", "value": "pr-1", "action_ts": "1.2"}]}
    return [
        ("payload=null", b"payload=null", FORM),
        ('payload="x"', b"payload=%22x%22", FORM),
        ("truncated payload", b"payload=%7B%22type%22%3A%22block_act", FORM),
        ("binary", b"\xff\xfe\x00\x01garbage", FORM),
        ("binary json", b"\xff{}", "application/json"),
        ("json command", json.dumps({"command": "/ephem", "user_id": "U1",
                                     "channel_id": "C1", "text": "list"}).encode(),
         "application/json"),
        ("json list", b"[1, 2, 3]", "application/json"),
        ("json null", b"null", "application/json"),
        ("deep json", b"[" * 8000, "application/json"),
        ("no user_id", command_body("list", user_id="").encode(), FORM),
        ("no channel_id", urlencode({"command": "/ephem", "user_id": "U1",
                                     "text": "list"}).encode(), FORM),
        ("NUL in user_id", command_body("list", user_id="U1\x00").encode(), FORM),
        ("repeated field", (command_body("list") + "&user_id=U2").encode(), FORM),
        ("text/plain", command_body("list").encode(), "text/plain"),
        ("empty form", b"", FORM),
        ("no user", payload({**base, "user": None}), FORM),
        ("user is a string", payload({**base, "user": "U1"}), FORM),
        ("actions is a string", payload({**base, "actions": "ephem:extend"}), FORM),
        ("actions is empty", payload({**base, "actions": []}), FORM),
        ("action_id is a number", payload({**base, "actions": [{"action_id": 7}]}), FORM),
        ("no channel", payload({k: v for k, v in base.items() if k != "channel"}), FORM),
        ("surrogate", payload({**base, "actions": [{"action_id": "ephem:extend",
                                                    "value": "\ud800"}]}), FORM),
        ("event without event", json.dumps({"type": "event_callback",
                                            "event_id": "Ev1"}).encode(), "application/json"),
        ("mention without user", json.dumps({
            "type": "event_callback", "event_id": "Ev1",
            "event": {"type": "app_mention", "channel": "C1", "text": "list"}}).encode(),
         "application/json"),
        ("unknown type", json.dumps({"type": "something"}).encode(), "application/json"),
        ("channel_type is a number", json.dumps({
            "type": "event_callback", "event_id": "Ev1",
            "event": {"type": "message", "channel_type": 5, "user": "U1", "channel": "D1",
                      "text": "list"}}).encode(), "application/json"),
    ]


async def test_signed_but_malformed_requests_get_400_without_a_trace(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, body, content_type in _malformed():
        status, text = await edge.raw(body, signed(body, content_type=content_type))
        assert (status, text) == (400, slack_http.MALFORMED), name
    await edge.settle()
    assert edge.api.calls == []
    assert_quiet_log(caplog)


def _unhandled() -> list[tuple[str, bytes]]:
    def payload(value: Any) -> bytes:
        return urlencode({"payload": json.dumps(value)}).encode()

    user = {"id": "U1"}
    return [
        # Bolt reads `view.type` of a submission unchecked while looking for a listener.
        ("submission without view.type", payload({
            "type": "view_submission", "user": user,
            "view": {"id": "V1", "callback_id": MARKER, "state": {"values": {"a": 1}}},
            "unexpected": [1, {"x": None}]})),
        ("submission with a string view", payload({"type": "view_submission", "user": user,
                                                   "view": MARKER})),
        ("a well-formed submission of a modal not Ephem's", payload({
            "type": "view_submission", "user": user,
            "view": {"id": "V2", "type": "modal", "callback_id": "other:" + MARKER}})),
        ("view_closed", payload({"type": "view_closed", "user": user, "view": {}})),
        ("shortcut", payload({"type": "shortcut", "user": user, "callback_id": MARKER})),
        ("workflow step edit", payload({"type": "workflow_step_edit", "user": user,
                                        "workflow_step": MARKER})),
    ]


async def test_an_interaction_without_a_listener_gets_a_constant_404(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, body in _unhandled():
        status, text = await edge.raw(body, signed(body))
        assert (status, text) == (404, slack_http.UNHANDLED), name
    await edge.settle()
    assert edge.api.calls == []
    assert_quiet_log(caplog)


async def test_a_button_value_holding_a_nul_is_answered(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    # The refusal quotes the value: a NUL in it cannot be stored (the outbox) or sent (Slack).
    caplog.set_level(logging.DEBUG)
    body = click_body("ephem:extend", "pr\x00-1", action_ts="1700000600.000100").encode()
    assert (await edge.raw(body, signed(body)))[0] == 200
    [reply] = await edge.api.wait_for("chat.postEphemeral")
    assert "`pr\ufffd-1` is not a valid name" in reply.params["text"]
    await edge.settle()
    assert_quiet_log(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_direct_message_without_a_channel_is_ignored_in_one_line(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"type": "event_callback", "event_id": "EvNoChannel", "event": {
        "type": "message", "channel_type": "im", "user": "U1", "text": "list"}}).encode()
    assert (await edge.raw(body, signed(body, content_type="application/json")))[0] == 200
    await edge.settle()
    assert [c.method for c in edge.api.calls if c.method != "auth.test"] == []
    assert_quiet_log(caplog)
    assert any("the direct message has no channel" in r.getMessage() for r in caplog.records)


async def test_a_command_mentioning_payload_is_read_as_a_command(edge: Edge) -> None:
    # Bolt's own parser reads any form containing "payload" as an interactive payload.
    assert (await edge.slack.command("create pl-1 --reason fix the payload"))[0] == 200
    await edge.settle()
    async with edge.store.transaction() as s:
        env = await repo.find_live_environment(s, "pl-1")
    assert env is not None and env.reason == "fix the payload"


# --------------------------------------------------------------------------- replays


async def test_a_replayed_create_makes_one_environment(edge: Edge) -> None:
    # No name: a generated one each time, so nothing but the replay check stops a second.
    body = command_body("create --reason replayed").encode()
    headers = signed(body)
    assert (await edge.raw(body, headers))[0] == 200
    await edge.settle()
    assert (await edge.raw(body, headers))[0] == 200  # the same bytes, within the window
    await edge.settle()
    assert await edge.count(Environment) == 1
    assert await edge.count(AuditEvent) == 1
    thread_posts = [c for c in edge.api.calls_to("chat.postMessage") if c.params.get("thread_ts")]
    assert len(thread_posts) == 1  # one "Queued", no second answer


async def _expiry(store: Store, name: str) -> Any:
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, name)
        assert env is not None
        return env.expires_at


async def test_a_replayed_extend_and_a_replayed_click_apply_once(edge: Edge) -> None:
    await edge.slack.command("create rp-2")
    await edge.settle()
    start = await _expiry(edge.store, "rp-2")

    body = command_body("extend rp-2 1d").encode()
    headers = signed(body)
    for _ in range(2):
        assert (await edge.raw(body, headers))[0] == 200
        await edge.settle()
    assert await _expiry(edge.store, "rp-2") == start + timedelta(days=1)

    click = click_body("ephem:extend", "rp-2", action_ts="1700000500.000100").encode()
    click_headers = signed(click)
    for _ in range(2):
        assert (await edge.raw(click, click_headers))[0] == 200
        await edge.settle()
    assert await _expiry(edge.store, "rp-2") == start + timedelta(days=2)

    # Another click (its own action_ts) is another request, and applies.
    other = click_body("ephem:extend", "rp-2", action_ts="1700000501.000100").encode()
    assert (await edge.raw(other, signed(other)))[0] == 200
    await edge.settle()
    assert await _expiry(edge.store, "rp-2") == start + timedelta(days=3)


async def test_a_replayed_event_runs_once(edge: Edge) -> None:
    event = mention("create rp-3")
    for _ in range(2):  # no retry header: a copy of the request, not Slack retrying
        assert (await edge.slack.event(event, event_id="EvReplay1"))[0] == 200
        await edge.settle()
    assert await edge.count(Environment) == 1
    assert await edge.count(AuditEvent) == 1


# --------------------------------------------------------------------------- escaping


async def test_a_reason_cannot_notify_a_channel_or_disguise_a_link(edge: Edge) -> None:
    # Slack escapes what a person types (`&lt;`); the parser undoes that; Ephem escapes again.
    reason = "&lt;!channel&gt; please look &lt;https://evil.example|click&gt; &amp; more"
    assert (await edge.slack.command(f'create esc-1 --reason "{reason}"'))[0] == 200
    await edge.settle()
    async with edge.store.transaction() as s:
        env = await repo.find_live_environment(s, "esc-1")
    assert env is not None
    assert env.reason == "<!channel> please look <https://evil.example|click> & more"

    [root] = edge.api.roots("C1")
    [queued] = [m["text"] for m in edge.api.replies(root) if "Queued" in m["text"]]
    assert "<!channel>" not in queued and "<https://evil.example|click>" not in queued
    assert ("&lt;!channel&gt; please look &lt;https://evil.example|click&gt; &amp; more"
            in queued)


async def test_a_refused_name_is_quoted_escaped(edge: Edge) -> None:
    assert (await edge.slack.command("create &lt;!here&gt;"))[0] == 200
    [reply] = await edge.api.wait_for("chat.postEphemeral")
    assert "<!here>" not in reply.params["text"] and "&lt;!here&gt;" in reply.params["text"]


def test_without_a_signing_secret_nothing_is_accepted() -> None:
    # Socket Mode may run without one; the HTTP endpoint then refuses every request.
    body = b"command=%2Fephem"
    headers = signed(body, secret="")
    assert inbound.signature_problem(
        secret="", body=body, timestamp=headers["X-Slack-Request-Timestamp"],
        signature=headers["X-Slack-Signature"], now=time.time(),
    ) == "no signing secret is configured"
