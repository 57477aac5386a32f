"""`ephem shell`: the bot's commands in a terminal, no Slack.

Type what you would type after `/ephem` (with or without the `/ephem`); the thread is rendered
as text. Buttons are clicked by typing their label, optionally with the environment's name
(`Retry`, `Destroy pr-142`). The executor runs in the same process, so environments really are
created and destroyed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.cli.app import Ephem, build
from bot.cli.bootstrap import state_database
from bot.config import Settings, load_blueprint
from bot.ports import Invocation
from bot.slack.writer import ConsoleWriter

PROMPT = "ephem> "


@dataclass(frozen=True)
class Button:
    label: str
    action_id: str
    value: str


class ShellWriter(ConsoleWriter):
    """A console writer that also remembers the buttons it showed, newest last."""

    def __init__(self, out: Callable[[str], None]) -> None:
        super().__init__(out)
        self.buttons: list[Button] = []

    def _render(self, text: str, blocks: Sequence[Mapping[str, Any]] | None) -> list[str]:
        for block in blocks or ():
            for element in block.get("elements", ()) if block.get("type") == "actions" else ():
                label = str(element.get("text", {}).get("text", ""))
                self.buttons.append(Button(label, str(element.get("action_id", "")),
                                           str(element.get("value", ""))))
        return super()._render(text, blocks)

    def find(self, line: str) -> Button | None:
        label, _, name = line.strip().partition(" ")
        for button in reversed(self.buttons):
            if button.label.lower() == label.lower() and (not name or button.value == name):
                return button
        return None


async def _lines() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, _read)
        if line is None:
            return
        yield line


def _read() -> str | None:
    try:
        return input(PROMPT)
    except EOFError:
        return None


async def handle_line(app: Ephem, writer: ShellWriter, line: str, *, user: str,
                      channel: str) -> None:
    text = line.strip()
    if not text:
        return
    inv = Invocation(user_id=user, channel_id=channel, text=text.removeprefix("/ephem").strip(),
                     source="shell")
    button = writer.find(text)
    if button is not None and button.action_id.startswith("ephem:"):
        replies = await app.commands.action(inv, action_id=button.action_id.removeprefix("ephem:"),
                                            value=button.value)
        await app.notifier.deliver(inv, replies)
    else:
        await app.invoke(inv)
    await app.notifier.flush(timeout=10.0)  # the answer shows before the next prompt


async def run_shell(settings: Settings, *, user: str, channel: str) -> int:
    blueprint = load_blueprint(settings.config)
    async with state_database(settings) as url:
        writer = ShellWriter(lambda text: print(text, flush=True))
        app = build(settings.model_copy(update={"database_url": url}), blueprint, writer=writer)
        await app.start()
        print(f"Ephem shell as {user} in {channel}. Type `help`; Ctrl-D to leave.", flush=True)
        try:
            async for line in _lines():
                if line.strip() in ("exit", "quit"):
                    break
                await handle_line(app, writer, line, user=user, channel=channel)
        finally:
            print("leaving: waiting for running steps to finish", file=sys.stderr)
            await app.stop()
    return 0
