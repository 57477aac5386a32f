"""The one place Ephem runs subprocesses (Terraform, a project's migration command, …).

Why one place: every external tool needs the same care — its output streamed line by line as it
comes (so progress reaches the Slack thread), only a bounded tail kept (a chatty tool must not
fill memory), every known secret scrubbed from each line before anyone sees it, a deadline or a
cancellation that really ends it (everything it started, so its helpers go too), and failures
turned into `PermanentError`s with short reasons instead of `OSError` traces.

Nothing a tool starts may outlive the bot, or run twice at once:
- every tool runs under `bot.supervise`, a small process that ends the tool's whole tree when
  the bot's end of a socket pair closes — which the kernel does for us when the bot is killed;
- with a `Fence`, the supervisor holds a PostgreSQL advisory lock in its own session for the
  tool's whole run, so a successor (on any host) waits for an earlier run instead of running
  beside it, and says so.

The child's environment is an allow-list (`bot.config.child_environment`: PATH, HOME, the
locale, …) plus the variables the blueprint passes and what the caller sets. Nothing here logs
arguments or environment values: they may carry credentials.

Neighbours: `pipelines.data.migrations.run_command` and the infrastructure phases call `run`;
the runner's own timeouts and the executor's lease keeper cancel it, which ends the tool too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import child_environment
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, redact
from bot.redaction import scrub

log = logging.getLogger(__name__)

KEEP_LINES = 200  # default length of the output tail kept in a ProcResult
MAX_LINE = 4096  # characters kept of one line; longer lines are cut (and the rest dropped)
FENCE_CONNECT_TIMEOUT = 10.0  # seconds the supervisor tries to reach the fence's server
FENCE_CHECK_SECONDS = 5.0  # how often the fence's session is checked while the tool runs
SUPERVISOR = Path(__file__).with_name("supervise.py")
# Set for every tool (callers may override): output is streamed line by line, so a Python tool
# (Alembic, Django, …) must not hold its stdout back in a buffer while stderr goes first.
STREAMING_ENV = {"PYTHONUNBUFFERED": "1"}
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


@dataclass(frozen=True)
class Fence:
    """A lock on the resource a tool works on, held for the tool's whole run.

    The contract, for every caller of `run(…, fence=…)`:
    - `url` (postgresql://) names the server and database that hold the lock — the resource
      itself where it is a database (an environment's database, for its migrations), else a
      database every Ephem process running this work can reach (the Terraform state's). All
      of them must use the same database and the same `name` for the same work.
    - `name` says what is fenced, unique per resource and kind of work
      (`migrations:ephem_pr_1`, `terraform:pr-1`); the lock is `pg_advisory_lock(key)` with
      `key` a 64-bit hash of it.
    - `what` says it for people ("the migrations of pr-1"): while another session holds the
      lock, `run` calls `on_wait` once, for the card to say `waiting_text()`.
    - The lock is taken by the tool's supervisor, in a session of its own, before the tool
      starts; `run` waits for it as long as it takes (the wait counts against `timeout`). It
      is released when everything the tool started has ended — or when the supervisor dies,
      since the server ends its session. So an earlier run, even one whose bot is gone and
      even on another host, fences its successor for exactly as long as it runs.
    - If the lock's session is lost while the tool runs (the server restarted, the database
      was dropped), the tool is stopped at once and `run` raises a `TemporaryError`: nothing
      keeps a successor out any more, so the work must be retried, fenced again.
    - Cannot reach the lock's server: a `TemporaryError` naming it; the tool was not started.
    """

    url: str = field(repr=False)
    name: str
    what: str

    @property
    def key(self) -> int:
        """The advisory lock's key: a signed 64-bit hash of `name`."""
        digest = hashlib.sha256(f"ephem-fence:{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def waiting_text(self) -> str:
        return f"waiting for an earlier run of {self.what} to finish"


async def prepare() -> None:
    """Start the process that starts the tools' supervisors (see `bot.supervise`) now, at the
    bot's start-up, rather than at the first run, which would wait for it."""
    await asyncio.to_thread(_ZYGOTE.start)


async def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_env: Iterable[str] = (),
    cwd: Path | None = None,
    timeout: float,
    on_line: Callable[[str], Awaitable[None]] | None = None,
    keep_lines: int = KEEP_LINES,
    kill_grace: float = 5.0,
    interrupt_first: bool = False,
    fence: Fence | None = None,
    on_wait: Callable[[], Awaitable[None]] | None = None,
    raw_output: bool = False,
) -> ProcResult:
    """Run `args` (no shell) to completion; stream each output line to `on_line`.

    The environment is the allow-list of `bot.config.child_environment`, `STREAMING_ENV`, the
    variables named in `pass_env`, then `env` (what the phase sets, e.g. DATABASE_URL or
    TF_VAR_*) on top.
    stdout and stderr go through one pipe, so their lines keep the order they were written in;
    each line is scrubbed of every secret `bot.redaction` knows before `on_line` or the tail
    sees it — except with `raw_output`, for a tool whose output *is* data that may hold a
    secret (`terraform output -json`): `on_line` then gets the lines as written (the caller
    must keep them out of logs and messages), while the tail stays scrubbed.
    The run ends when the command has exited and its output is closed — a helper it
    left running with that output still open counts as part of it; whatever else it left
    running is ended then. A non-zero exit is not an error here: the caller decides.

    Raises `ProcTimeoutError` (a PermanentError) when `timeout` seconds pass: the tool gets
    SIGTERM, then SIGKILL after `kill_grace` seconds. Raises PermanentError when the
    executable or `cwd` does not exist. Cancellation kills the tool at once. An exception from
    `on_line` kills it too, and propagates. If this process dies, the supervisor ends the
    tool the same way (SIGTERM, or SIGINT first with `interrupt_first`).

    `interrupt_first`: for tools that clean up on Ctrl-C (Terraform saves its state and
    releases its lock), both a timeout and a cancellation send SIGINT first, then SIGTERM, then
    SIGKILL, `kill_grace` seconds apart, stopping as soon as the process has exited.

    `fence`: hold this lock for the whole run (see `Fence` for the contract); `on_wait` is
    awaited once if the run has to wait for it.
    """
    if not args:
        raise ValueError("run() needs a program to run")
    name = Path(args[0]).name
    full_env = child_environment(pass_env) | STREAMING_ENV
    full_env.update(env or {})
    tool = await _Tool.start(args, name=name, env=full_env, cwd=cwd, grace=kill_grace,
                             interrupt_first=interrupt_first, fence=fence)
    tail: deque[str] = deque(maxlen=max(keep_lines, 1))
    reader = asyncio.ensure_future(_pump(tool.output, tail, on_line, raw=raw_output))
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await tool.wait_started(on_wait)
            # To EOF: the command, and whatever it started that writes there, ended. Waited
            # for, not awaited: a cancellation must reach the kill below at once, even while
            # `on_line` is stuck (a progress write on a hung connection), not after it.
            await asyncio.wait({reader})
            reader.result()
            returncode = await tool.exited()
    except BaseException as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            waited = not tool.running
            await tool.terminate(grace=kill_grace, interrupt_first=interrupt_first)
            await _cancel(reader)
            await tool.close(wait=kill_grace)
            if waited and fence is not None:
                reason = f"{name} gave up after {timeout:g} s {fence.waiting_text()}"
            else:
                reason = f"{name} timed out after {timeout:g} s"
            log.info("%s; ended it and everything it started", reason)
            raise ProcTimeoutError(reason, output=tuple(tail)) from None
        if interrupt_first and tool.running:
            # Shielded: a second cancellation must not cut the tool's clean-up short.
            with contextlib.suppress(BaseException):
                await asyncio.shield(tool.terminate(grace=kill_grace, interrupt_first=True))
        tool.kill()
        await _cancel(reader)
        with contextlib.suppress(BaseException):
            await asyncio.shield(tool.close(wait=kill_grace))
        raise
    await tool.close(wait=2 * kill_grace + 1)
    if tool.fence_lost and fence is not None:
        raise TemporaryError(
            f"{name} was stopped: the lock on {fence.what} was lost (its session on "
            f"{redact(fence.url)} ended), so nothing kept another run out",
            details="\n".join(tail) or None)
    log.debug("%s exited with code %d", name, returncode)
    return ProcResult(returncode=returncode, output=tuple(tail) if keep_lines > 0 else ())


class _Tool:
    """The bot's side of one supervised run: the supervisor process, the socket to it, and
    what it has said (waiting, started, exit, fence lost)."""

    def __init__(self, pid: int, *, name: str, cwd: Path | None, fence: Fence | None,
                 events: asyncio.StreamReader, control: asyncio.StreamWriter,
                 output: asyncio.StreamReader, pipe: asyncio.BaseTransport) -> None:
        self.pid = pid  # the supervisor's (the zygote's child, not ours: signalled by pid)
        self.name = name
        self.cwd = cwd
        self.fence = fence
        self.output = output
        self._pipe = pipe
        self._control = control
        loop = asyncio.get_running_loop()
        self._started: asyncio.Future[int] = loop.create_future()
        self._exit: asyncio.Future[int | None] = loop.create_future()
        self._waiting = asyncio.Event()
        self.fence_lost = False
        self._events = asyncio.ensure_future(self._listen(events))

    @classmethod
    async def start(cls, args: Sequence[str], *, name: str, env: dict[str, str],
                    cwd: Path | None, grace: float, interrupt_first: bool,
                    fence: Fence | None) -> _Tool:
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        try:
            pid = await asyncio.to_thread(_ZYGOTE.fork, theirs.fileno(), out_w)
        except OSError as exc:
            ours.close()
            os.close(out_r)
            raise PermanentError(f"cannot run {name}: its supervisor did not start "
                                 f"({exc.strerror or exc})") from None
        finally:
            theirs.close()
            os.close(out_w)
        output = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(output),
                                               os.fdopen(out_r, "rb", buffering=0))
        events, control = await asyncio.open_unix_connection(sock=ours)
        spec: dict[str, Any] = {
            "args": list(args), "env": env, "cwd": str(cwd) if cwd is not None else None,
            "grace": grace, "interrupt_first": interrupt_first,
            "path": _python_path(),
        }
        if fence is not None:
            spec["fence"] = {"dsn": asyncpg_dsn(fence.url), "key": fence.key,
                             "timeout": FENCE_CONNECT_TIMEOUT, "check": FENCE_CHECK_SECONDS}
        control.write(json.dumps(spec).encode() + b"\n")
        return cls(pid, name=name, cwd=cwd, fence=fence, events=events, control=control,
                   output=output, pipe=pipe)

    async def _listen(self, events: asyncio.StreamReader) -> None:
        try:
            while line := await events.readline():
                message = json.loads(line)
                kind = message.get("event")
                if kind == "waiting":
                    self._waiting.set()
                elif kind == "started":
                    _settle(self._started, result=int(message["pid"]))
                elif kind == "error":
                    _settle(self._started, error=self._start_error(message))
                elif kind == "exit":
                    _settle(self._exit, result=int(message["code"]))
                elif kind == "fence-lost":
                    self.fence_lost = True
        except OSError:  # a request written after it had gone: it has ended all the same
            pass
        finally:  # the supervisor has ended (or is ending): whatever it did not say, it never will
            _settle(self._started, error=PermanentError(
                f"cannot run {self.name}: its supervisor ended before starting it"))
            _settle(self._exit, result=None)

    def _start_error(self, message: dict[str, Any]) -> PermanentError | TemporaryError:
        kind, detail = message.get("kind"), scrub(str(message.get("detail") or ""))
        if kind == "cwd":
            return PermanentError(f"cannot run {self.name}: working directory {self.cwd} "
                                  "does not exist")
        if kind == "executable":
            return PermanentError(f"cannot run {self.name}: executable not found")
        if kind == "permission":
            return PermanentError(f"cannot run {self.name}: permission denied")
        if kind == "fence" and self.fence is not None:
            return TemporaryError(f"cannot run {self.name}: the lock on {self.fence.what} could "
                                  f"not be taken on {redact(self.fence.url)} ({detail})")
        return PermanentError(f"cannot run {self.name}: {detail or kind}")

    @property
    def running(self) -> bool:
        """Has the tool itself been started?"""
        started = self._started
        return started.done() and not started.cancelled() and started.exception() is None

    async def wait_started(self, on_wait: Callable[[], Awaitable[None]] | None) -> None:
        """Until the tool runs; `on_wait` once if its fence is held elsewhere first."""
        waiting = asyncio.ensure_future(self._waiting.wait())
        try:
            either: set[asyncio.Future[Any]] = {self._started, waiting}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not self._started.done() and on_wait is not None:
                await on_wait()
            await asyncio.shield(self._started)  # a cancelled wait leaves the future alone
        finally:
            waiting.cancel()

    async def exited(self) -> int:
        code = await asyncio.shield(self._exit)
        if code is None:
            raise PermanentError(f"{self.name} stopped: its supervisor ended unexpectedly")
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        """Ask the supervisor to send `sig` to the tool and everything it started."""
        if self._control.is_closing():
            return
        with contextlib.suppress(Exception):
            self._control.write(json.dumps({"signal": sig.name.removeprefix("SIG")}).encode()
                                + b"\n")

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def terminate(self, *, grace: float, interrupt_first: bool = False) -> None:
        """SIGTERM (SIGINT before it with `interrupt_first`), SIGKILL after `grace` seconds
        more if the tool has not ended; returns once it has (or after the last `grace`)."""
        polite = (signal.SIGINT, signal.SIGTERM) if interrupt_first else (signal.SIGTERM,)
        for sig in (*polite, signal.SIGKILL):
            if self._exit.done() or not self.running:
                return
            self.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), timeout=grace)
                return

    async def close(self, *, wait: float) -> None:
        """Let the supervisor go: closing our end tells it to end whatever of the tool is
        left and release the fence. Waits `wait` seconds for that, then kills it (and so,
        by PR_SET_PDEATHSIG, the tool)."""
        # Half-closed: the supervisor reads the end of our requests, while we still read its
        # end of the socket, which it closes last, once the tool and all it started have
        # ended and the fence is released (it is the zygote's child, not ours to wait for).
        with contextlib.suppress(OSError, RuntimeError):
            self._control.write_eof()
        _, late = await asyncio.wait({self._events}, timeout=wait)
        if late:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._events.cancel()
        self._control.close()
        self._pipe.close()
        if self._started.done() and not self._started.cancelled():
            self._started.exception()  # retrieved: an error nobody awaited is not a warning


