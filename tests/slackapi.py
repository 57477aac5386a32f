"""A local Slack: a Web API stand-in over real HTTP, and a sender of signed Slack requests.

Why: Ephem's tests (and its benchmark) talk to real servers, never to patched clients. `SlackApi`
is an aiohttp server that speaks enough of the Web API for Ephem — it records every call
(method, parsed form/JSON params, headers, arrival time), keeps the messages it was sent (so a
test can read the card as Slack would show it), enforces the Block Kit limits Slack enforces,
and fails on request: the next calls to a method (429 with Retry-After, 5xx, a dropped
connection, an error code), or every call for a while (`outage`: Slack down, or a 429 storm).
Channels listed in `outside` are private channels the bot is not a member of: posting there
answers `not_in_channel`, and `conversations.info` answers `channel_not_found`. It serves
commands' `response_url`s (`response_url(key)`; what arrives is in `responses`), and Socket
Mode: `apps.connections.open` hands out the ws:// URL of its own WebSocket endpoint. A process
that runs it elsewhere (the benchmarks) reads its calls at `GET /_stub/calls` and starts an
outage with `POST /_stub/outage`.

`SlackSender` plays Slack's side of HTTP mode: slash commands, button clicks and events, signed
with the v0 HMAC-SHA256 scheme — or signed wrongly, or with a stale timestamp, on request.

Use the fixture by importing `slack_api_fixture` into a test module (it registers as
`slack_api`) and asking for a `slack_api` argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from bot.cli.app import Ephem
from bot.ports import Invocation, Reply
from bot.slack.bolt import build_bolt_app
from bot.slack.http import HttpServer
from bot.slack.outbox import OutboxTiming

# The outbox at test speed: no channel pace, retries after hundredths of a second.
FAST_OUTBOX = OutboxTiming(pace=0.0, backoff_base=0.01, backoff_cap=0.05, poll=0.05)

BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
_TRIGGERS = itertools.count(1)
TEAM_ID = "T0001"
API_APP_ID = "A0001"


@dataclass(frozen=True)
class Call:
    """One request the stub received (`at`: wall-clock time of arrival)."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = 0.0


@dataclass(frozen=True)
class Failure:
    status: int = 200
    error: str | None = None
    retry_after: float | None = None
    disconnect: bool = False


@dataclass
class SocketPeer:
    """One Socket Mode connection as the stub sees it."""

    ws: web.WebSocketResponse
    received: list[dict[str, Any]] = field(default_factory=list)


