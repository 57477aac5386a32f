"""Every secret Ephem is given is known to `bot.redaction` from the moment it arrives, and none
reaches a channel or the log — even when a tool prints its whole environment and fails.

The unit tests check each place a secret arrives (settings, `${VAR}`, URL passwords, derived
passwords, `pass_env`); the scenario runs a real `ephem serve` with a migration command that
dumps its environment and exits non-zero, and reads what the local Slack received and what the
process logged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from bot import redaction
from bot.config import Settings, parse_blueprint
from bot.domain import DataMode, DataRequest, ReleaseSet
from bot.errors import ConfigError, PermanentError
from bot.store import Store
from bot.store.models import Environment
from pipelines.attempt import Failure
from pipelines.base import PhaseContext
from tests.slackapi import SlackApi, SlackSender, slack_api_fixture  # noqa: F401
from tests.test_serve import _free_port, _ready


def _secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}"


def test_settings_register_their_tokens_keys_and_the_state_database_password() -> None:
    values = {name: _secret(name) for name in ("bot", "signing", "app", "key", "masking", "db")}
    Settings(SLACK_BOT_TOKEN=values["bot"], SLACK_SIGNING_SECRET=values["signing"],
             SLACK_APP_TOKEN=values["app"], EPHEM_SECRET_KEY=values["key"],
             EPHEM_MASKING_KEY=values["masking"],
             EPHEM_DATABASE_URL=f"postgresql://ephem:{values['db']}@db:5432/ephem")
    for value in values.values():
        assert redaction.scrub(f"x {value} y") == "x *** y"


def test_a_blueprint_registers_what_it_takes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    admin, source, passed = _secret("admin"), _secret("source"), _secret("passed")
    monkeypatch.setenv("T_ADMIN_PW", admin)
    monkeypatch.setenv("T_SOURCE_URL", f"postgresql://reader:{source}@prod:5432/shop")
    monkeypatch.setenv("T_API_KEY", passed)
    written = _secret("written")  # a literal password in the file: caught by its URL shape
    blueprint = parse_blueprint({"phases": {"data": {
        "server": "postgresql://postgres:${T_ADMIN_PW}@db:5432/postgres",
        "migrations": {"kind": "command", "command": ["migrate"],
                       "env": {"API_KEY": "${T_API_KEY}", "MODE": "${T_MODE:-plain-default}"},
                       "pass_env": ["T_PASSED"]},
        "snapshots": {"prod": {"source": "${T_SOURCE_URL}", "rules": "masking.yaml"},
                      "other": {"source": f"postgresql://u:{written}@db/x",
                                "rules": "masking.yaml"}},
    }}})
    assert blueprint.phases.data is not None and blueprint.phases.data.migrations is not None
    assert blueprint.phases.data.migrations.env == {"API_KEY": passed, "MODE": "plain-default"}
    for value in (admin, source, passed, written):
        assert redaction.scrub(f"[{value}]") == "[***]"
    assert redaction.scrub("plain-default") == "plain-default"  # written in the file: not secret


def test_the_environment_keys_of_a_migration_command_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"migrations\.env"):
        parse_blueprint({"phases": {"data": {"migrations": {
            "kind": "command", "command": ["x"], "env": {"NOT A NAME": "v"}}}}})
    with pytest.raises(ConfigError, match="only for kind `command`"):
        parse_blueprint({"phases": {"data": {"migrations": {"pass_env": ["HOME"]}}}})


def test_derived_secrets_are_registered_when_derived() -> None:
    ctx = PhaseContext(env_id=7, name="pr-7", owner_id="U1", release_set=ReleaseSet({}),
                       data=DataRequest(DataMode.NONE), blueprint=parse_blueprint({}), outputs={},
                       emit=_nothing, secret_key=secrets.token_bytes(16))
    password = ctx.derive_secret("db-password")
    assert redaction.scrub(f"PGPASSWORD={password}") == "PGPASSWORD=***"


def test_failures_shown_in_the_thread_are_scrubbed() -> None:
    secret = _secret("tail")
    redaction.register(secret)
    failure = Failure.of(PermanentError(f"migrate failed with {secret}",
                                        details=f"line 1\nTOKEN={secret}\n"))
    assert secret not in failure.reason and secret not in (failure.details or "")
    assert failure.details == "line 1\nTOKEN=***\n"


async def _nothing(_: str) -> None:
    return None


async def test_the_cli_log_scrubs_every_line_from_every_logger() -> None:
    secret = _secret("logged")
    code = ("import logging, sys\n"
            "from bot import redaction\n"
            "from bot.cli.main import _setup_logging\n"
            "redaction.register(sys.argv[1])\n"
            "_setup_logging('INFO')\n"
            "logging.getLogger('some.library').warning('connecting with %s', sys.argv[1])\n"
            "try:\n"
            "    raise RuntimeError('refused: ' + sys.argv[1])\n"
            "except RuntimeError:\n"
            "    logging.getLogger('bot.x').exception('failed')\n")
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, secret,
                                                 stderr=asyncio.subprocess.PIPE)
    _, err = await child.communicate()
    written = err.decode()
    assert child.returncode == 0, written
    assert "connecting with ***" in written and "RuntimeError: refused: ***" in written
    assert secret not in written


# --------------------------------------------------------------------------- end to end

SIGNING = "secrets-signing-secret"


async def test_a_tool_that_prints_its_environment_and_fails_leaks_nothing(
    slack_api: SlackApi, bot_db_url: str, pg_admin_url: str, db_prefix: str, tmp_path: Path,
    store: Store,
) -> None:
    admin_pw, source_pw, api_key = _secret("adminpw"), _secret("sourcepw"), _secret("apikey")
    token, secret_key = f"xoxb-{_secret('tok')}", _secret("serve-key")
    (tmp_path / "masking.yaml").write_text("tables: {}\n")
    # The test server trusts local connections, so the admin URL's password is not checked:
    # it is there to be leaked, and must not be.
    admin_url = pg_admin_url.replace("postgresql://postgres@",
                                     "postgresql://postgres:${T_ADMIN_PW}@")
    assert "${T_ADMIN_PW}" in admin_url
    dump = ("import os, sys\n"
            "print('all at once:', ' '.join(os.environ.values()))\n"
            "for k, v in sorted(os.environ.items()): print(f'{k}={v}')\n"
            "sys.exit(3)\n")
    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({"phases": {"data": {
        "server": admin_url, "database_prefix": db_prefix,
        "migrations": {"kind": "command", "command": [sys.executable, "-c", dump],
                       "env": {"PROJECT_API_KEY": "${T_API_KEY}"},
                       "pass_env": ["T_SOURCE_URL"]},
        "snapshots": {"prod": {"source": "${T_SOURCE_URL}", "rules": "masking.yaml",
                               "pool": 0}},
    }}}))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint),
            "SLACK_BOT_TOKEN": token, "SLACK_SIGNING_SECRET": SIGNING,
            "SLACK_API_URL": slack_api.url, "EPHEM_HTTP_PORT": str(port),
            "EPHEM_HTTP_HOST": "127.0.0.1", "EPHEM_POLL_SECONDS": "0.2",
            "EPHEM_SECRET_KEY": secret_key, "EPHEM_GRACE_SECONDS": "5",
            "EPHEM_LOG_LEVEL": "DEBUG",
            "T_ADMIN_PW": admin_pw, "T_API_KEY": api_key,
            "T_SOURCE_URL": f"postgresql://reader:{source_pw}@127.0.0.1:5432/postgres"}
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    password = ""
    try:
        await _ready(f"http://127.0.0.1:{port}/readyz")
        sender = SlackSender(f"http://127.0.0.1:{port}/slack/events", SIGNING)
        status, _ = await sender.command("create leak-1 --data none", user_id="UANA",
                                         channel_id="CLEAK")
        assert status == 200
        # The failure, with the tool's output tail, reaches the thread.
        tail = await slack_api.wait_for(
            "chat.postMessage", lambda c: "the end of the output" in str(c.params), timeout=60)
        shown = str(tail[0].params)
        assert "PGPASSWORD=***" in shown and "DATABASE_URL=postgresql://" in shown
        assert "PROJECT_API_KEY=***" in shown and "T_SOURCE_URL=***" in shown
        await slack_api.wait_for("chat.update",
                                 lambda c: "leak-1 · failed" in str(c.params.get("blocks")),
                                 timeout=30)
        password = await _derived_password(store, "leak-1", secret_key)
    finally:
        if bot.returncode is None:
            bot.send_signal(signal.SIGTERM)
        await asyncio.wait_for(bot.wait(), 30)
        assert bot.stdout is not None
        log = (await bot.stdout.read()).decode()
    said = repr([c.params for c in slack_api.calls])
    # The tool saw them all (its environment was printed), yet neither Slack nor the log did.
    for value in (admin_pw, source_pw, api_key, token, secret_key, SIGNING, password):
        assert value not in said, f"{value} reached Slack"
        assert value not in log, f"{value} reached the log"
    assert "ADMIN_PW" not in said  # the ${VAR} behind `server:` was not passed to the tool
    assert "Traceback" not in log


async def _derived_password(store: Store, name: str, key: str) -> str:
    """The environment's password, derived as the data phase derives it (the owner never got
    it: the phase failed), so the test can look for it."""
    async with store.transaction() as s:
        env_id = (await s.execute(select(Environment.id).where(Environment.name == name))
                  ).scalar_one()
    ctx = PhaseContext(env_id=env_id, name=name, owner_id="UANA", release_set=ReleaseSet({}),
                       data=DataRequest(DataMode.NONE), blueprint=parse_blueprint({}), outputs={},
                       emit=_nothing, secret_key=key.encode())
    return ctx.derive_secret("db-password")
