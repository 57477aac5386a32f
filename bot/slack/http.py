"""HTTP mode: Slack's signed requests in, health and metrics out, on one aiohttp server.

Why: in HTTP mode Slack posts commands, button clicks and events to `POST /slack/events`, and
the platform running Ephem (Kubernetes, see `helm/`) needs probes and a scrape target. One small
server does both, so there is one port to expose. `/healthz` only says the process answers;
`/readyz` says it can do its job — it was marked ready by the composition root (after start-up)
and the store answers — so a pod with a lost database stops receiving traffic without being
restarted. Bolt checks signatures; this module only adapts requests and measures the time to ack.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from bot import metrics
from bot.store import Store

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
PING_TIMEOUT = 2.0


class HttpServer:
    """`POST /slack/events`, `GET /healthz`, `GET /readyz`, `GET /metrics`."""

    def __init__(self, *, bolt_app: AsyncApp, store: Store, host: str, port: int) -> None:
        self._bolt = bolt_app
        self._store = store
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._ready = False
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful when 0 asked for any free one)."""
        if self._port is None:
            raise RuntimeError("the HTTP server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host  # noqa: S104
        return f"http://{host}:{self.port}"

    def mark_ready(self, ready: bool = True) -> None:
        """Say whether start-up is complete (and the process not draining)."""
        self._ready = ready

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(EVENTS_PATH, self._events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        log.info("http: listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        self._ready = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        bolt_response = await self._bolt.async_dispatch(await to_bolt_request(request))
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        return await to_aiohttp_response(bolt_response)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if not self._ready:
            return web.Response(status=503, text="not ready: starting or stopping")
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT)
        except Exception as exc:
            log.warning("readyz: the store does not answer (%s)", type(exc).__name__)
            return web.Response(status=503, text="not ready: the database does not answer")
        return web.Response(text="ready")

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
