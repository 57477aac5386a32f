"""HTTP mode: Slack's signed requests in, health and metrics out, on one aiohttp server.

Why: in HTTP mode Slack posts commands, button clicks and events to `POST /slack/events`, and
the platform running Ephem (Kubernetes, see `helm/`) needs probes and a scrape target. One small
server does both, so there is one port to expose. `/healthz` only says the process answers;
`/readyz` says it can do its job — it was marked ready by the composition root (after start-up),
no dependency is reported broken (`report`: Slack refusing the bot token, or unreachable), and the
store answers — so a pod with a lost database or a bad token stops receiving traffic without being
restarted, and the probe's answer says which.

`POST /slack/events` trusts nothing before the signature: the body is read up to
`max_body` bytes (413 beyond, with a constant body), its v0 signature is checked on the raw bytes
(401 with a constant body otherwise, and one short log line naming what was wrong — never the
body, never a traceback), and only then is it parsed and its shape checked (`bot.slack.inbound`;
400 with a constant body when it is not something Slack sends; 404 when it is an interaction
Ephem has no listener for, a modal's or a shortcut's, which bolt is not given). Bolt gets the
parsed body and does not verify again (`request_verification_enabled=False`, see
`bot.slack.bolt`): nothing unsigned ever reaches a listener, an error handler or the Slack Web
API. The time to ack is measured here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest

from bot import metrics
from bot.slack import inbound
from bot.store import Store

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
PING_TIMEOUT = 2.0
DEFAULT_MAX_BODY = 64 * 1024  # Slack's requests to Ephem are a few KB (a click carries its card)

# Constant answers: a refused request learns nothing from the body of the answer.
UNSIGNED = "refused: not signed by Slack\n"
MALFORMED = "refused: not a request Ephem can read\n"
UNHANDLED = "refused: Ephem does not answer this kind of request\n"
TOO_LARGE = "refused: the request body is too large\n"


class HttpServer:
    """`POST /slack/events`, `GET /healthz`, `GET /readyz`, `GET /metrics`."""

    def __init__(self, *, bolt_app: AsyncApp, store: Store, host: str, port: int,
                 signing_secret: str, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._bolt = bolt_app
        self._store = store
        self._secret = signing_secret  # empty (Socket Mode without one): every POST is refused
        self._max_body = max_body
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._ready = False
        self._problems: dict[str, str] = {}
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

    def report(self, dependency: str, problem: str | None) -> None:
        """Say what is wrong with `dependency` (a short phrase shown by `/readyz`, never a
        secret), or None once it works again. Any problem makes the process not ready."""
        if problem is None:
            self._problems.pop(dependency, None)
        else:
            self._problems[dependency] = problem

    async def start(self) -> None:
        app = web.Application(client_max_size=self._max_body)
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
        raw = await self._read(request)
        if raw is None:
            return _refuse(request, 413, TOO_LARGE, "too_large",
                           f"a body over {self._max_body} bytes")
        problem = inbound.signature_problem(
            secret=self._secret, body=raw,
            timestamp=_single(request, "X-Slack-Request-Timestamp"),
            signature=_single(request, "X-Slack-Signature"), now=time.time())
        if problem is not None:
            return _refuse(request, 401, UNSIGNED, "unsigned", problem)
        try:
            encoding, body = inbound.read_body(raw, request.content_type)
            kind = inbound.check(encoding, body)
            if kind is inbound.Kind.INTERACTION:
                # No listener takes it, and bolt reads parts of such payloads (a view's type,
                # a workflow step) unchecked while looking for one: a 500 with a trace.
                return _refuse(request, 404, UNHANDLED, "unhandled",
                               "signed, but an interaction Ephem has no listener for")
            bolt_request = _bolt_request(raw.decode(), body, request)
        except inbound.Malformed as exc:
            return _refuse(request, 400, MALFORMED, "malformed", f"signed, but {exc}")
        except Exception as exc:  # bolt could not build its context from a body we accepted
            return _refuse(request, 400, MALFORMED, "malformed",
                           f"signed, but bolt cannot read it ({type(exc).__name__})")
        bolt_response = await self._bolt.async_dispatch(bolt_request)
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        return await to_aiohttp_response(bolt_response)

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None when it is larger than `max_body` (said or found while reading)."""
        if request.content_length is not None and request.content_length > self._max_body:
            return None
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return None


    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if not self._ready:
            return web.Response(status=503, text="not ready: starting or stopping")
        if self._problems:
            why = "; ".join(f"{name}: {problem}" for name, problem in self._problems.items())
            return web.Response(status=503, text=f"not ready: {why}")
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT)
        except Exception as exc:
            log.warning("readyz: the store does not answer (%s)", type(exc).__name__)
            return web.Response(status=503, text="not ready: the database does not answer")
        return web.Response(text="ready")

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _refuse(request: web.Request, status: int, text: str, reason: str, why: str
            ) -> web.Response:
    """Answer `status` with the constant `text`. Logged in one line of our own words (`why`
    is a fixed phrase) and the sender's address: no body, no header, no traceback."""
    log.warning("slack: refused a request from %s with %d: %s", request.remote, status, why)
    metrics.SLACK_REFUSED.labels(reason).inc()
    return web.Response(status=status, text=text)


def _single(request: web.Request, header: str) -> str | None:
    """The header's value; None when it is missing or given more than once."""
    values = request.headers.getall(header, [])
    return values[0] if len(values) == 1 else None


def _bolt_request(text: str, body: dict[str, Any], request: web.Request) -> AsyncBoltRequest:
    """A bolt request carrying the body as `bot.slack.inbound` read it.

    Bolt's own parser is not used: it reads a form as a JSON payload whenever the word
    "payload" appears anywhere in it (so `/ephem create --reason payload fix` would arrive
    empty), and it raises on bodies it cannot parse. The request is built empty and given the
    body and its context afterwards, as bolt's constructor would have.
    """
    headers: dict[str, str | Sequence[str]] = {k: request.headers.getall(k)
                                               for k in request.headers}
    bolt_request = AsyncBoltRequest(body="", query=request.query_string, headers=headers)
    bolt_request.raw_body = text
    bolt_request.body = body
    bolt_request.context = build_async_context(AsyncBoltContext({}), body)
    return bolt_request
