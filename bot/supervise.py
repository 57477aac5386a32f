"""The supervisor between Ephem and every tool it runs: a tool never outlives the bot.

Why: a tool started by a bot that is then killed (SIGKILL, OOM, a node lost) kept running, and
another replica, taking the job over once the lease lapsed, ran it a second time beside it.
`bot.proc.run` therefore never starts a tool itself: it starts this script, which

1. reads what to run from its stdin — one end of a socket pair whose other end only the bot
   holds — as one JSON line (the tool's arguments, environment, working directory, and the
   fence to hold), so no secret travels in an argument list or in this process's environment;
2. with a fence, connects to its PostgreSQL and takes `pg_advisory_lock(key)` in a session of
   its own, saying `waiting` first when an earlier run still holds it (that run may be on
   another host, where nobody here can kill it: the lock is what keeps them apart);
3. starts the tool in a process group of its own (with PR_SET_PDEATHSIG on Linux, so the tool
   dies too should this process be killed outright) and says `started`;
4. forwards the signals the bot asks for to the whole group (grandchildren included), says
   `exit` with the tool's code when it ends, and ends what is left of it when the bot says
   `done` (the bot has read the tool's output to its end);
5. when the socket closes before that — the bot died, was killed, or gave up — ends the group
   by itself: SIGINT first when asked (`interrupt_first`: Terraform saves its state on Ctrl-C),
   then SIGTERM, then SIGKILL, `grace` seconds apart; the fence's session, and with it the
   lock, ends with this process, after the group;
6. when the fence's connection is lost while the tool runs, ends the group the same way and
   says `fence-lost`: the lock no longer keeps a successor out.

On Linux it is a child subreaper: whatever the tool leaves behind — even a helper that left
its process group — becomes its child when its own parent ends, is signalled with the rest,
and is reaped here (a container whose PID 1 reaps nothing would otherwise keep the zombies).
"Gone" means no child and no member of the group left.

The tool's output never passes through here: it writes straight into the bot's pipe (this
process keeps no copy of that pipe open), so the bot sees the end of the output when the tool
and the helpers that share its output are done. Events go back over the socket as JSON lines.

Started how: not one Python start-up per run — its imports alone cost about 100 ms of CPU, which
twenty environments applying at once (three or four tools each) pay in a queue for two cores —
but forked from a *zygote*: this script run once per bot process with `--zygote`, which has
imported everything, waits on a socket from the bot, and forks a supervisor per request (see
`zygote`). A forked supervisor is the same program as before from `main()` on; only its parent
is the zygote rather than the bot, which changes nothing above: it watches the bot's socket,
not its parent.

It is a script, run with `python -I` so that nothing in the environment changes what Python
loads; it imports nothing from Ephem, and only the standard library until a fence needs
asyncpg (found through the `sys.path` the bot sends). Neighbour: `bot.proc`, its only caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_POLL = 0.05  # seconds between looks at the tool and what is left of it, SIGCHLD or not


class Supervisor:
    """One tool run, from the spec to the end of everything it started."""

    def __init__(self, spec: dict[str, Any], *, output_fd: int,
                 writer: asyncio.StreamWriter) -> None:
        self.args: list[str] = spec["args"]
        self.env: dict[str, str] = spec["env"]
        self.cwd: str | None = spec.get("cwd")
        self.grace: float = float(spec.get("grace", 5.0))
        self.interrupt_first: bool = bool(spec.get("interrupt_first", False))
        self.fence: dict[str, Any] | None = spec.get("fence")
        self._output_fd: int | None = output_fd
        self.writer = writer
        self.pid: int | None = None  # the tool's, and its process group's id
        self.code: int | None = None  # its exit code once reaped (-N: killed by signal N)
        self.killed = False  # SIGKILL already sent: nothing gentler is worth waiting for
        self._reached: dict[signal.Signals, set[int]] = {}  # adopted children signalled
        self.child_changed = asyncio.Event()  # set on SIGCHLD: worth looking again

    # ------------------------------------------------------------------ talking to the bot

    def say(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):  # the bot may be gone: there is nobody to tell
            self.writer.write(json.dumps({"event": event, **fields}).encode() + b"\n")

    async def control(self, reader: asyncio.StreamReader) -> None:
        """The bot's requests, until it says `done` or closes its end (dying closes it too)."""
        while line := await reader.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "signal" in message:
                with contextlib.suppress(KeyError):
                    self.send_signal(signal.Signals[f"SIG{message['signal']}"])
            elif message.get("done"):
                return

    def release_output(self) -> None:
        """Close our copy of the bot's output pipe, so only the tool's copies keep it open."""
        if self._output_fd is not None:
            os.close(self._output_fd)
            self._output_fd = None

    # ------------------------------------------------------------------ the fence

    async def take_fence(self, control: asyncio.Task[None]) -> Any:
        """The fence's connection, holding its lock; None when it could not be taken or the
        bot went away while we waited."""
        assert self.fence is not None
        import asyncpg  # only a fenced run pays for the import

        try:
            conn = await asyncpg.connect(self.fence["dsn"], timeout=self.fence["timeout"])
        except Exception as exc:
            self.say("error", kind="fence", detail=_describe(exc))
            return None
        key = int(self.fence["key"])
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                self.say("waiting")
                lock = asyncio.ensure_future(conn.execute("SELECT pg_advisory_lock($1)", key))
                either: set[asyncio.Future[Any]] = {lock, control}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not lock.done():  # the bot is gone or gave up: stop waiting
                    lock.cancel()
                    conn.terminate()
                    return None
                lock.result()
        except Exception as exc:
            conn.terminate()
            self.say("error", kind="fence", detail=_describe(exc))
            return None
        return conn

    async def watch_fence(self, conn: Any) -> None:
        """Return when the fence's session is lost (its connection closed, or it stopped
        answering): the lock went with it."""
        assert self.fence is not None
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        every = float(self.fence["check"])
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), every)
                return
            try:
                await conn.fetchval("SELECT 1", timeout=every)
            except Exception:
                return

    # ------------------------------------------------------------------ the tool

    def start(self) -> bool:
        assert self._output_fd is not None
        try:
            child = subprocess.Popen(  # reaped by `reap`, never by Popen
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._output_fd,
                stderr=self._output_fd,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own group: one signal reaches all of it
                # Safe despite the warning about threads: the function was resolved before
                # the fork and only calls prctl(2) and getppid(2) in the child.
                preexec_fn=_pdeathsig_setter(),  # noqa: PLW1509
            )
        except (FileNotFoundError, NotADirectoryError) as exc:
            missing_cwd = (self.cwd is not None and exc.filename is not None
                           and os.path.realpath(exc.filename) == os.path.realpath(self.cwd))
            self.say("error", kind="cwd" if missing_cwd else "executable")
            return False
        except PermissionError:
            self.say("error", kind="permission")
            return False
        except OSError as exc:
            self.say("error", kind="os", detail=exc.strerror or type(exc).__name__)
            return False
        finally:
            self.release_output()
        child.returncode = 0  # so Popen never waits for it: `reap` owns every child
        self.pid = child.pid
        self.say("started", pid=self.pid)
        return True

    def reap(self) -> bool:
        """Collect every child that ended — the tool, and whatever of its descendants was
        handed to us as their subreaper; True while any child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.pid:
                self.code = os.waitstatus_to_exitcode(status)

    def alive(self) -> bool:
        """Is anything of the tool left: a child of ours, or a member of its group?"""
        if self.pid is None:
            return False
        if self.reap():
            return True
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def send_signal(self, sig: signal.Signals) -> None:
        """`sig` to the tool's group, and to each child of ours outside it (with its group)."""
        if self.pid is None:
            return
        if sig is signal.SIGKILL:
            self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        self._reached.setdefault(sig, set()).clear()
        self.reach_adopted(sig)

    def reach_adopted(self, sig: signal.Signals) -> None:
        """`sig` to each child of ours it has not reached yet: descendants of the tool that
        left its group, handed to us (the subreaper) when their parent ended."""
        reached = self._reached.setdefault(sig, set())
        for pid in _children(os.getpid()):
            if pid == self.pid or pid in reached:
                continue
            reached.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    async def exited(self) -> int:
        """The tool's exit code, once it has ended (its descendants may live on)."""
        while self.code is None:
            self.reap()
            if self.code is None:
                await self._next_change()
        return self.code

    async def _next_change(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.child_changed.wait(), _POLL)
        self.child_changed.clear()

    async def _gone_within(self, seconds: float, sig: signal.Signals) -> bool:
        """Wait up to `seconds` for nothing of the tool to be left, passing `sig` on to
        whatever is handed to us meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while self.alive():
            if loop.time() >= until:
                return False
            await self._next_change()
            self.reach_adopted(sig)
        return True

    async def end(self) -> None:
        """End everything of the tool: (SIGINT,) SIGTERM, then SIGKILL, `grace` seconds apart,
        stopping as soon as nothing is left; after a SIGKILL, only SIGKILL."""
        gentle = () if self.killed else (
            (signal.SIGINT, signal.SIGTERM) if self.interrupt_first else (signal.SIGTERM,))
        for sig in (*gentle, signal.SIGKILL):
            if not self.alive():
                return
            self.send_signal(sig)
            if await self._gone_within(self.grace, sig):
                return

    # ------------------------------------------------------------------ the run

    async def run(self, reader: asyncio.StreamReader) -> int:
        control = asyncio.create_task(self.control(reader))
        conn = None
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fence_lost: asyncio.Future[None] = never
        try:
            if self.fence is not None:
                conn = await self.take_fence(control)
                if conn is None:
                    return 1
            if control.done() or not self.start():
                return 1
            if conn is not None:
                fence_lost = asyncio.ensure_future(self.watch_fence(conn))
            exited = asyncio.ensure_future(self.exited())
            first: set[asyncio.Future[Any]] = {exited, control, fence_lost}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                if fence_lost.done():
                    self.say("fence-lost")
                # The bot is gone (or the lock is): nobody else will stop the tool.
                await self.end()
            self.say("exit", code=await exited)
            # What is left runs on while the bot reads the output its helpers still write.
            await asyncio.wait({control, fence_lost}, return_when=asyncio.FIRST_COMPLETED)
            await self.end()
            return 0
        finally:
            self.release_output()
            if self.alive():
                await self.end()
            fence_lost.cancel()
            control.cancel()
            if conn is not None:  # the lock is released only after everything has ended
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), self.grace)
                if not conn.is_closed():
                    conn.terminate()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _children(pid: int) -> list[int]:
    """The children of `pid` (Linux: /proc); empty where that cannot be read."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        pass
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with (contextlib.suppress(OSError, ValueError, IndexError),
                      open(f"/proc/{entry}/stat") as f):
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
    return found


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A function for the forked child that asks for SIGKILL when this process dies (Linux);
    resolved before the fork, so the child only calls it."""
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # orphaned before the request took effect
            os._exit(137)

    return set_pdeathsig


async def main() -> int:
    # fd 0 is our end of the bot's socket pair; fd 1 (and 2) the bot's output pipe, which only
    # the tool may keep: a copy for the tool, then /dev/null in their place.
    output_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    channel = socket.socket(fileno=os.dup(0))
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)
    os.close(nothing)
    prctl = _libc_prctl()
    if prctl is not None:
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    line = await reader.readline()
    if not line:
        os.close(output_fd)
        return 1
    spec = json.loads(line)
    sys.path[:0] = [p for p in spec.get("path", []) if p not in sys.path]
    supervisor = Supervisor(spec, output_fd=output_fd, writer=writer)
    loop = asyncio.get_running_loop()
    ending: set[asyncio.Task[None]] = set()

    def told_to_stop() -> None:  # by someone other than the bot: end the tool the same way
        task = asyncio.ensure_future(supervisor.end())
        ending.add(task)
        task.add_done_callback(ending.discard)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, told_to_stop)
    loop.add_signal_handler(signal.SIGCHLD, supervisor.child_changed.set)
    try:
        return await supervisor.run(reader)
    except Exception as exc:
        supervisor.say("error", kind="supervisor", detail=_describe(exc))
        return 1
    finally:
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()


def zygote() -> int:
    """`--zygote`: fork a supervisor per request, until the bot closes its end.

    fd 0 is a socket whose other end only the bot holds. A request is one byte carrying two
    descriptors (SCM_RIGHTS): the run's socket (the supervisor's fd 0) and the bot's output
    pipe (its fd 1 and 2); the answer is the new supervisor's pid, as a line. The zygote
    holds no secret (a run's spec goes to the forked supervisor, never through here) and
    keeps no descriptor of a run once it has forked it. Supervisors outlive it: when the bot
    ends, the zygote ends, and each supervisor sees its own socket close and ends its tool."""
    requests = socket.socket(fileno=os.dup(0))
    nothing = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(nothing, fd)
    os.close(nothing)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the supervisors
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(requests, 1, 2)
        except OSError:
            return 0
        if not message:
            return 0  # the bot has ended
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            requests.sendall(b"0\n")
            continue
        pid = os.fork()
        if pid == 0:  # the supervisor
            code = 1
            try:
                requests.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.dup2(fds[0], 0)
                os.dup2(fds[1], 1)
                os.dup2(fds[1], 2)
                for fd in fds:
                    os.close(fd)
                code = asyncio.run(main())
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        requests.sendall(f"{pid}\n".encode())


if __name__ == "__main__":
    sys.exit(zygote() if sys.argv[1:] == ["--zygote"] else asyncio.run(main()))
