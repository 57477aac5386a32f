"""`ephem serve` as it runs in production: a process on a port, signed requests from "Slack",
a local Slack Web API, and SIGTERM to stop it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.slackapi import SlackApi, SlackSender, slack_api_fixture  # noqa: F401

SECRET = "serve-signing-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ready(url: str, timeout: float = 30) -> None:
    async def poll() -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
    await asyncio.wait_for(poll(), timeout)


async def test_serve_answers_slack_and_stops_cleanly_on_sigterm(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, tmp_path: Path,
    store: object,
) -> None:
    del store  # the bot's tables start empty
    port = _free_port()
    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({
        "phases": {"data": {"server": pg_admin_url, "database_prefix": db_prefix}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint),
            "SLACK_BOT_TOKEN": "xoxb-serve", "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack_api.url, "EPHEM_HTTP_PORT": str(port),
            "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_POLL_SECONDS": "0.2",
            "EPHEM_SECRET_KEY": "serve-test", "EPHEM_GRACE_SECONDS": "10"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    password = "(never delivered)"
    try:
        await _ready(base + "/readyz")
        sender = SlackSender(base + "/slack/events", SECRET)
        status, _ = await sender.command("create sv-1", user_id="UANA", channel_id="CSRV")
        assert status == 200
        # The card reaches the ready state: the executor ran the data phase in that process.
        await slack_api.wait_for(
            "chat.update", lambda c: "sv-1 · ready" in str(c.params.get("blocks")), timeout=30)
        creds = await slack_api.wait_for("chat.postEphemeral",
                                         lambda c: "postgresql://" in str(c.params), timeout=10)
        assert creds[0].params["user"] == "UANA"
        url = next(w for w in str(creds[0].params["text"]).split() if "postgresql://" in w)
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        bad, _ = await sender.command("status sv-1", secret="not-the-secret")
        assert bad == 401
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        assert proc.stdout is not None
        output = (await proc.stdout.read()).decode()
    assert code == 0, output
    assert "stopped" in output and "Traceback" not in output
    # No secret in the log: not the keys, not the token, not the environment's password.
    assert "serve-test" not in output and "xoxb-serve" not in output
    assert password not in output
    # The environment's database and role carry the session's prefix: the session drops them.
