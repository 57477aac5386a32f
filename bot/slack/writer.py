"""The Slack calls Ephem makes, behind one small protocol: one attempt each, sorted by outcome.

Why: a Slack write either lands, or fails for a reason worth waiting out (a 429 with its
Retry-After, a 5xx, a dropped connection, a revoked token being replaced), or fails for good
(`channel_not_found`, `invalid_blocks`). `WebApiWriter` makes exactly one attempt and says
which: `SlackUnavailable` (try again later; `retry_after` when Slack said when) or
`SlackWriteError` (do not). Retrying, pacing and persistence are the outbox's
(`bot.slack.outbox`): a write that must survive an outage cannot wait in a coroutine.

Everything sent is scrubbed here, in one place: every text and every block goes through
`bot.redaction.scrub`, so no secret Ephem knows reaches a channel, a thread, or an error text.
The only exception is a message marked `secret=True` — credentials, said to their owner alone
(ephemeral, or a direct message) — which is the reason those exist.

Also here: Block Kit limits (an oversized message is trimmed, not rejected), a fallback `text`
for every message, one pooled HTTP session, and `ConsoleWriter`, the same protocol for the
terminal shell.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot import metrics
from bot.config import Settings
from bot.errors import EphemError
from bot.redaction import scrub, scrub_structure
from bot.slack.blocks import blocks_to_lines, fit_blocks, fit_text, plain

log = logging.getLogger(__name__)

BlockDicts = Sequence[Mapping[str, Any]]

# Errors Slack may return with HTTP 200 that mean "try again", like a 5xx.
_SERVER_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable",
                            "request_timeout"})
# A token being rotated or an app being re-installed: the write can land once that is fixed.
_AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_expired",
                          "token_revoked"})
# The app cannot post there (not a member, private channel, archived).
UNREACHABLE = frozenset({"channel_not_found", "not_in_channel", "user_not_in_channel",
                         "is_archived"})
_MAX_RETRY_AFTER = 600.0
_CALL_TIMEOUT = 15.0  # seconds; well inside the outbox's lease on a queue
_SLACK_HOOKS = "https://hooks.slack.com/"


class SlackWriteError(EphemError):
    """A Slack call failed for good. `reason` is Slack's error code or a short description —
    never a token, never the message text."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method} failed: {reason}")
        self.method = method
        self.reason = reason


