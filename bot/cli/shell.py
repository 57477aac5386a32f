"""`ephem shell`: the bot's commands in a terminal, no Slack.

Type what you would type after `/ephem` (with or without the `/ephem`); the thread is rendered
as text. A button shown on a card is clicked by typing its label and the environment's name
(`Retry pr-142`, `Destroy pr-142`, `Connection details pr-142`), and asks the same confirmation
Slack's button asks. A command word alone (`destroy`) is always a command, and gets its usage:
nothing is clicked for a line that does not name the environment. The executor runs in the same
process, so environments really are created and destroyed.

On a terminal, lines can be edited and recalled (`readline`; history kept in
`$XDG_DATA_HOME/ephem/shell_history`), and output that arrives while you type is printed above
the line being typed. Piped input (`printf 'list\\n' | ephem shell`) is read line by line with no
prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot.cli.app import Ephem, build
from bot.cli.bootstrap import state_database
from bot.config import Settings, load_blueprint, user_data_dir
from bot.domain import JobStatus
from bot.ports import Invocation
from bot.slack import messages
from bot.slack.blocks import blocks_to_lines, plain
from bot.slack.writer import ConsoleWriter
from bot.store import repo
from handlers.parser import VERBS

PROMPT = "ephem> "
YES = ("y", "yes")


@dataclass(frozen=True)
class Button:
    label: str
    action_id: str
    value: str
    confirm: str | None = None  # the question Slack asks before the click counts


class ShellWriter(ConsoleWriter):
    """A console writer that also remembers the buttons it showed, newest last."""

    def __init__(self, out: Callable[[str], None], *, ansi: bool = False) -> None:
        super().__init__(out)
        self.buttons: list[Button] = []
        self._ansi = ansi

    def _render(self, text: str, blocks: Sequence[Mapping[str, Any]] | None) -> list[str]:
        for block in blocks or ():
            for element in block.get("elements", ()) if block.get("type") == "actions" else ():
                label = str(element.get("text", {}).get("text", ""))
                confirm = element.get("confirm")
                question = None
                if isinstance(confirm, dict):
                    title = str((confirm.get("title") or {}).get("text", ""))
                    body = str((confirm.get("text") or {}).get("text", ""))
                    question = plain(f"{title} {body}".strip())
                self.buttons.append(Button(label, str(element.get("action_id", "")),
                                           str(element.get("value", "")), question))
        lines = blocks_to_lines(blocks) if blocks else text.splitlines() or [""]
        return [plain(line, ansi=self._ansi) for line in lines]

    def find(self, line: str) -> Button | None:
        """The shown button that `line` names: its label, then the environment's name."""
        words = line.strip().lower()
        for button in reversed(self.buttons):
            if words == f"{button.label.lower()} {button.value.lower()}":
                return button
        return None

    def label_alone(self, line: str) -> list[Button]:
        """Shown buttons whose label is all of `line` (a click that names no environment)."""
        words = line.strip().lower()
        seen: dict[tuple[str, str], Button] = {}
        for button in self.buttons:
            if button.label.lower() == words:
                seen[(button.label, button.value)] = button
        return list(seen.values())


class Terminal:
    """Lines in (edited with readline on a terminal), text out above the line being typed."""

    def __init__(self, *, interactive: bool, history: Path | None) -> None:
        self.interactive = interactive
        self._history = history
        self._reading = False
        self._readline: Any = None
        if interactive:
            with contextlib.suppress(ImportError):
                import readline

                self._readline = readline
                if history is not None:
                    with contextlib.suppress(OSError):
                        readline.read_history_file(history)

    def write(self, text: str) -> None:
        if self._reading and self._readline is not None:
            # Clear the half-typed line, print above it, then show it again as it was.
            typed = self._readline.get_line_buffer()
            sys.stdout.write(f"\r\x1b[K{text}\n{PROMPT}{typed}")
            sys.stdout.flush()
        else:
            print(text, flush=True)

    async def read(self, prompt: str = PROMPT) -> str | None:
        loop = asyncio.get_running_loop()
        self._reading = True
        try:
            return await loop.run_in_executor(None, self._read, prompt)
        finally:
            self._reading = False

    def _read(self, prompt: str) -> str | None:
        if not self.interactive:
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        try:
            return input(prompt)
        except EOFError:
            return None

    def close(self) -> None:
        if self._readline is not None and self._history is not None:
            with contextlib.suppress(OSError):
                self._history.parent.mkdir(parents=True, exist_ok=True)
                self._readline.set_history_length(1000)
                self._readline.write_history_file(self._history)


async def handle_line(app: Ephem, writer: ShellWriter, terminal: Terminal, line: str, *,
                      user: str, channel: str) -> None:
    text = line.strip().removeprefix("/ephem").strip()
    if not text:
        return
    inv = Invocation(user_id=user, channel_id=channel, text=text, source="shell")
    button = writer.find(text)
    if button is not None and button.action_id.startswith("ephem:"):
        await click(app, writer, terminal, inv, button)
        return
    alone = writer.label_alone(text)
    if alone and text.split()[0].lower() not in VERBS:
        names = ", ".join(f"`{b.label} {b.value}`" for b in alone)
        terminal.write(plain(f"Name the environment: {names}."))
        return
    await app.invoke(inv)


