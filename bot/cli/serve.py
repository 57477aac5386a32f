"""`ephem serve`: the bot process — HTTP (or Socket Mode), executor, scheduler — until SIGTERM.

Shutdown order matters: stop taking requests (readiness off, listener closed), finish the work
already acked, let running phases finish up to the grace period and release the rest, give the
outbox's last rows a moment to reach Slack (what is left stays in the outbox for another replica
or the next start), then close the pool. `Ephem.start` starts the outbox's drainer with the
executor; `Ephem.stop` stops it.

Slack's `auth.test` is asked in the background from the start and for as long as the process
runs (`bot.slack.startup`): while Slack refuses the bot token, or has been unreachable for long,
`/readyz` says why the process is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from bot.cli.app import build
from bot.config import Blueprint, Settings
from bot.errors import ConfigError
from bot.pg import redact
from bot.runtime import tune_gc
from bot.slack.bolt import build_bolt_app
from bot.slack.http import HttpServer
from bot.slack.socket_mode import SocketMode
from bot.slack.startup import TokenWatch
from bot.slack.writer import WebApiWriter
from bot.store.migrate import upgrade_async

log = logging.getLogger(__name__)


async def serve(settings: Settings, blueprint: Blueprint,
                *, stop: asyncio.Event | None = None) -> None:
    if not settings.database_url:
        raise ConfigError("EPHEM_DATABASE_URL is not set: it names Ephem's own database.")
    await upgrade_async(settings.database_url)
    app = build(settings, blueprint)
    bolt = build_bolt_app(settings=settings, handler=app.commands, notifier=app.notifier,
                          store=app.store, inflight=app.inflight)
    http = HttpServer(bolt_app=bolt, store=app.store, host=settings.http_host,
                      port=settings.http_port,
                      signing_secret=settings.slack_signing_secret.get_secret_value(),
                      max_body=settings.http_max_body)
    socket_mode = None
    if settings.socket_mode and settings.slack_app_token is not None:
        socket_mode = SocketMode(bolt_app=bolt,
                                 app_token=settings.slack_app_token.get_secret_value())
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    http.report("slack", "not asked yet")
    await http.start()
    await app.start()
    if socket_mode is not None:
        await socket_mode.start()
    watch = TokenWatch(bolt.client, report=lambda problem: http.report("slack", problem),
                       recheck=settings.slack_recheck_seconds,
                       unreachable_after=settings.slack_unreachable_seconds)
    if isinstance(app.writer, WebApiWriter):
        app.writer.on_trouble = watch.alarm
    token_watch = asyncio.create_task(watch.run(), name="ephem-slack-token")
    tune_gc()
    http.mark_ready()
    log.info("ephem serving on %s:%d (%s), state in %s, %d workers", settings.http_host,
             http.port, "socket mode" if socket_mode else "HTTP mode",
             redact(settings.database_url), settings.workers)
    try:
        await stop.wait()
    finally:
        log.info("stopping: draining acked requests and running jobs")
        http.mark_ready(False)
        token_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await token_watch
        if socket_mode is not None:
            await socket_mode.stop()
        await http.stop()
        await app.stop()
        log.info("stopped")