class SlackUnavailable(SlackWriteError):
    """Slack did not take the call now; the same call can succeed later. `retry_after` is the
    wait Slack asked for (a 429's Retry-After), None when it did not say."""

    def __init__(self, method: str, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(method, reason)
        self.retry_after = retry_after


class SlackWriter(Protocol):
    async def post_message(
        self, channel: str, *, text: str, blocks: BlockDicts | None = None,
        thread_ts: str | None = None,
    ) -> str:
        """Post a message (in a thread when `thread_ts` is given); returns its ts."""
        ...

    async def update_message(
        self, channel: str, ts: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None: ...

    async def post_ephemeral(
        self, channel: str, user: str, *, text: str, blocks: BlockDicts | None = None,
        secret: bool = False,
    ) -> None:
        """A message only `user` sees in `channel` (`secret`: sent unscrubbed, see module)."""
        ...

    async def post_direct(
        self, user: str, *, text: str, blocks: BlockDicts | None = None, secret: bool = False
    ) -> str:
        """A direct message to `user` from the app; returns its ts."""
        ...

    async def respond(
        self, response_url: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        """An ephemeral answer through a command's or a button's `response_url`, which works
        where the app is not a member."""
        ...

    async def can_post(self, channel: str) -> bool | None:
        """Whether the app may post in `channel`; None when Slack cannot say now."""
        ...

    async def usergroup_members(self, usergroup: str) -> frozenset[str]:
        """The user ids in a Slack user group (`usergroups.users.list`)."""
        ...

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        """Open a modal for the person whose click gave `trigger_id` (valid 3 seconds)."""
        ...

    async def publish_view(self, user: str, view: Mapping[str, Any]) -> None:
        """Publish `user`'s App Home tab."""
        ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...


def make_web_client(settings: Settings) -> AsyncWebClient:
    """The Web API client for `settings`; retries are left to the outbox."""
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=int(_CALL_TIMEOUT),
        retry_handlers=[],
    )


def _retry_after(headers: Mapping[str, Any]) -> float:
    try:
        value = float(headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        value = 1.0
    if math.isnan(value):
        value = 1.0
    return min(max(value, 0.0), _MAX_RETRY_AFTER)


def _fallback(text: str, blocks: BlockDicts | None) -> str:
    """Slack shows `text` in notifications and to screen readers: never leave it empty."""
    return fit_text(text or "\n".join(blocks_to_lines(blocks or [])) or " ")


def _clean(text: str, blocks: BlockDicts | None, *, secret: bool = False
           ) -> tuple[str, list[dict[str, Any]] | None]:
    """The text and blocks as they may leave: scrubbed (unless `secret`), fitted, with a
    fallback text."""
    if not secret:
        text = scrub(text)
        blocks = scrub_structure(list(blocks)) if blocks else None
    fitted = fit_blocks(blocks) if blocks else None
    return _fallback(text, blocks), fitted


class WebApiWriter:
    """`SlackWriter` over the Web API: one attempt per call, typed failures, Block Kit limits."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        # Told when a call answers a token error or cannot reach Slack (`ephem serve` asks
        # auth.test again at once, for its readiness).
        self.on_trouble: Callable[[str], None] | None = None
        base = urlsplit(client.base_url)
        self._own_origin = f"{base.scheme}://{base.netloc}/"

    async def post_message(
        self, channel: str, *, text: str, blocks: BlockDicts | None = None,
        thread_ts: str | None = None,
    ) -> str:
        fallback, fitted = _clean(text, blocks)
        response = await self._call("chat.postMessage", lambda: self._client.chat_postMessage(
            channel=channel, text=fallback, blocks=fitted, thread_ts=thread_ts))
        return str(response["ts"])

    async def update_message(
        self, channel: str, ts: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        fallback, fitted = _clean(text, blocks)
        await self._call("chat.update", lambda: self._client.chat_update(
            channel=channel, ts=ts, text=fallback, blocks=fitted or []))

    async def post_ephemeral(
        self, channel: str, user: str, *, text: str, blocks: BlockDicts | None = None,
        secret: bool = False,
    ) -> None:
        fallback, fitted = _clean(text, blocks, secret=secret)
        await self._call("chat.postEphemeral", lambda: self._client.chat_postEphemeral(
            channel=channel, user=user, text=fallback, blocks=fitted))

    async def post_direct(
        self, user: str, *, text: str, blocks: BlockDicts | None = None, secret: bool = False
    ) -> str:
        fallback, fitted = _clean(text, blocks, secret=secret)
        opened = await self._call("conversations.open",
                                  lambda: self._client.conversations_open(users=user))
        channel = str(opened["channel"]["id"])
        response = await self._call("chat.postMessage", lambda: self._client.chat_postMessage(
            channel=channel, text=fallback, blocks=fitted))
        return str(response["ts"])

    async def respond(
        self, response_url: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        method = "response_url"
        if not (response_url.startswith(_SLACK_HOOKS) or response_url.startswith(self._own_origin)):
            # Only Slack's own hooks (or the configured API's host): never a URL of anyone's
            # choosing.
            raise SlackWriteError(method, "not a Slack response URL")
        fallback, fitted = _clean(text, blocks)
        body: dict[str, Any] = {"response_type": "ephemeral", "text": fallback}
        if fitted:
            body["blocks"] = fitted
        session = self._session()
        try:
            async with session.post(response_url, json=body) as answer:
                status = answer.status
                headers = dict(answer.headers)
                await answer.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.SLACK_API_CALLS.labels(method, "connection_error").inc()
            metrics.SLACK_API_ERRORS.labels(method, "connection_error").inc()
            raise SlackUnavailable(method, f"connection_error ({type(exc).__name__})") from None
        if status >= 300:
            metrics.SLACK_API_ERRORS.labels(
                method, "ratelimited" if status == 429 else
                "http_5xx" if status >= 500 else f"http_{status // 100}xx").inc()
        if status == 429:
            metrics.SLACK_API_CALLS.labels(method, "ratelimited").inc()
            raise SlackUnavailable(method, "ratelimited", retry_after=_retry_after(headers))
        if status >= 500:
            metrics.SLACK_API_CALLS.labels(method, "server_error").inc()
            raise SlackUnavailable(method, f"HTTP {status}")
        if status >= 300:
            metrics.SLACK_API_CALLS.labels(method, "error").inc()
            raise SlackWriteError(method, f"HTTP {status}")  # expired or used up
        metrics.SLACK_API_CALLS.labels(method, "ok").inc()

    async def can_post(self, channel: str) -> bool | None:
        try:
            info = await self._call("conversations.info",
                                    lambda: self._client.conversations_info(channel=channel))
        except SlackUnavailable:
            return None
        except SlackWriteError as exc:
            return False if exc.reason in UNREACHABLE else None
        about = info.get("channel") or {}
        if about.get("is_archived"):
            return False
        if about.get("is_member") or about.get("is_im"):
            return True
        # A public channel takes posts without membership (`chat:write.public`); a private one
        # Ephem is not in is not even visible to it (`channel_not_found`, above).
        return bool(about.get("is_channel") and not about.get("is_private"))

    async def usergroup_members(self, usergroup: str) -> frozenset[str]:
        answer = await self._call("usergroups.users.list",
                                  lambda: self._client.usergroups_users_list(usergroup=usergroup))
        return frozenset(str(u) for u in answer.get("users") or [])

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        clean = scrub_structure(dict(view))
        await self._call("views.open", lambda: self._client.views_open(
            trigger_id=trigger_id, view=clean))

    async def publish_view(self, user: str, view: Mapping[str, Any]) -> None:
        clean = scrub_structure(dict(view))
        await self._call("views.publish", lambda: self._client.views_publish(
            user_id=user, view=clean))

    async def close(self) -> None:
        """Close the pooled HTTP session (the writer opens a new one if used again)."""
        session, self._client.session = self._client.session, None
        if session is not None:
            await session.close()

    # ----------------------------------------------------------------------- machinery

    def _session(self) -> aiohttp.ClientSession:
        if self._client.session is None:
            # One pooled session for every call: slack_sdk otherwise opens a new session (and
            # a new TCP/TLS connection) per request.
            self._client.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._client.timeout))
        return self._client.session

    async def _call(
        self, method: str, send: Callable[[], Awaitable[AsyncSlackResponse]]
    ) -> AsyncSlackResponse:
        """One attempt; `SlackUnavailable` when it may land later, `SlackWriteError` if not."""
        self._session()
        try:
            response = await send()
        except SlackApiError as exc:
            status = exc.response.status_code
            data = exc.response.data
            code = str((data.get("error") if isinstance(data, dict) else None)
                       or f"HTTP {status}")
            metrics.SLACK_API_ERRORS.labels(
                method, "ratelimited" if status == 429 else metrics.slack_error_label(code)).inc()
            if status == 429:
                metrics.SLACK_API_CALLS.labels(method, "ratelimited").inc()
                raise SlackUnavailable(method, "ratelimited",
                                       retry_after=_retry_after(exc.response.headers)) from None
            if status >= 500 or code in _SERVER_ERRORS:
                metrics.SLACK_API_CALLS.labels(method, "server_error").inc()
                raise SlackUnavailable(method, code) from None
            metrics.SLACK_API_CALLS.labels(method, "error").inc()
            if code in _AUTH_ERRORS:
                self._trouble(code)
                log.warning("slack: %s answered %s: check SLACK_BOT_TOKEN; the write is kept "
                            "and tried again", method, code)
                raise SlackUnavailable(method, code) from None
            raise SlackWriteError(method, code) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.SLACK_API_CALLS.labels(method, "connection_error").inc()
            metrics.SLACK_API_ERRORS.labels(method, "connection_error").inc()
            self._trouble("connection_error")
            raise SlackUnavailable(method, f"connection_error ({type(exc).__name__})") from None
        metrics.SLACK_API_CALLS.labels(method, "ok").inc()
        return response

    def _trouble(self, reason: str) -> None:
        if self.on_trouble is not None:
            self.on_trouble(reason)


class ConsoleWriter:
    """`SlackWriter` for the terminal: messages as plain lines, synthetic timestamps."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._count = 0

    async def close(self) -> None:
        """Nothing to release."""

    def _render(self, text: str, blocks: BlockDicts | None) -> list[str]:
        lines = blocks_to_lines(blocks) if blocks else text.splitlines() or [""]
        return [plain(line) for line in lines]

    def _say(self, text: str, blocks: BlockDicts | None, *, prefix: str = "",
             secret: bool = False) -> None:
        if not secret:
            text = scrub(text)
            blocks = scrub_structure(list(blocks)) if blocks else None
        self._out("\n".join(prefix + line for line in self._render(text, blocks)))

    async def post_message(
        self, channel: str, *, text: str, blocks: BlockDicts | None = None,
        thread_ts: str | None = None,
    ) -> str:
        self._count += 1
        self._say(text, blocks, prefix="  | " if thread_ts else "")
        return f"console.{self._count}"

    async def update_message(
        self, channel: str, ts: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        self._out("(updated)")
        self._say(text, blocks)

    async def post_ephemeral(
        self, channel: str, user: str, *, text: str, blocks: BlockDicts | None = None,
        secret: bool = False,
    ) -> None:
        self._say(text, blocks, secret=secret)

    async def post_direct(
        self, user: str, *, text: str, blocks: BlockDicts | None = None, secret: bool = False
    ) -> str:
        self._count += 1
        self._say(text, blocks, secret=secret)
        return f"console.{self._count}"

    async def respond(
        self, response_url: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        self._say(text, blocks)

    async def can_post(self, channel: str) -> bool | None:
        return True

    async def usergroup_members(self, usergroup: str) -> frozenset[str]:
        return frozenset()  # no Slack: only approvers listed by id can decide

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> None:
        self._say("", list(view.get("blocks") or []))

    async def publish_view(self, user: str, view: Mapping[str, Any]) -> None:
        return None  # a terminal has no Home tab
