"""What `ephem serve` writes to stderr, read as an operator's log collector reads it.

A real bot process gets a signed `/ephem create` and runs the job. With stderr on a pipe every
line is a JSON object; the command has one INFO line (who, what, which environment, outcome),
each job and phase transition one more, and the lines written while the job ran carry its
environment and job ids. With stderr on a terminal (a pseudo-terminal here) the same lines are
plain text with `[env=… job=…]`. No line holds a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.slackapi import SlackApi, SlackSender, slack_api_fixture  # noqa: F401
from tests.test_serve import _free_port, _ready

SIGNING = "logs-signing-secret-value"
TOKEN = "xoxb-logs-secret-token"
KEY = "logs-secret-key-value"


def _env(slack_api: SlackApi, bot_db_url: str, blueprint: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    return env | {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint),
                  "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SIGNING,
                  "SLACK_API_URL": slack_api.url, "EPHEM_HTTP_PORT": str(port),
                  "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_POLL_SECONDS": "0.2",
                  "EPHEM_SECRET_KEY": KEY, "EPHEM_GRACE_SECONDS": "5"}


def _blueprint(tmp_path: Path, pg_admin_url: str, db_prefix: str) -> Path:
    path = tmp_path / "ephem.yaml"
    path.write_text(yaml.safe_dump({
        "phases": {"data": {"server": pg_admin_url, "database_prefix": db_prefix}}}))
    return path


async def _create_and_stop(slack_api: SlackApi, port: int, name: str,
                           proc: asyncio.subprocess.Process) -> None:
    base = f"http://127.0.0.1:{port}"
    try:
        await _ready(base + "/readyz")
        sender = SlackSender(base + "/slack/events", SIGNING)
        status, _ = await sender.command(f"create {name}", user_id="UANA", channel_id="CLOG")
        assert status == 200
        await slack_api.wait_for(
            "chat.update", lambda c: f"{name} · ready" in str(c.params.get("blocks")), timeout=60)
        status, _ = await sender.command("destroy nosuch-env", user_id="UBEN", channel_id="CLOG")
        assert status == 200
        await slack_api.wait_for("chat.postEphemeral",
                                 lambda c: "nosuch-env" in str(c.params.get("text")), timeout=10)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_serve_logs_json_lines_with_the_environment_and_job_on_each(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, tmp_path: Path,
    store: object,
) -> None:
    del store
    port = _free_port()
    env = _env(slack_api, bot_db_url, _blueprint(tmp_path, pg_admin_url, db_prefix), port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await _create_and_stop(slack_api, port, "lg-1", proc)
    assert proc.stderr is not None
    output = (await proc.stderr.read()).decode()
    assert proc.returncode == 0, output
    for secret in (TOKEN, SIGNING, KEY):
        assert secret not in output
    lines: list[dict[str, Any]] = [json.loads(line) for line in output.splitlines()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    # SLACK_BOT_TOKEN is set, and Ephem hands bolt its own client: no warning about that.
    assert not [x for x in lines if x["logger"] == "ephem.bolt" and x["level"] == "WARNING"]

    [create] = [x for x in lines if x.get("event") == "command" and x.get("verb") == "create"]
    assert create["level"] == "INFO"
    assert (create["user"], create["env"], create["outcome"]) == ("UANA", "lg-1", "ok")
    env_id = create["env_id"]
    assert isinstance(env_id, int)
    [refused] = [x for x in lines if x.get("event") == "command" and x.get("verb") == "destroy"]
    assert (refused["user"], refused["env"], refused["outcome"]) == ("UBEN", "nosuch-env",
                                                                     "refused")

    jobs = [x for x in lines if x.get("event") == "job"]
    assert [x["status"] for x in jobs] == ["running", "succeeded"]
    job_id = jobs[0]["job_id"]
    assert all(x["env_id"] == env_id and x["job_id"] == job_id for x in jobs)
    phases = [x for x in lines if x.get("event") == "phase"]
    assert [(x["phase"], x["status"]) for x in phases] == [("data", "running"),
                                                           ("data", "succeeded")]
    assert all(x["env"] == "lg-1" and x["job_id"] == job_id for x in phases)
    # Every line written between the claim and the outcome is about that job.
    first, last = lines.index(jobs[0]), lines.index(jobs[-1])
    during = [x for x in lines[first:last + 1] if x["logger"].startswith(("pipelines", "bot.exec"))]
    assert during and all(x.get("job_id") == job_id for x in during)


async def test_serve_on_a_terminal_logs_plain_lines(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, tmp_path: Path,
    store: object,
) -> None:
    del store
    port = _free_port()
    env = _env(slack_api, bot_db_url, _blueprint(tmp_path, pg_admin_url, db_prefix), port)
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the child closed its end
            while data := os.read(leader, 65536):
                chunks.append(data)

    reader = asyncio.get_running_loop().run_in_executor(None, read)
    try:
        await _create_and_stop(slack_api, port, "lg-2", proc)
        await asyncio.wait_for(reader, 10)
    finally:
        os.close(leader)
    output = b"".join(chunks).decode()
    assert proc.returncode == 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and not any(line.lstrip().startswith("{") for line in lines)
    [command] = [line for line in lines if "create lg-2 by UANA" in line]
    assert " INFO handlers.commands: " in command and command.endswith("]")
    assert "env=lg-2" in command and ": ok" in command
    claimed = [line for line in lines if "claimed (attempt 1)" in line]
    assert len(claimed) == 1 and "job_id=" in claimed[0] and "env_id=" in claimed[0]
    assert TOKEN not in output and KEY not in output
