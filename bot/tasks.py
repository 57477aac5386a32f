"""Background work started after an acknowledgement, tracked so none of it is lost.

Why: Slack wants an answer within 3 seconds, so the Slack edge acks first and runs the command
afterwards as an asyncio task. A bare `create_task` would leave such work invisible: a shutdown
would cut it off half-way, and an exception in it would surface only as "Task exception was never
retrieved" at garbage collection. `InFlight` keeps a reference to every task until it ends, logs
any exception with the task's name, and lets the composition root `drain()` on SIGTERM before it
closes the store and the Slack client. Its neighbours: `bot.slack.bolt` spawns into it,
`bot.cli.app` drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class InFlight:
    """A set of running tasks that can be awaited as a whole."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background; it is tracked until it finishes."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    async def drain(self, timeout: float) -> bool:
        """Wait until no task is left (tasks spawned meanwhile included), at most `timeout` s.

        Returns True when everything finished. On timeout the remaining tasks are cancelled,
        their names logged, and False is returned.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        left = list(self._tasks)
        if not left:
            return True
        log.warning(
            "shutdown: %d background task(s) still running after %.1fs, cancelling: %s",
            len(left), timeout, ", ".join(sorted(t.get_name() for t in left)),
        )
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        return False