class SlackApi:
    """The Slack Web API (and Socket Mode endpoint) on 127.0.0.1, on a free port."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # ts → channel, text, blocks, thread_ts
        self.sockets: list[SocketPeer] = []
        self.socket_silent = True  # new connections neither pong nor talk (after `hello`)
        self.outside: set[str] = set()  # channels the bot is not a member of
        self.responses: list[dict[str, Any]] = []  # bodies posted to response URLs (+ "key")
        self.usergroups: dict[str, list[str]] = {}  # user group id → its members' ids
        self.views: list[dict[str, Any]] = []  # modals opened (views.open), oldest first
        self.homes: dict[str, dict[str, Any]] = {}  # user → the Home tab last published
        self._failures: dict[str, deque[Failure]] = defaultdict(deque)
        self._outage: tuple[Failure, float] | None = None  # (how, until time.monotonic())
        self._latency: dict[str, float] = {}
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk reads some methods by GET
        app.router.add_post("/response/{key}", self._response)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/_stub/calls", self._dump_calls)
        app.router.add_post("/_stub/outage", self._remote_outage)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._stopping.set()
        for peer in self.sockets:
            await peer.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        """Base URL for `SLACK_API_URL` / `AsyncWebClient(base_url=...)`."""
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def socket_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    # ----------------------------------------------------------------------- test helpers

    def fail(self, method: str, *, times: int = 1, status: int = 200, error: str | None = None,
             retry_after: float | None = None, disconnect: bool = False) -> None:
        """The next `times` calls to `method` fail: with HTTP `status` (429 answers
        `ratelimited` with Retry-After), with Slack error code `error`, or by dropping the
        connection without an answer."""
        for _ in range(times):
            self._failures[method].append(Failure(status, error, retry_after, disconnect))

    def forgive(self, method: str) -> None:
        """Drop the failures still waiting for `method`: its next call succeeds."""
        self._failures[method].clear()

    def outage(self, seconds: float = float("inf"), *, status: int = 503,
               retry_after: float | None = None, disconnect: bool = False) -> None:
        """Every call (and every response URL) fails for `seconds` from now: with HTTP
        `status` (429: a rate-limit storm, answering Retry-After `retry_after`), or by dropping
        the connection. `restore()` ends it early."""
        until = time.monotonic() + seconds
        self._outage = (Failure(status, None, retry_after, disconnect), until)

    def restore(self) -> None:
        """End an outage now."""
        self._outage = None

    def response_url(self, key: str = "1") -> str:
        """A response URL served by this stub (what arrives is kept in `responses`)."""
        return f"http://127.0.0.1:{self.port}/response/{key}"

    def slow(self, method: str, seconds: float) -> None:
        """Answer every call to `method` only after `seconds` (to widen race windows)."""
        self._latency[method] = seconds

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def roots(self, channel: str) -> list[str]:
        """The ts of each message posted in `channel` outside any thread, oldest first."""
        return [ts for ts, m in self.messages.items()
                if m["channel"] == channel and not m["thread_ts"]]

    def replies(self, thread_ts: str) -> list[dict[str, Any]]:
        """The messages posted in the thread `thread_ts`, oldest first."""
        return [m for m in self.messages.values() if m["thread_ts"] == thread_ts]

    async def wait_for(
        self, method: str, predicate: Callable[[Call], bool] | None = None, *,
        count: int = 1, timeout: float = 5.0,
    ) -> list[Call]:
        """Wait until `count` calls to `method` (matching `predicate`) were received; return
        them. Failure names what was received instead."""
        def matching() -> list[Call]:
            return [c for c in self.calls_to(method) if predicate is None or predicate(c)]

        if not await self._until(lambda: len(matching()) >= count, timeout):
            seen = [(c.method, {k: v for k, v in c.params.items() if k != "blocks"})
                    for c in self.calls]
            raise AssertionError(
                f"expected {count} call(s) to {method}, got {len(matching())}; calls: {seen}")
        return matching()

    async def wait_for_sockets(
        self, count: int, *, timeout: float = 5.0
    ) -> list[SocketPeer]:
        """Wait until `count` Socket Mode connections were opened."""
        if not await self._until(lambda: len(self.sockets) >= count, timeout):
            raise AssertionError(f"expected {count} socket connection(s), "
                                 f"got {len(self.sockets)}")
        return self.sockets

    async def wait_for_socket_message(
        self, peer: SocketPeer, predicate: Callable[[dict[str, Any]], bool], *,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Wait until the app sent `peer` a message matching `predicate`; return it."""
        if not await self._until(lambda: any(predicate(m) for m in peer.received), timeout):
            raise AssertionError(f"no matching socket message; got {peer.received}")
        return next(m for m in peer.received if predicate(m))

    async def _until(self, condition: Callable[[], bool], timeout: float) -> bool:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(condition)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ----------------------------------------------------------------------- Web API

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            params.update(dict(await request.post()))
        for key in ("blocks", "attachments"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        self.calls.append(Call(method, params, dict(request.headers), time.time()))
        await self._notify()
        if method in self._latency:
            await asyncio.sleep(self._latency[method])

        failure = self._current_outage()
        if failure is None and self._failures[method]:
            failure = self._failures[method].popleft()
        if failure is not None:
            return self._fail(request, failure)

        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"ok": False, "error": "not_authed"})
        answer = getattr(self, "_" + method.replace(".", "_"), None)
        if answer is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response(answer(params))

    def _current_outage(self) -> Failure | None:
        if self._outage is None:
            return None
        failure, until = self._outage
        if time.monotonic() >= until:
            self._outage = None
            return None
        return failure

    @staticmethod
    def _fail(request: web.Request, failure: Failure) -> web.StreamResponse:
        if failure.disconnect:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if failure.status == 429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429,
                headers={"Retry-After": str(failure.retry_after or 1)})
        if failure.status >= 500:
            return web.Response(status=failure.status, text="upstream trouble")
        return web.json_response({"ok": False, "error": failure.error or "unknown"})

    async def _response(self, request: web.Request) -> web.StreamResponse:
        """A response URL: takes a JSON message, as Slack's hooks do."""
        body = await request.json()
        self.calls.append(Call("response_url", body, dict(request.headers), time.time()))
        await self._notify()
        failure = self._current_outage()
        if failure is not None:
            return self._fail(request, failure)
        self.responses.append({**body, "key": request.match_info["key"]})
        await self._notify()
        return web.Response(text="ok")

    async def _dump_calls(self, _: web.Request) -> web.StreamResponse:
        return web.json_response([{"method": c.method, "at": c.at, "params": c.params}
                                  for c in self.calls])

    async def _remote_outage(self, request: web.Request) -> web.StreamResponse:
        how = await request.json()
        seconds = float(how.get("seconds", 60))
        self.outage(seconds, status=int(how.get("status", 503)),
                    retry_after=how.get("retry_after"))
        return web.json_response({"ok": True, "until": time.time() + seconds})

    def _auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://ephem-test.slack.com/", "team": "Ephem Test",
                "user": "ephem", "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID}

    def _chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        if error := self._invalid_message(p) or self._not_member(p):
            return {"ok": False, "error": error}
        n = next(self._ts)
        ts = f"{1700000000 + n}.{n:06d}"
        self.messages[ts] = {"channel": p["channel"], "text": p.get("text", ""),
                             "blocks": p.get("blocks") or [], "thread_ts": p.get("thread_ts")}
        return {"ok": True, "channel": p["channel"], "ts": ts,
                "message": {"text": p.get("text", ""), "ts": ts}}

    def _chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        if error := self._invalid_message(p) or self._not_member(p):
            return {"ok": False, "error": error}
        message = self.messages.get(str(p.get("ts")))
        if message is None or message["channel"] != p["channel"]:
            return {"ok": False, "error": "message_not_found"}
        message.update(text=p.get("text", ""), blocks=p.get("blocks") or [])
        return {"ok": True, "channel": p["channel"], "ts": p["ts"], "text": p.get("text", "")}

    def _chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        if error := (self._invalid_message(p) or (None if p.get("user") else "user_not_found")
                     or self._not_member(p)):
            return {"ok": False, "error": error}
        return {"ok": True, "message_ts": f"{1700000000 + next(self._ts)}.000000"}

    def _not_member(self, p: dict[str, Any]) -> str | None:
        return "not_in_channel" if p.get("channel") in self.outside else None

    def _conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel.startswith("D"):
            return {"ok": True, "channel": {"id": channel, "is_im": True}}
        if channel in self.outside:  # a private channel the bot is not in: invisible to it
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": {"id": channel, "is_channel": True, "is_member": True}}

    def _conversations_open(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "channel": {"id": "D" + str(p.get("users", "")).split(",")[0]}}

    def _usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        group = str(p.get("usergroup", ""))
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        view = self._view(p)
        if not p.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        if not isinstance(view, dict) or view.get("type") != "modal" or \
                len((view.get("title") or {}).get("text") or "") > 24:
            return {"ok": False, "error": "invalid_arguments"}
        self.views.append(view)
        return {"ok": True, "view": {"id": f"V{len(self.views)}", **view}}

    def _views_publish(self, p: dict[str, Any]) -> dict[str, Any]:
        view = self._view(p)
        if not p.get("user_id") or not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if len(view.get("blocks") or []) > 100:
            return {"ok": False, "error": "invalid_blocks"}
        self.homes[str(p["user_id"])] = view
        return {"ok": True, "view": {"id": f"VH{p['user_id']}", **view}}

    @staticmethod
    def _view(p: dict[str, Any]) -> Any:
        view = p.get("view")
        return json.loads(view) if isinstance(view, str) else view

    def _apps_connections_open(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.socket_url}

    @staticmethod
    def _invalid_message(p: dict[str, Any]) -> str | None:
        """The checks Slack makes that a careless client fails."""
        if not p.get("channel"):
            return "channel_not_found"
        blocks = p.get("blocks") or []
        if not p.get("text") and not blocks:
            return "no_text"
        if len(str(p.get("text", ""))) > 40000:
            return "msg_too_long"
        if len(blocks) > 50:
            return "invalid_blocks"
        for block in blocks:
            limit = {"section": 3000, "header": 150}.get(block.get("type"), 3000)
            if len((block.get("text") or {}).get("text", "")) > limit:
                return "invalid_blocks"
        return None

    # ----------------------------------------------------------------------- Socket Mode

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        silent = self.socket_silent
        ws = web.WebSocketResponse(autoping=not silent)
        await ws.prepare(request)
        peer = SocketPeer(ws)
        self.sockets.append(peer)
        await ws.send_json({"type": "hello", "num_connections": len(self.sockets),
                            "connection_info": {"app_id": API_APP_ID}})
        await self._notify()
        if silent:
            # Read nothing, answer nothing: a connection that died without a FIN.
            await self._stopping.wait()
            return ws
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                peer.received.append(json.loads(msg.data))
                await self._notify()
        return ws


