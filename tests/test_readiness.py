"""`ephem serve` asks Slack's `auth.test` at start: a refused token or an unreachable Slack
makes `/readyz` answer 503 saying which, until Slack accepts the token."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import pytest

from bot.cli.serve import serve
from bot.config import Blueprint, Settings
from tests.slackapi import SlackApi, SlackSender, slack_api_fixture  # noqa: F401
from tests.test_serve import _free_port

TOKEN = "xoxb-readiness-secret-token"


async def _readyz_until(url: str, wanted: str, timeout: float = 30) -> tuple[int, str]:
    """Poll `/readyz` until its text starts with `wanted`; the last status and text."""
    async def poll() -> tuple[int, str]:
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as resp:
                        text = await resp.text()
                        if text.startswith(wanted):
                            return resp.status, text
                await asyncio.sleep(0.05)
    return await asyncio.wait_for(poll(), timeout)


@pytest.mark.parametrize(("break_slack", "said"), [
    ("refused", "not ready: slack: the bot token was refused (invalid_auth)"),
    ("down", "not ready: slack: unreachable"),
])
async def test_serve_is_not_ready_until_slack_accepts_the_token(
    slack_api: SlackApi, bot_db_url: str, caplog: pytest.LogCaptureFixture,
    break_slack: str, said: str,
) -> None:
    if break_slack == "refused":
        slack_api.fail("auth.test", times=1000, error="invalid_auth")
    else:
        slack_api.outage(disconnect=True)
    port = _free_port()
    settings = Settings(SLACK_BOT_TOKEN=TOKEN, SLACK_SIGNING_SECRET="readiness-secret",
                        SLACK_API_URL=slack_api.url, EPHEM_DATABASE_URL=bot_db_url,
                        EPHEM_HTTP_HOST="127.0.0.1", EPHEM_HTTP_PORT=port,
                        EPHEM_SECRET_KEY="readiness-test", EPHEM_POLL_SECONDS=0.2)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    running = asyncio.create_task(serve(settings, Blueprint.model_validate({}), stop=stop))
    readyz = f"http://127.0.0.1:{port}/readyz"
    try:
        status, text = await _readyz_until(readyz, "not ready: slack: ")
        if "not asked yet" in text:
            status, text = await _readyz_until(readyz, said)
        assert (status, text) == (503, said)
        assert len(slack_api.calls_to("auth.test")) >= 1

        slack_api.forgive("auth.test")
        slack_api.restore()
        status, text = await _readyz_until(readyz, "ready", timeout=30)
        assert (status, text) == (200, "ready")
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    logged = caplog.text
    assert said.removeprefix("not ready: slack: ") in logged
    assert "the bot token works" in logged
    assert TOKEN not in logged
    # Bolt is given a client and no token, so it has nothing to warn about.
    assert "token" not in " ".join(r.getMessage() for r in caplog.records
                                   if r.name.startswith(("ephem.bolt", "slack_bolt")))


def _settings(slack_api: SlackApi, bot_db_url: str, port: int, **more: object) -> Settings:
    return Settings(SLACK_BOT_TOKEN=TOKEN, SLACK_SIGNING_SECRET="readiness-secret",
                    SLACK_API_URL=slack_api.url, EPHEM_DATABASE_URL=bot_db_url,
                    EPHEM_HTTP_HOST="127.0.0.1", EPHEM_HTTP_PORT=port,
                    EPHEM_SECRET_KEY="readiness-test", EPHEM_POLL_SECONDS=0.2, **more)


async def test_after_start_up_a_revoked_token_or_a_long_outage_makes_it_not_ready(
    slack_api: SlackApi, bot_db_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    settings = _settings(slack_api, bot_db_url, port, EPHEM_SLACK_RECHECK_SECONDS=0.3,
                         EPHEM_SLACK_UNREACHABLE_SECONDS=1.0)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    running = asyncio.create_task(serve(settings, Blueprint.model_validate({}), stop=stop))
    readyz = f"http://127.0.0.1:{port}/readyz"
    try:
        assert await _readyz_until(readyz, "ready") == (200, "ready")
        slack_api.fail("auth.test", times=1000, error="token_revoked")
        said = "not ready: slack: the bot token was refused (token_revoked)"
        assert await _readyz_until(readyz, said) == (503, said)
        slack_api.forgive("auth.test")
        assert await _readyz_until(readyz, "ready") == (200, "ready")

        slack_api.outage(disconnect=True)
        status, text = await _readyz_until(readyz, "not ready: slack: unreachable for ")
        assert status == 503 and text.endswith("s")
        slack_api.restore()
        assert await _readyz_until(readyz, "ready") == (200, "ready")
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    assert "token_revoked" in caplog.text and TOKEN not in caplog.text


async def test_a_token_error_on_any_call_asks_auth_test_again_at_once(
    slack_api: SlackApi, bot_db_url: str, store: object,
) -> None:
    del store
    port = _free_port()
    # auth.test is asked again only every ten minutes on its own: readiness changing within
    # the test's deadline is the writer's alarm at work.
    settings = _settings(slack_api, bot_db_url, port, EPHEM_SLACK_RECHECK_SECONDS=600)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(settings, Blueprint.model_validate({}), stop=stop))
    base = f"http://127.0.0.1:{port}"
    try:
        assert await _readyz_until(base + "/readyz", "ready") == (200, "ready")
        sender = SlackSender(base + "/slack/events", "readiness-secret")
        # Bolt asks auth.test itself on the first request, and keeps the answer.
        status, _ = await sender.command("help", user_id="UANA", channel_id="CRD")
        assert status == 200
        await slack_api.wait_for("chat.postEphemeral", lambda c: "Usage" in str(c.params)
                                 or "Commands" in str(c.params), timeout=10)
        asked = len(slack_api.calls_to("auth.test"))
        slack_api.fail("auth.test", times=1000, error="invalid_auth")
        slack_api.fail("conversations.info", times=1000, error="invalid_auth")
        status, _ = await sender.command("create rd-1 --data none", user_id="UANA",
                                         channel_id="CRD")
        assert status == 200
        said = "not ready: slack: the bot token was refused (invalid_auth)"
        assert await _readyz_until(base + "/readyz", said) == (503, said)
        assert len(slack_api.calls_to("auth.test")) > asked
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
