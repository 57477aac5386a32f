"""The three Slack calls Ephem makes, behind one small protocol, with the care Slack asks for.

Why: `slack_sdk` sends what it is given once. Slack answers bursts with 429 and a Retry-After
header, has the odd 5xx, limits posting to a channel to about one message per second, and rejects
Block Kit beyond its size limits. `WebApiWriter` deals with all of that in one place, so the
notifier (its only user in production) can say "post this" and trust it to arrive or fail
cleanly with a `SlackWriteError`. `ConsoleWriter` is the same protocol for the terminal shell.

Retries are made here and only here: `make_web_client` builds clients with slack_sdk's own retry
handlers turned off, so each attempt is counted once in `bot.metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot import metrics
from bot.config import Settings
from bot.errors import EphemError
from bot.slack.blocks import blocks_to_lines, fit_blocks, fit_text, plain

log = logging.getLogger(__name__)

BlockDicts = Sequence[Mapping[str, Any]]

# Errors Slack may return with HTTP 200 that mean "try again", like a 5xx.
_SERVER_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})
# Ephemeral messages cannot reach the user there; a direct message can.
_UNREACHABLE = frozenset({"channel_not_found", "not_in_channel", "user_not_in_channel"})
_MAX_RETRY_AFTER = 300.0


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
        self, channel: str, user: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        """A message only `user` sees (a direct message when they cannot see `channel`)."""
        ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class SlackWriteError(EphemError):
    """A Slack call failed for good. `reason` is Slack's error code or a short description —
    never a token, never the message text."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method} failed: {reason}")
        self.method = method
        self.reason = reason


def make_web_client(settings: Settings) -> AsyncWebClient:
    """The Web API client for `settings`; retries are left to `WebApiWriter`."""
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        retry_handlers=[],
    )


def _retry_after(headers: Mapping[str, Any]) -> float:
    try:
        value = float(headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        value = 1.0
    return min(max(value, 0.0), _MAX_RETRY_AFTER)


def _fallback(text: str, blocks: BlockDicts | None) -> str:
    """Slack shows `text` in notifications and to screen readers: never leave it empty."""
    return fit_text(text or "\n".join(blocks_to_lines(blocks or [])) or " ")


class WebApiWriter:
    """`SlackWriter` over the Web API: retries, per-channel pacing, Block Kit limits.

    Pacing: posts and updates to one channel start at least `min_interval` seconds apart, in
    the order they were asked for (a per-channel lock is held across retries, so a retried
    message is not overtaken). Ephemeral messages are not paced: they answer one person now,
    and Slack rate-limits them separately.
    """

    def __init__(
        self, client: AsyncWebClient, *, min_interval: float = 1.0, max_attempts: int = 5,
        backoff_base: float = 0.5, backoff_cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._min_interval = min_interval
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._sleep = sleep
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_sent: dict[str, float] = {}

    async def post_message(
        self, channel: str, *, text: str, blocks: BlockDicts | None = None,
        thread_ts: str | None = None,
    ) -> str:
        fitted = fit_blocks(blocks) if blocks else None
        response = await self._paced(
            channel, "chat.postMessage", lambda: self._client.chat_postMessage(
                channel=channel, text=_fallback(text, blocks), blocks=fitted,
                thread_ts=thread_ts,
            ))
        return str(response["ts"])

    async def update_message(
        self, channel: str, ts: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        fitted = fit_blocks(blocks) if blocks else []
        await self._paced(channel, "chat.update", lambda: self._client.chat_update(
            channel=channel, ts=ts, text=_fallback(text, blocks), blocks=fitted,
        ))

    async def post_ephemeral(
        self, channel: str, user: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        fitted = fit_blocks(blocks) if blocks else None
        try:
            await self._retrying("chat.postEphemeral", lambda: self._client.chat_postEphemeral(
                channel=channel, user=user, text=_fallback(text, blocks), blocks=fitted,
            ))
        except SlackWriteError as exc:
            if exc.reason not in _UNREACHABLE:
                raise
            log.info("slack: ephemeral message cannot reach %s in %s (%s); sending a DM",
                     user, channel, exc.reason)
            opened = await self._retrying("conversations.open",
                                          lambda: self._client.conversations_open(users=user))
            await self.post_message(str(opened["channel"]["id"]), text=text, blocks=blocks)

    # ----------------------------------------------------------------------- machinery

    async def _paced(
        self, channel: str, method: str, send: Callable[[], Awaitable[AsyncSlackResponse]]
    ) -> AsyncSlackResponse:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            last = self._last_sent.get(channel)
            if last is not None:
                wait = last + self._min_interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            try:
                return await self._retrying(method, send)
            finally:
                self._last_sent[channel] = self._clock()

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (half fixed, half random)."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def close(self) -> None:
        """Close the pooled HTTP session (the writer opens a new one if used again)."""
        session, self._client.session = self._client.session, None
        if session is not None:
            await session.close()

    async def _retrying(
        self, method: str, send: Callable[[], Awaitable[AsyncSlackResponse]]
    ) -> AsyncSlackResponse:
        if self._client.session is None:
            # One pooled session for every call: slack_sdk otherwise opens a new session (and
            # a new TCP/TLS connection) per request.
            self._client.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._client.timeout))
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await send()
            except SlackApiError as exc:
                status = exc.response.status_code
                data = exc.response.data
                code = str((data.get("error") if isinstance(data, dict) else None)
                           or f"HTTP {status}")
                if status == 429:
                    reason, delay = "ratelimited", _retry_after(exc.response.headers)
                elif status >= 500 or code in _SERVER_ERRORS:
                    reason, delay = "server_error", self._backoff(attempt)
                else:
                    metrics.SLACK_API_CALLS.labels(method, "error").inc()
                    raise SlackWriteError(method, code) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason, delay, code = "connection_error", self._backoff(attempt), type(exc).__name__
            else:
                metrics.SLACK_API_CALLS.labels(method, "ok").inc()
                return response
            metrics.SLACK_API_CALLS.labels(method, reason).inc()
            if attempt >= self._max_attempts:
                raise SlackWriteError(method, f"{code} (gave up after {attempt} attempts)")
            metrics.SLACK_API_RETRIES.labels(method, reason).inc()
            log.info("slack: %s answered %s; retry %d of %d in %.1fs",
                     method, code, attempt, self._max_attempts - 1, delay)
            await self._sleep(delay)


class ConsoleWriter:
    """`SlackWriter` for the terminal: messages as plain lines, synthetic timestamps."""

    async def close(self) -> None:
        """Nothing to release."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._count = 0

    def _render(self, text: str, blocks: BlockDicts | None) -> list[str]:
        lines = blocks_to_lines(blocks) if blocks else text.splitlines() or [""]
        return [plain(line) for line in lines]

    async def post_message(
        self, channel: str, *, text: str, blocks: BlockDicts | None = None,
        thread_ts: str | None = None,
    ) -> str:
        self._count += 1
        prefix = "  | " if thread_ts else ""
        self._out("\n".join(prefix + line for line in self._render(text, blocks)))
        return f"console.{self._count}"

    async def update_message(
        self, channel: str, ts: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        self._out("\n".join(["(updated)", *self._render(text, blocks)]))

    async def post_ephemeral(
        self, channel: str, user: str, *, text: str, blocks: BlockDicts | None = None
    ) -> None:
        self._out("\n".join(self._render(text, blocks)))