async def click(app: Ephem, writer: ShellWriter, terminal: Terminal, inv: Invocation,
                button: Button) -> None:
    """Click `button` as Slack would: its confirmation first, when it has one."""
    if button.confirm is not None:
        question = f"{button.confirm} {button.label}? [y/N] "
        if not terminal.interactive:
            terminal.write(question)  # piped input has no prompt: say what the next line answers
        answer = await terminal.read(question)
        if (answer or "").strip().lower() not in YES:
            terminal.write(f"Not done: {button.label} {button.value} was not confirmed.")
            return
    replies = await app.commands.action(inv, action_id=button.action_id.removeprefix("ephem:"),
                                        value=button.value)
    await app.notifier.flush(only=await app.notifier.deliver(inv, replies))


_WORDS = ("exit", "quit")


def suggest(line: str) -> str | None:
    """`exti` → `exit`: the shell's own words, which the bot's parser does not know."""
    word = line.strip().lower()
    close = difflib.get_close_matches(word, _WORDS, n=1, cutoff=0.75)
    return close[0] if close and " " not in word else None


async def destroy_what_was_made(app: Ephem, *, user: str, channel: str,
                                 timeout: float = 300.0) -> None:
    """On the private server, leaving ends every environment made in the shell: its record
    goes with the server, so what it runs (components, workspaces, namespaces) is destroyed
    first rather than left running with nobody to answer for it."""
    async with app.store.transaction() as s:
        live = [env.name for env in await repo.live_environments(s)]
    if not live:
        return
    print(f"leaving: destroying {messages.count(len(live), 'live environment')} made here "
          "(the private PostgreSQL goes with the shell)", file=sys.stderr)
    for name in live:
        await app.invoke(Invocation(user_id=user, channel_id=channel, text=f"destroy {name}",
                                    source="shell"))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with app.store.transaction() as s:
            left = [env.name for env in await repo.live_environments(s)
                    if await repo.pending_jobs(s, env.id)]  # a failed destroy has said so
        if not left:
            return
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    print(f"leaving: {', '.join(left)} not destroyed within {timeout:g} s; what it runs may "
          "be left behind", file=sys.stderr)


async def say_what_waits(app: Ephem, *, user: str) -> None:
    """On a kept server, what `user` asked for here and no worker has started stays queued
    when the shell leaves: say so, rather than leave as if it were done (a `destroy` typed
    while the create was still running would otherwise seem to have been lost)."""
    async with app.store.transaction() as s:
        waiting = [f"{job.kind.value.replace('_', '-')} {env.name}"
                   for env in await repo.live_environments(s)
                   for job in await repo.pending_jobs(s, env.id)
                   if job.status is JobStatus.QUEUED and job.requested_by == user]
    if waiting:
        print(f"leaving: not started yet: {', '.join(waiting)}; queued work runs when "
              "`ephem serve` or `ephem shell` next runs on this database", file=sys.stderr)


async def run_shell(settings: Settings, *, user: str, channel: str) -> int:
    blueprint = load_blueprint(settings.config)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    terminal = Terminal(interactive=interactive, history=user_data_dir() / "shell_history")
    notes = []
    if not settings.secret_key.get_secret_value():
        settings = settings.model_copy(update={"secret_key": SecretStr(secrets.token_hex(32))})
        notes.append("EPHEM_SECRET_KEY is not set, so the passwords of environments made here "
                     "come from a key that lasts until you leave the shell.")
    embedded = not settings.database_url
    if embedded:
        notes.append("EPHEM_DATABASE_URL is not set: Ephem's state and the environments' "
                     "databases live in a private PostgreSQL that is deleted when you leave the "
                     "shell. Nothing made here is kept.")
    async with state_database(settings) as url:
        writer = ShellWriter(terminal.write, ansi=interactive)
        app = build(settings.model_copy(update={"database_url": url}), blueprint, writer=writer,
                    reconcile=False)
        await app.start()
        print(f"Ephem shell as {user} in {channel}. Type `help`; Ctrl-D to leave.", flush=True)
        for note in notes:
            print(f"Note: {note}", flush=True)
        try:
            while (line := await terminal.read()) is not None:
                if line.strip() in _WORDS:
                    break
                if (word := suggest(line)) is not None:
                    terminal.write(f"`{line.strip()}` is not a command; did you mean `{word}`?")
                    continue
                await handle_line(app, writer, terminal, line, user=user, channel=channel)
        finally:
            terminal.close()
            if embedded:
                await destroy_what_was_made(app, user=user, channel=channel)
            else:
                await say_what_waits(app, user=user)
            print("leaving: waiting for running steps to finish", file=sys.stderr)
            await app.stop()
    return 0