@pytest.fixture(name="slack_api")
async def slack_api_fixture() -> AsyncIterator[SlackApi]:
    api = SlackApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


# --------------------------------------------------------------------------- signed requests


def signature(secret: str, timestamp: int, body: str) -> str:
    """Slack's v0 request signature."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackSender:
    """Sends what Slack sends to an app in HTTP mode, signed with `signing_secret`."""

    def __init__(self, url: str, signing_secret: str) -> None:
        self.url = url
        self.signing_secret = signing_secret

    async def post(self, body: str, *, content_type: str, secret: str | None = None,
                   timestamp: int | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, str]:
        """POST `body`, signed with `secret` (default: the right one) at `timestamp`."""
        ts = int(time.time()) if timestamp is None else timestamp
        sent = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": signature(secret or self.signing_secret, ts, body),
            **(headers or {}),
        }
        async with aiohttp.ClientSession() as session, \
                session.post(self.url, data=body.encode(), headers=sent) as response:
            return response.status, await response.text()

    async def command(self, text: str, *, user_id: str = "U1", channel_id: str = "C1",
                      response_url: str = "https://hooks.slack.invalid/commands/1",
                      **kw: Any) -> tuple[int, str]:
        body = urlencode({
            "token": "legacy", "team_id": TEAM_ID, "team_domain": "ephem-test",
            "channel_id": channel_id, "channel_name": "dev", "user_id": user_id,
            "user_name": "ana", "command": "/ephem", "text": text, "api_app_id": API_APP_ID,
            "response_url": response_url,
            # Unique, as Slack's are: two identical commands signed within the same second
            # would otherwise be one request, the second taken for a replay of the first.
            "trigger_id": f"{next(_TRIGGERS)}.2.3",
        })
        return await self.post(body, content_type="application/x-www-form-urlencoded", **kw)

    async def action(self, action_id: str, *, value: str, user_id: str = "U1",
                     channel_id: str = "C1", message_ts: str = "1700000000.000001",
                     thread_ts: str | None = None, selected: bool = False,
                     home: bool = False, **kw: Any) -> tuple[int, str]:
        """A click on a button carrying `value`; with `selected`, the choice of the menu
        option whose value is `value` (a static_select); with `home`, on the App Home tab,
        which has no channel, message or response URL."""
        message = {"ts": message_ts, "text": "card"}
        if thread_ts is not None:  # the button is on a reply in a thread (the reminder)
            message["thread_ts"] = thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions", "team": {"id": TEAM_ID}, "api_app_id": API_APP_ID,
            "user": {"id": user_id, "team_id": TEAM_ID}, "channel": {"id": channel_id},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id},
            "message": message, "trigger_id": "1.2.3",
            "response_url": "https://hooks.slack.invalid/actions/1",
            "actions": [{"type": "static_select", "action_id": action_id,
                         "selected_option": {"value": value,
                                             "text": {"type": "plain_text", "text": value}},
                         "block_id": "b1", "action_ts": str(time.time())}
                        if selected else
                        {"type": "button", "action_id": action_id, "value": value,
                         "block_id": "b1", "action_ts": str(time.time())}],
        }
        if home:
            for key in ("channel", "message", "response_url"):
                del payload[key]
            payload["container"] = {"type": "view", "view_id": f"VH{user_id}"}
            payload["view"] = {"id": f"VH{user_id}", "type": "home"}
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, content_type="application/x-www-form-urlencoded", **kw)

    async def view_submission(self, callback_id: str, *, metadata: str,
                              values: dict[str, str], user_id: str = "U1",
                              view_id: str = "V1", **kw: Any) -> tuple[int, str]:
        """A submitted modal: each of `values` a plain text input (block and action id)."""
        state = {key: {key: {"type": "plain_text_input", "value": value}}
                 for key, value in values.items()}
        payload = {
            "type": "view_submission", "team": {"id": TEAM_ID}, "api_app_id": API_APP_ID,
            "user": {"id": user_id, "team_id": TEAM_ID}, "trigger_id": "1.2.4",
            "view": {"id": view_id, "type": "modal", "callback_id": callback_id,
                     "private_metadata": metadata, "hash": f"h{time.time()}",
                     "state": {"values": state}},
        }
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, content_type="application/x-www-form-urlencoded", **kw)

    async def event(self, event: dict[str, Any], *, event_id: str,
                    retry_num: int | None = None, **kw: Any) -> tuple[int, str]:
        body = json.dumps({
            "token": "legacy", "team_id": TEAM_ID, "api_app_id": API_APP_ID, "event": event,
            "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
        })
        headers = dict(kw.pop("headers", None) or {})
        if retry_num is not None:
            headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.post(body, content_type="application/json", headers=headers, **kw)


def mention(text: str, *, user_id: str = "U1", channel_id: str = "C1",
            ts: str = "1700000100.000100") -> dict[str, Any]:
    """An `app_mention` event: `text` addressed to the bot."""
    return {"type": "app_mention", "user": user_id, "text": f"<@{BOT_USER_ID}> {text}",
            "ts": ts, "channel": channel_id, "event_ts": ts}


# --------------------------------------------------------------------------- a CommandHandler


class RecordingHandler:
    """A `CommandHandler` whose answers the test decides; it records what it was asked.

    `answer(inv)` returns the replies (or raises); `gate`, when set, holds every call until the
    test opens it.
    """

    def __init__(self, answer: Callable[[Invocation], list[Reply]] | None = None) -> None:
        self.answer = answer or (lambda inv: [Reply(f"you said: {inv.text}")])
        self.commands: list[Invocation] = []
        self.actions: list[tuple[Invocation, str, str]] = []
        self.submissions: list[tuple[Invocation, str, str]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def _wait(self) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()

    async def command(self, inv: Invocation) -> list[Reply]:
        self.commands.append(inv)
        await self._wait()
        return self.answer(inv)

    async def action(self, inv: Invocation, *, action_id: str, value: str) -> list[Reply]:
        self.actions.append((inv, action_id, value))
        await self._wait()
        return self.answer(inv)

    async def submission(self, inv: Invocation, *, callback_id: str, metadata: str,
                         values: Mapping[str, str]) -> list[Reply]:
        self.submissions.append((inv, callback_id, metadata))
        await self._wait()
        return self.answer(inv)


@contextlib.asynccontextmanager
async def served(app: Ephem, secret: str) -> AsyncIterator[SlackSender]:
    """`app` behind the real edge — bolt and the signed HTTP server, on a free port — started
    with its scheduler left to the test, and a sender signing with `secret`; stopped after."""
    bolt = build_bolt_app(settings=app.settings, handler=app.commands, notifier=app.notifier,
                          store=app.store, inflight=app.inflight)
    server = HttpServer(bolt_app=bolt, store=app.store, host="127.0.0.1", port=0,
                        signing_secret=secret)
    await server.start()
    await app.start(scheduler=False)
    try:
        yield SlackSender(server.url + "/slack/events", secret)
    finally:
        await server.stop()
        await app.stop()
