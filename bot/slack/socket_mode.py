"""Socket Mode (when SLACK_APP_TOKEN is set), with a watchdog for the silent socket.

Why: Socket Mode needs no public URL, which makes it the easy way to run Ephem inside a private
network. Its best-known failure is a WebSocket that stays open but goes quiet — no events, no
pongs — after a network blip or a half-closed connection; the process looks healthy and Slack
commands vanish (slackapi/python-slack-sdk#1110, #1446 and their many cousins). slack_sdk has
its own ping monitor, but it lives in tasks that can die or stall with the session they watch.
The watchdog here is independent: it notes when anything was last heard on the current
connection (a message from Slack, or a pong to slack_sdk's pings) and, after `silence_seconds`
without either, drops the connection and opens a new one through `apps.connections.open`.

Closing a dead connection politely would wait up to aiohttp's 10 s for a close frame that never
comes; the watchdog bounds that wait, after which aiohttp aborts the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import ClientWebSocketResponse
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest

from bot import metrics

log = logging.getLogger(__name__)


class _MeasuredHandler(AsyncSocketModeHandler):
    """Bolt's handler, timing each envelope from arrival to the ack sent back."""

    async def handle(  # type: ignore[override]  # as bolt's own subclass narrows it
        self, client: SocketModeClient, req: SocketModeRequest
    ) -> None:
        started = time.perf_counter()
        await super().handle(client, req)
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)


class SocketMode:
    """Runs the bolt app over Socket Mode until `stop()`; replaces silent connections."""

    def __init__(self, *, bolt_app: AsyncApp, app_token: str, ping_interval: float = 10.0,
                 silence_seconds: float | None = None) -> None:
        self._app = bolt_app
        self._app_token = app_token
        self._ping_interval = ping_interval
        self._silence = silence_seconds if silence_seconds is not None else 3 * ping_interval
        self._check = max(min(self._silence / 4, 5.0), 0.01)
        self._close_timeout = min(self._silence, 2.0)
        self._handler: _MeasuredHandler | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._session: ClientWebSocketResponse | None = None
        self._pong: float | None = None
        self._heard = time.monotonic()
        self.reconnects = 0

    @property
    def client(self) -> SocketModeClient:
        if self._handler is None:
            raise RuntimeError("Socket Mode is not started")
        return self._handler.client

    async def start(self) -> None:
        """Open the first connection (retrying until it works) and start the watchdog."""
        self._handler = _MeasuredHandler(self._app, self._app_token,
                                         ping_interval=self._ping_interval)
        self.client.on_message_listeners.append(self._on_message)
        await self._handler.connect_async()  # type: ignore[no-untyped-call]
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(),
                                                                 name="ephem-socket-watchdog")
        log.info("socket mode: connected")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._handler is not None:
            await self._drop(self.client.current_session)
            await self._handler.close_async()  # type: ignore[no-untyped-call]
            self._handler = None

    async def _on_message(self, _: object) -> None:
        self._heard = time.monotonic()

    def _silent_for(self) -> float:
        """Seconds since anything was heard on the current connection."""
        client = self.client
        now = time.monotonic()
        if client.current_session is not self._session:
            self._session, self._heard = client.current_session, now
        if client.last_ping_pong_time != self._pong:
            self._pong, self._heard = client.last_ping_pong_time, now
        return now - self._heard

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check)
            silent = self._silent_for()
            if silent < self._silence:
                continue
            log.warning("socket mode: nothing heard for %.0fs; opening a new connection", silent)
            metrics.SOCKET_RECONNECTS.labels("silent").inc()
            self.reconnects += 1
            self._heard = time.monotonic()  # the new connection gets a full window
            try:
                await self._drop(self.client.current_session)
                await asyncio.wait_for(self.client.connect_to_new_endpoint(force=True),
                                       timeout=max(self._silence, 10.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("socket mode: reconnecting failed (%s); trying again",
                            type(exc).__name__)

    async def _drop(self, session: ClientWebSocketResponse | None) -> None:
        """Close a connection without waiting long for a peer that may not answer."""
        if session is None or session.closed:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.close(), timeout=self._close_timeout)
