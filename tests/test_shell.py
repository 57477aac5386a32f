"""`ephem shell` driven as a person would: a terminal process, lines typed, output read."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml

from bot.pg import asyncpg_dsn, quote_ident
from tests.conftest import as_user


class Terminal:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen = ""
        self.pos = 0  # where the last expected text ended

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, timeout: float = 30) -> str:
        """Read output until `pattern` appears after what was already matched."""
        assert self.proc.stdout is not None
        start = self.pos
        regex = re.compile(pattern)

        async def read() -> str:
            while not (m := regex.search(self.seen, start)):
                chunk = await self.proc.stdout.read(4096)  # type: ignore[union-attr]
                if not chunk:
                    raise AssertionError(f"shell exited; output:\n{self.seen}")
                self.seen += chunk.decode()
            self.pos = m.end()
            return m.group(0)

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} in:\n{self.seen[start:]}") from None


@pytest.fixture
async def weak_role(pg_admin_url: str, db_prefix: str) -> str:
    """A login role that may connect but not create databases (yet)."""
    role = f"{db_prefix}shellweak"
    conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")
    await conn.execute(f"CREATE ROLE {quote_ident(role)} LOGIN")
    await conn.close()
    return role


async def test_shell_runs_commands_and_clicks_buttons_by_label(
    tmp_path: Path, bot_db_url: str, pg_admin_url: str, db_prefix: str, weak_role: str,
    store: object,
) -> None:
    del store  # the bot's tables start empty
    server = as_user(pg_admin_url, weak_role)
    (tmp_path / "ephem.yaml").write_text(yaml.safe_dump({
        "phases": {"data": {"server": server, "database_prefix": db_prefix}},
        "retries": {"attempts": 1, "backoff": "1s"},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(tmp_path / "ephem.yaml"),
            "EPHEM_POLL_SECONDS": "0.1", "EPHEM_SECRET_KEY": "shell-test"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "shell", "--user", "UANA",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env)
    term = Terminal(proc)
    try:
        await term.expect(r"Ephem shell as UANA")
        await term.type("/ephem create sh-1")
        await term.expect(r"sh-1 · failed")
        await term.expect(r"\[Retry\] \[Destroy\]")

        conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
        await conn.execute(f"ALTER ROLE {quote_ident(weak_role)} CREATEDB CREATEROLE")
        await conn.close()
        await term.type("Retry")  # a label alone names no environment: nothing is clicked
        await term.expect(r"Name the environment: Retry sh-1\.")
        await term.type("Retry sh-1")  # clicks the Retry button shown on the card
        await term.expect(r"sh-1 · ready")
        await term.expect(r"\[Extend\] \[Destroy\] \[Reset data\] \[Connection details\]")
        await term.type("status sh-1")
        await term.expect(r"sh-1 is ready")  # mrkdwn rendered for a terminal: no *stars*

        # A command word alone is a command: usage, and nothing is destroyed.
        await term.type("destroy")
        await term.expect(r"`?destroy`? needs the name of an environment")
        await term.type("status sh-1")
        await term.expect(r"sh-1 is ready")

        # The button, named, asks what Slack's button asks; only yes destroys.
        await term.type("Destroy sh-1")
        await term.expect(r"Destroy this environment\? sh-1 and its database will be deleted\. "
                          r"This cannot be undone\. Destroy\? \[y/N\]")
        await term.type("n")
        await term.expect(r"Not done: Destroy sh-1 was not confirmed")
        await term.type("status sh-1")
        await term.expect(r"sh-1 is ready")
        await term.type("Destroy sh-1")
        await term.expect(r"\[y/N\]")
        await term.type("y")
        await term.expect(r"sh-1 · destroyed")
        await term.type("frobnicate")
        await term.expect(r"not a command I know")
        await term.type("crate sh-2")
        await term.expect(r"Did you mean create\?")
        await term.type("exit")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in term.seen


class SlowHandshakes:
    """A TCP proxy to PostgreSQL that holds each new connection's first answer for `delay`
    seconds, as a far or busy server does; afterwards bytes flow at once."""

    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SlowHandshakes:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, hold: float) -> None:
            try:
                while data := await r.read(65536):
                    if hold:
                        await asyncio.sleep(hold)
                        hold = 0
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, server_w, 0), pipe(server_r, client_w, self.delay))


async def test_piped_help_leaves_cleanly_and_says_the_key_note_once(
    bot_db_url: str, pg_admin_url: str
) -> None:
    """`printf 'help\\n' | ephem shell`: the shell leaves while its background connections are
    still being opened; nothing may be left failing unread ('Future exception was never
    retrieved … connection_lost()'), and the first thing said is not a log warning."""
    parts = urlsplit(bot_db_url)
    if not parts.hostname:
        pytest.skip("the proxy needs a TCP server (the embedded one listens on a socket)")
    async with SlowHandshakes(parts.hostname, parts.port or 5432, delay=1.0) as proxy:
        slow_url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
        env |= {"EPHEM_DATABASE_URL": slow_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "shell", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
        out, _ = await asyncio.wait_for(proc.communicate(b"help\n"), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "Commands:" in text
    assert "never retrieved" not in text and "Traceback" not in text, text
    assert "WARNING" not in text, text
    assert text.splitlines()[0].startswith("Ephem shell as U_SHELL")
    assert text.count("EPHEM_SECRET_KEY is not set") == 1


async def test_on_a_terminal_lines_are_recalled_with_the_up_arrow(
    tmp_path: Path, bot_db_url: str
) -> None:
    """readline on a real pseudo-terminal: a line typed before comes back with ↑."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_SECRET_KEY": "pty-test",
            "XDG_DATA_HOME": str(tmp_path), "TERM": "xterm"}
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "shell", stdin=slave, stdout=slave, stderr=slave,
        env=env)
    os.close(slave)
    seen = b""

    async def expect(pattern: bytes, after: int) -> int:
        nonlocal seen
        loop = asyncio.get_running_loop()
        while (found := seen.find(pattern, after)) < 0:
            chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, master, 4096), 30)
            seen += chunk
        return found + len(pattern)

    try:
        at = await expect(b"ephem> ", 0)
        os.write(master, b"help status\r")
        at = await expect(b"Usage: /ephem status NAME", at)  # on a terminal: no backticks
        at = await expect(b"ephem> ", at)
        os.write(master, b"\x1b[A\r")  # up arrow, enter: the same line again
        at = await expect(b"Usage: /ephem status NAME", at)
        at = await expect(b"ephem> ", at)
        os.write(master, b"\x04")  # Ctrl-D leaves
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert b"Traceback" not in seen
    assert (tmp_path / "ephem" / "shell_history").read_text().splitlines()[-1] == "help status"


async def test_piped_commands_are_answered_in_order_before_the_shell_leaves(
    bot_db_url: str
) -> None:
    """Each command's answer is out before the next line is read: piped input reads as a
    transcript, answers under their commands, none after 'leaving'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "shell", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await asyncio.wait_for(
        proc.communicate(b"help destroy\nlist --mine\nhelp extend\n"), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    said = [text.find(s) for s in ("Usage: /ephem destroy", "live environment",
                                   "Usage: /ephem extend", "leaving:")]
    assert -1 not in said and said == sorted(said), text


async def test_leaving_a_kept_server_says_what_has_not_started(
    bot_db_url: str, tmp_path: Path, store: object
) -> None:
    """On EPHEM_DATABASE_URL the shell leaves what it queued to the next Ephem on that
    database; a `destroy` not started yet is said, not silently left (no workers here, so
    nothing starts)."""
    del store  # the bot's tables start empty
    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({"defaults": {"data": "none"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint),
            "EPHEM_WORKERS": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "shell", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(b"create lq-1\n"), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert ("leaving: not started yet: create lq-1; queued work runs when `ephem serve` or "
            "`ephem shell` next runs on this database") in text, text