class _Zygote:
    """The process that forks this bot process's supervisors (`bot.supervise.zygote`),
    started at the first run and again if it has gone; one per process (a forked bot starts
    its own). Requests take turns: each is a fork, a few milliseconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = 0

    def start(self) -> None:
        with self._lock:
            self._running()

    def fork(self, control: int, output: int) -> int:
        """A new supervisor with `control` as its socket and `output` as its output; its pid."""
        with self._lock:
            requests = self._running()
            try:
                socket.send_fds(requests, [b"f"], [control, output])
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = requests.recv(32)
                    if not chunk:
                        raise ConnectionError("the supervisors' zygote ended")
                    answer += chunk
            except OSError:
                self._stop()
                raise
            pid = int(answer)
            if pid <= 0:
                raise OSError("the supervisors' zygote refused the request")
            return pid

    def _running(self) -> socket.socket:
        alive = self._process is not None and self._process.poll() is None
        if self._socket is not None and self._owner == os.getpid() and alive:
            return self._socket
        self._stop()
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SUPERVISOR), "--zygote"],
                stdin=theirs.fileno(), stdout=subprocess.DEVNULL, env=child_environment(),
                start_new_session=True)  # a Ctrl-C meant for the bot is not for it
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket, self._owner = ours, os.getpid()
        return ours

    def _stop(self) -> None:
        if self._socket is not None:
            self._socket.close()  # the zygote reads the end of its requests and ends
        if self._process is not None and self._owner == os.getpid():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._socket = self._process = None


_ZYGOTE = _Zygote()


def _python_path() -> list[str]:
    """Where this interpreter finds its modules: the supervisor runs isolated (`-I`) and takes
    this as its `sys.path`, so it finds asyncpg wherever Ephem's was found."""
    return [str(Path(p).resolve()) for p in sys.path if p and Path(p).exists()]


def _settle(future: asyncio.Future[Any], *, result: Any = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _pump(stream: asyncio.StreamReader, tail: deque[str],
                 on_line: Callable[[str], Awaitable[None]] | None, *,
                 raw: bool = False) -> None:
    """Read to EOF, splitting on newlines ourselves: `readline()` fails on very long lines."""
    pending = b""
    skipping = False  # inside an over-long line whose start was already delivered

    async def deliver(data: bytes) -> None:
        text = data.decode("utf-8", errors="replace").rstrip("\r")[:MAX_LINE]
        line = scrub(text)
        tail.append(line)
        if on_line is not None:
            await on_line(text if raw else line)

    while chunk := await stream.read(_CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for one in lines:
            if skipping:
                skipping = False
                continue
            await deliver(one)
        if skipping:
            pending = b""
        elif len(pending) > MAX_LINE * 4:  # keep the start of a line without end
            await deliver(pending)
            pending, skipping = b"", True
    if pending:
        await deliver(pending)


async def _cancel(task: asyncio.Future[None]) -> None:
    """Cancel `task` and wait for it, without swallowing a cancellation of our own."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it
