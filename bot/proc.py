"""The one place Ephem runs subprocesses (Terraform, a project's migration command, …).

Why one place: every external tool needs the same care — its output streamed line by line as it
comes (so progress reaches the Slack thread), only a bounded tail kept (a chatty tool must not
fill memory), a deadline or a cancellation that really ends it (the whole process group, so the
helpers it started go too), and failures turned into `PermanentError`s with short reasons
instead of `OSError` traces.

The child's environment starts from `bot.config.child_environment()` (this process's
environment without Ephem's own settings and secrets) plus what the caller passes. Nothing here
logs arguments or environment values: they may carry credentials.

Neighbours: `pipelines.data.migrations.run_command` and the infrastructure phases call `run`;
the runner's own timeouts cancel it, which kills the process group as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import child_environment
from bot.errors import PermanentError

log = logging.getLogger(__name__)

KEEP_LINES = 200  # default length of the output tail kept in a ProcResult
MAX_LINE = 4096  # characters kept of one line; longer lines are cut (and the rest dropped)
_CHUNK = 65536


@dataclass(frozen=True)
class ProcResult:
    returncode: int
    output: tuple[str, ...]  # the last lines of stdout and stderr, interleaved as written

    def tail(self, lines: int = 20) -> str:
        """The last `lines` lines of output as one string."""
        return "\n".join(self.output[-lines:]) if lines > 0 else ""


class ProcTimeoutError(PermanentError):
    """The process ran past its deadline and was killed; `output` is the tail it had written."""

    def __init__(self, reason: str, *, output: tuple[str, ...]) -> None:
        super().__init__(reason)
        self.output = output


async def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float,
    on_line: Callable[[str], Awaitable[None]] | None = None,
    keep_lines: int = KEEP_LINES,
    kill_grace: float = 5.0,
    interrupt_first: bool = False,
) -> ProcResult:
    """Run `args` (no shell) to completion; stream each output line to `on_line`.

    stdout and stderr go through one pipe, so their lines keep the order they were written in.
    The run ends when the command has exited and its output is closed — a helper it left
    running with that output still open counts as part of it. A non-zero exit is not an error
    here: the caller decides what it means.

    Raises `ProcTimeoutError` (a PermanentError) when `timeout` seconds pass: the process group
    gets SIGTERM, then SIGKILL after `kill_grace` seconds. Raises PermanentError when the
    executable or `cwd` does not exist. Cancellation kills the process group at once. An
    exception from `on_line` kills it too, and propagates.

    `interrupt_first`: for tools that clean up on Ctrl-C (Terraform saves its state and
    releases its lock), both a timeout and a cancellation send SIGINT first, then SIGTERM, then
    SIGKILL, `kill_grace` seconds apart, stopping as soon as the process has exited.
    """
    if not args:
        raise ValueError("run() needs a program to run")
    name = Path(args[0]).name
    full_env = child_environment()
    full_env.update(env or {})
    proc = await _start(args, name=name, env=full_env, cwd=cwd)
    log.debug("started %s (pid %d)", name, proc.pid)

    tail: deque[str] = deque(maxlen=max(keep_lines, 1))
    assert proc.stdout is not None  # stdout=PIPE above
    reader = asyncio.ensure_future(_pump(proc.stdout, tail, on_line))
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await reader  # to EOF: the command, and whatever it started that writes there, ended
            returncode = await proc.wait()
    except BaseException as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            await _terminate(proc, grace=kill_grace, interrupt_first=interrupt_first)
            await _cancel(reader)
            log.info("%s timed out after %g s (process group %d killed)", name, timeout, proc.pid)
            raise ProcTimeoutError(f"{name} timed out after {timeout:g} s",
                                   output=tuple(tail)) from None
        if interrupt_first:
            # Shielded: a second cancellation must not cut the tool's clean-up short.
            with contextlib.suppress(BaseException):
                await asyncio.shield(_terminate(proc, grace=kill_grace, interrupt_first=True))
        _signal(proc, signal.SIGKILL)
        await _cancel(reader)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=kill_grace)
        raise
    log.debug("%s exited with code %d", name, returncode)
    return ProcResult(returncode=returncode, output=tuple(tail) if keep_lines > 0 else ())


async def _start(args: Sequence[str], *, name: str, env: dict[str, str],
                 cwd: Path | None) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so a timeout ends all of it
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        if cwd is not None and exc.filename is not None and Path(exc.filename) == Path(cwd):
            raise PermanentError(f"cannot run {name}: working directory {cwd} does not exist"
                                 ) from None
        raise PermanentError(f"cannot run {name}: executable not found") from None
    except PermissionError:
        raise PermanentError(f"cannot run {name}: permission denied") from None
    except OSError as exc:
        raise PermanentError(f"cannot run {name}: {exc.strerror or type(exc).__name__}"
                             ) from None


async def _pump(stream: asyncio.StreamReader, tail: deque[str],
                 on_line: Callable[[str], Awaitable[None]] | None) -> None:
    """Read to EOF, splitting on newlines ourselves: `readline()` fails on very long lines."""
    pending = b""
    skipping = False  # inside an over-long line whose start was already delivered

    async def deliver(raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")[:MAX_LINE]
        tail.append(line)
        if on_line is not None:
            await on_line(line)

    while chunk := await stream.read(_CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            if skipping:
                skipping = False
                continue
            await deliver(raw)
        if skipping:
            pending = b""
        elif len(pending) > MAX_LINE * 4:  # keep the start of a line without end
            await deliver(pending)
            pending, skipping = b"", True
    if pending:
        await deliver(pending)


def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """`sig` to the process's group (its own: `start_new_session`), and to the process itself
    while it has not been reaped, should its group be gone or changed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


async def _terminate(proc: asyncio.subprocess.Process, *, grace: float,
                     interrupt_first: bool = False) -> None:
    """SIGTERM to the group (SIGINT before it with `interrupt_first`), SIGKILL after `grace`
    seconds more if it has not ended.

    `proc.wait()` also waits for the output pipe to close; a process that left the group
    holding it could keep it open, so the last wait is bounded as well.
    """
    polite = (signal.SIGINT, signal.SIGTERM) if interrupt_first else (signal.SIGTERM,)
    for sig in polite:
        if proc.returncode is not None:
            return
        _signal(proc, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=grace)
            return
    _signal(proc, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout=grace)


async def _cancel(task: asyncio.Future[None]) -> None:
    """Cancel `task` and wait for it, without swallowing a cancellation of our own."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it
