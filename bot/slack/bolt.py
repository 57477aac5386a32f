"""The slack-bolt app: what Ephem listens to, and the order in which it answers.

Why: Slack gives an app 3 seconds to acknowledge a request and retries events it thinks were
lost. So every listener here acks first — before touching the database or the handlers — and
then hands the work to `InFlight`, which the process drains on shutdown so an acknowledged
request is never dropped. The work itself is always the same three steps: ask the
`CommandHandler` (from `bot.ports`; the real one lives in `handlers/`), turn an unexpected
exception into a logged error id and a short apology, and give the replies to the notifier.
Every request is remembered (`slack_requests_seen`, for as long as a copy could still be
accepted): a command by its signature and timestamp, a click by its `action_ts`, user and
message, a mention by Slack's event id. A copy — a replayed capture, or Slack retrying an event —
is acknowledged and does nothing, whichever replica it reaches.

Signatures are checked before bolt, on the raw body, by `bot.slack.http`; bolt's own check
(`AsyncRequestVerification`, which logs the whole body of a badly signed request) is off. Socket
Mode has no signatures: the connection itself is authenticated.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.error import BoltUnhandledRequestError
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.request.async_request import AsyncBoltRequest

from bot import metrics
from bot.config import Settings
from bot.errors import ConfigError
from bot.ports import CommandHandler, Invocation, Reply
from bot.slack import inbound, messages
from bot.slack.blocks import ACTION_PREFIX
from bot.slack.notifier import Notifier
from bot.slack.writer import make_web_client
from bot.store import Store, repo
from bot.tasks import InFlight

log = logging.getLogger(__name__)

COMMAND = "/ephem"
ACTIONS = re.compile("^" + re.escape(ACTION_PREFIX))
# Metric labels must stay few: anything else is counted as "unknown".
_VERBS = frozenset({"create", "list", "status", "diff", "extend", "destroy", "approve", "deny",
                    "pending",
                    "help", "retry", "creds", "reset-data", "extend-by", "log"})


def new_error_id() -> str:
    """A short id that ties an apology in Slack to its log line."""
    return secrets.token_hex(4)


def _verb(text: str) -> str:
    words = text.split()
    verb = words[0].lower() if words else "help"
    return verb if verb in _VERBS else "unknown"


def strip_mention(text: str, bot_user_id: str | None = None) -> str:
    """`<@UBOT> status pr-1` → `status pr-1`: the bot's mention (any user's when the bot's id
    is unknown) at the start, as `<@U123>` or `<@U123|name>`; later mentions are arguments."""
    user = re.escape(bot_user_id) if bot_user_id else "[A-Z0-9]+"
    return re.sub(rf"^\s*<@{user}(?:\|[^>]*)?>[\s:,]*", "", text, count=1).strip()


# How long an accepted request is remembered, so that a copy of it does nothing. Slack refuses
# signatures older than five minutes, so a signed command or click is remembered for that window
# and a margin for replicas whose clocks differ; events are retried by Slack for longer.
REPLAY_MEMORY = timedelta(minutes=10)
EVENT_MEMORY = timedelta(days=1)


@dataclass(frozen=True)
class Sighting:
    """What identifies one request Slack sent, for recognising a copy of it."""

    kind: str  # command | action | event
    key: str
    keep: timedelta


def _header(request: AsyncBoltRequest, name: str) -> str | None:
    values = request.headers.get(name)
    return values[0] if values else None


def command_sighting(request: AsyncBoltRequest) -> Sighting | None:
    """A signed command is its signature and timestamp (Socket Mode has neither: None)."""
    signature = _header(request, "x-slack-signature")
    timestamp = _header(request, "x-slack-request-timestamp")
    if not signature or not timestamp:
        return None
    return Sighting("command", f"{timestamp}:{signature}", REPLAY_MEMORY)


def action_sighting(click: inbound.BlockActions, action: inbound.Action,
                    request: AsyncBoltRequest) -> Sighting | None:
    """A click is its `action_ts`, by that user, on that message or view (without an
    `action_ts`, the request's signature and timestamp, as for a command)."""
    if action.action_ts is None:
        signed = command_sighting(request)
        return Sighting("action", signed.key, REPLAY_MEMORY) if signed else None
    container = click.container
    where = ((container and (container.message_ts or container.view_id))
             or (click.message and click.message.ts) or inbound.channel_of(click))
    return Sighting("action", f"{click.user.id}:{where}:{action.action_ts}", REPLAY_MEMORY)


class _Listeners:
    """The listeners' shared dependencies; each public coroutine is one bolt listener."""

    def __init__(self, *, handler: CommandHandler, notifier: Notifier, store: Store,
                 inflight: InFlight) -> None:
        self._handler = handler
        self._notifier = notifier
        self._store = store
        self._inflight = inflight

    # Each listener acks, then reads the request inside `_unexpected`: bolt must never see an
    # exception after an ack (it would drop the ack and answer Slack 404 three seconds later).
    # Over HTTP the shapes were checked before bolt (`bot.slack.http`); Socket Mode requests
    # are checked here, by the same models, and a malformed one is logged in one line.

    async def command(self, ack: AsyncAck, body: dict[str, Any],
                      request: AsyncBoltRequest) -> None:
        await ack()
        with self._unexpected(body):
            cmd = inbound.read_command(body)
            inv = Invocation(user_id=cmd.user_id, channel_id=cmd.channel_id, text=cmd.text,
                             source="slack", response_url=cmd.response_url)
            self._spawn(inv, _verb(inv.text), lambda: self._handler.command(inv),
                        seen=command_sighting(request))

    async def action(self, ack: AsyncAck, body: dict[str, Any],
                     request: AsyncBoltRequest) -> None:
        await ack()
        with self._unexpected(body):
            click = inbound.read_actions(body)
            action = click.actions[0]  # Slack sends one action per click
            message = click.message
            inv = Invocation(user_id=click.user.id, channel_id=inbound.channel_of(click),
                             source="button",
                             thread_ts=(message.thread_ts or message.ts) if message else None,
                             message_ts=message.ts if message else None,
                             response_url=click.response_url, trigger_id=click.trigger_id)
            action_id = action.action_id.removeprefix(ACTION_PREFIX)
            value = action.chosen
            verb = action_id if action_id in _VERBS else "unknown"
            self._spawn(inv, verb,
                        lambda: self._handler.action(inv, action_id=action_id, value=value),
                        seen=action_sighting(click, action, request))

    async def submission(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """A submitted modal (the reason of a Deny): the modal closes on the ack, and the
        outcome is said where the decision is recorded (the thread, the card)."""
        await ack()
        with self._unexpected(body):
            form = inbound.read_submission(body)
            inv = Invocation(user_id=form.user.id,
                             channel_id=inbound.direct_channel(form.user.id), source="modal")
            values = form.inputs()
            self._spawn(inv, "deny",
                        lambda: self._handler.submission(
                            inv, callback_id=form.view.callback_id,
                            metadata=form.view.private_metadata, values=values),
                        seen=Sighting("view", f"{form.user.id}:{form.view.id}:"
                                              f"{form.view.hash or ''}", REPLAY_MEMORY))

    async def home_opened(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """`app_home_opened`: publish the person's Home tab, rendered from the store."""
        if event.get("tab") not in (None, "home") or not isinstance(event.get("user"), str):
            return
        with self._unexpected(body):
            inbound.read_event(body)
            self._inflight.spawn(self._notifier.publish_home(event["user"]),
                                 name=f"home-{event['user']}")

    async def mention(self, body: dict[str, Any], context: AsyncBoltContext,
                      request: AsyncBoltRequest) -> None:
        # Events are acknowledged by bolt before this listener runs.
        with self._unexpected(body):
            envelope = inbound.read_event(body)
            event = inbound.read_mention(body)
            text = strip_mention(event.text, context.bot_user_id)
            inv = Invocation(user_id=event.user, channel_id=event.channel, text=text,
                             source="mention", thread_ts=event.thread_ts)
            retry = _header(request, "x-slack-retry-num")
            self._spawn(inv, _verb(inv.text), lambda: self._handler.command(inv),
                        seen=Sighting("event", envelope.event_id, EVENT_MEMORY), retry=retry)

    async def direct_message(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        """A message in the app's Messages tab is a command, answered in that DM
        (`create pr-1` there works like `/ephem create pr-1`). Ephem's own posts, edits and
        other subtypes are not commands."""
        with self._unexpected(body):
            envelope = inbound.read_event(body)
            event = envelope.event
            if event.channel_type != "im" or event.subtype or event.bot_id:
                return
            if not event.user or event.user == context.bot_user_id:
                return
            if event.channel is None:
                raise inbound.Malformed("the direct message has no channel")
            text = strip_mention(event.text or "", context.bot_user_id)
            text = text.removeprefix(COMMAND).strip()
            inv = Invocation(user_id=event.user, channel_id=event.channel, text=text,
                             source="dm", thread_ts=event.thread_ts)
            self._spawn(inv, _verb(inv.text), lambda: self._handler.command(inv),
                        seen=Sighting("event", envelope.event_id, EVENT_MEMORY))

    async def error(self, error: Exception, body: dict[str, Any]) -> None:
        """Bolt's last resort, for a failure before a listener could ack."""
        if isinstance(error, BoltUnhandledRequestError):
            log.info("slack: no listener for a %s request; answered 404", _kind(body))
            return
        self._report(error, body)

    @contextmanager
    def _unexpected(self, body: dict[str, Any]) -> Iterator[None]:
        try:
            yield
        except inbound.Malformed as exc:
            log.warning("slack: ignored a request Ephem cannot read: %s", exc)
        except Exception as exc:
            self._report(exc, body)

    def _report(self, error: Exception, body: object) -> None:
        """Log with an error id; apologize, naming the id, if we know to whom and where."""
        error_id = new_error_id()
        log.error("slack listener failed [error %s] (type=%s)", error_id, _kind(body),
                  exc_info=error)
        asker = inbound.asker(body)
        if asker is not None:
            inv = Invocation(user_id=asker.user_id, channel_id=asker.channel_id)
            self._inflight.spawn(self._notifier.deliver(inv, [Reply(messages.apology(error_id))]),
                                 name=f"apology-{error_id}")

    # ----------------------------------------------------------------------- after the ack

    def _spawn(self, inv: Invocation, verb: str, work: Callable[[], Awaitable[list[Reply]]],
               *, seen: Sighting | None, retry: str | None = None) -> None:
        self._inflight.spawn(self._run(inv, verb, work, seen=seen, retry=retry),
                             name=f"{inv.source}-{verb}-{inv.user_id}")

    async def _run(self, inv: Invocation, verb: str, work: Callable[[], Awaitable[list[Reply]]],
                   *, seen: Sighting | None, retry: str | None) -> None:
        try:
            # After the ack, before acting: a copy of a request already accepted (a replay, or
            # Slack retrying an event) does nothing, on whichever replica it arrives.
            if seen is not None and not await self._first_sighting(seen):
                log.info("slack: this %s was already handled; ignoring a copy (retry %s)",
                         seen.kind, retry)
                return
            replies = await work()
            outcome = "ok"
        except Exception:
            error_id = new_error_id()
            log.exception("%s `%s` failed [error %s] (user=%s channel=%s)",
                          inv.source, verb, error_id, inv.user_id, inv.channel_id)
            replies = [Reply(messages.apology(error_id))]
            outcome = "error"
        metrics.COMMANDS.labels(verb, outcome).inc()
        await self._notifier.deliver(inv, replies)

    async def _first_sighting(self, seen: Sighting) -> bool:
        async with self._store.transaction() as s:
            return await repo.first_sighting(s, kind=seen.kind, key=seen.key, keep=seen.keep)


def _kind(body: object) -> str:
    """The request's type for a log line: one of a few known words, never the body's text."""
    if not isinstance(body, dict):
        return "unknown"
    if "command" in body:
        return "command"
    kind = body.get("type")
    known = ("block_actions", "event_callback", "url_verification", "view_submission",
             "shortcut", "message_action", "view_closed")
    return kind if isinstance(kind, str) and kind in known else "unknown"


class _OwnClient(logging.Filter):
    """Drops bolt's warning that a token is unused because a client was given."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def _bolt_logger() -> logging.Logger:
    logger = logging.getLogger("ephem.bolt")
    if not any(isinstance(f, _OwnClient) for f in logger.filters):
        logger.addFilter(_OwnClient())
    return logger


def build_bolt_app(*, settings: Settings, handler: CommandHandler, notifier: Notifier,
                   store: Store, inflight: InFlight) -> AsyncApp:
    """The bolt app with Ephem's listeners; serve it with `HttpServer` or `SocketMode`."""
    if not settings.slack_bot_token.get_secret_value():
        raise ConfigError("SLACK_BOT_TOKEN is not set: Ephem cannot talk to Slack without it.")
    secret = settings.slack_signing_secret.get_secret_value()
    if not secret and not settings.socket_mode:
        raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode needs it to verify "
                          "requests (or set SLACK_APP_TOKEN for Socket Mode).")
    # process_before_response: every listener acks and hands its work to `inflight` without
    # awaiting it, so bolt may answer as soon as the listener returns. (With the default, bolt
    # runs the listener as a task and polls for the ack every 10 ms, adding up to 10 ms to
    # every ack for nothing.)
    # request_verification_enabled=False: `bot.slack.http` verifies before anything parses the
    # body; bolt's check would only run later, and logs whole bodies of forged requests.
    # raise_error_for_unhandled_request: a request no listener takes reaches `error` (one log
    # line) instead of bolt's warning, which prints the body.
    # logger: bolt reads SLACK_BOT_TOKEN from the environment itself and, given our client as
    # well, warns on every start that it will not use it, which is the intent; that one
    # warning is dropped (`_OwnClient`), every other line of bolt's is kept.
    app = AsyncApp(name="ephem", client=make_web_client(settings), signing_secret=secret,
                   logger=_bolt_logger(), process_before_response=True,
                   request_verification_enabled=False, raise_error_for_unhandled_request=True)
    listeners = _Listeners(handler=handler, notifier=notifier, store=store, inflight=inflight)
    app.command(COMMAND)(listeners.command)
    app.action(ACTIONS)(listeners.action)
    app.event("app_mention")(listeners.mention)
    app.event("message")(listeners.direct_message)
    app.event("app_home_opened")(listeners.home_opened)
    app.view(ACTIONS)(listeners.submission)
    app.error(listeners.error)
    return app
