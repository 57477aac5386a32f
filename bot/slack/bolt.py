"""The slack-bolt app: what Ephem listens to, and the order in which it answers.

Why: Slack gives an app 3 seconds to acknowledge a request and retries events it thinks were
lost. So every listener here acks first — before touching the database or the handlers — and
then hands the work to `InFlight`, which the process drains on shutdown so an acknowledged
request is never dropped. The work itself is always the same three steps: ask the
`CommandHandler` (from `bot.ports`; the real one lives in `handlers/`), turn an unexpected
exception into a logged error id and a short apology, and give the replies to the notifier.
Mentions are de-duplicated on Slack's event id, so a retried event runs nothing twice.

Signature and timestamp checks are bolt's own (`AsyncRequestVerification`): a request with a
bad signature or a timestamp older than five minutes gets 401 and reaches no listener.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest

from bot import metrics
from bot.config import Settings
from bot.errors import ConfigError
from bot.ports import CommandHandler, Invocation, Reply
from bot.slack import messages
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
                    "help", "retry"})


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


def _response_url(body: dict[str, Any]) -> str | None:
    """Where Slack lets the app answer without channel membership (commands and buttons)."""
    url = body.get("response_url")
    return url if isinstance(url, str) and url else None


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

    async def command(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        with self._unexpected(body):
            inv = Invocation(user_id=body["user_id"], channel_id=body["channel_id"],
                             text=body.get("text") or "", source="slack",
                             response_url=_response_url(body))
            self._spawn(inv, _verb(inv.text), lambda: self._handler.command(inv))

    async def action(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        with self._unexpected(body):
            message = body.get("message") or {}
            channel = (body.get("channel") or {}).get("id") or body["container"]["channel_id"]
            inv = Invocation(user_id=body["user"]["id"], channel_id=channel, source="button",
                             thread_ts=message.get("thread_ts") or message.get("ts"),
                             message_ts=message.get("ts") or None,
                             response_url=_response_url(body))
            action_id = str(action["action_id"]).removeprefix(ACTION_PREFIX)
            value = str(action.get("value") or "")
            verb = action_id if action_id in _VERBS else "unknown"
            self._spawn(inv, verb,
                        lambda: self._handler.action(inv, action_id=action_id, value=value))

    async def mention(self, body: dict[str, Any], event: dict[str, Any],
                      context: AsyncBoltContext, request: AsyncBoltRequest) -> None:
        # Events are acknowledged by bolt before this listener runs.
        with self._unexpected(body):
            text = strip_mention(event.get("text") or "", context.bot_user_id)
            inv = Invocation(user_id=event["user"], channel_id=event["channel"], text=text,
                             source="mention", thread_ts=event.get("thread_ts"))
            event_id = body.get("event_id")
            retry = request.headers.get("x-slack-retry-num")
            self._spawn(inv, _verb(inv.text), lambda: self._handler.command(inv),
                        event_id=str(event_id) if event_id else None,
                        retry=retry[0] if retry else None)

    async def error(self, error: Exception, body: dict[str, Any]) -> None:
        """Bolt's last resort, for a failure before a listener could ack."""
        self._report(error, body)

    @contextmanager
    def _unexpected(self, body: dict[str, Any]) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._report(exc, body)

    def _report(self, error: Exception, body: dict[str, Any]) -> None:
        """Log with an error id; apologize, naming the id, if we know to whom and where."""
        error_id = new_error_id()
        log.error("slack listener failed [error %s] (type=%s)", error_id,
                  body.get("type") or body.get("command") or "unknown", exc_info=error)
        event = body.get("event") or {}
        user = body.get("user_id") or (body.get("user") or {}).get("id") or event.get("user")
        channel = (body.get("channel_id") or (body.get("channel") or {}).get("id")
                   or (body.get("container") or {}).get("channel_id") or event.get("channel"))
        if isinstance(user, str) and isinstance(channel, str):
            inv = Invocation(user_id=user, channel_id=channel)
            self._inflight.spawn(self._notifier.deliver(inv, [Reply(messages.apology(error_id))]),
                                 name=f"apology-{error_id}")

    # ----------------------------------------------------------------------- after the ack

    def _spawn(self, inv: Invocation, verb: str, work: Callable[[], Awaitable[list[Reply]]],
               *, event_id: str | None = None, retry: str | None = None) -> None:
        self._inflight.spawn(self._run(inv, verb, work, event_id=event_id, retry=retry),
                             name=f"{inv.source}-{verb}-{inv.user_id}")

    async def _run(self, inv: Invocation, verb: str, work: Callable[[], Awaitable[list[Reply]]],
                   *, event_id: str | None, retry: str | None) -> None:
        try:
            if event_id is not None and not await self._first_sighting(event_id):
                log.info("slack: event %s already handled; ignoring retry %s", event_id, retry)
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

    async def _first_sighting(self, event_id: str) -> bool:
        async with self._store.transaction() as s:
            return await repo.first_sighting(s, event_id)


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
    app = AsyncApp(name="ephem", client=make_web_client(settings), signing_secret=secret,
                   logger=logging.getLogger("ephem.bolt"), process_before_response=True)
    listeners = _Listeners(handler=handler, notifier=notifier, store=store, inflight=inflight)
    app.command(COMMAND)(listeners.command)
    app.action(ACTIONS)(listeners.action)
    app.event("app_mention")(listeners.mention)
    app.error(listeners.error)
    return app
