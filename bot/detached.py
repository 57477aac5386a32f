"""Processes that are meant to outlive the bot: an environment's workload run on this machine.

Why not `bot.proc`: everything `bot.proc.run` starts is part of one call — a migration command,
Terraform — and must end with it (a timeout, a cancellation or the bot's own exit ends the whole
process group). A component started by the `local` deployer is the opposite: it *is* the
environment, and keeps running while Ephem restarts. So it is started here, in a session of its
own, with its output going to a log file instead of a pipe to this process, and found again
later by the pid written next to that log — never by a handle this process holds.

The child runs under a small `sh` wrapper that writes the command's exit status to a file when
it ends, so a crash is reported with its exit code even by a bot that was restarted since. The
child's environment starts from `bot.config.child_environment()` (Ephem's own settings and
secrets left out), as in `bot.proc`.

Neighbours: `pipelines.code.local` (the `local` deployer) starts, adopts and stops components
with these functions; the orphan finder stops what no live environment owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.config import child_environment
from bot.errors import PermanentError

# `$0` is the exit-status file, `$@` the command: run it, then record how it ended.
_WRAPPER = 'trap "" HUP; "$@"; echo $? > "$0"'
_TAIL_BYTES = 65536


def start(args: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path,
          exit_file: Path) -> int:
    """Start `args` in a new session; return its pid (also its process group's id).

    stdout and stderr are appended to `log`; when the command ends, its exit status is
    written to `exit_file` (128 + N when a signal N ended it). Raises PermanentError when the
    program or `cwd` cannot be found.
    """
    name = Path(args[0]).name if args else "?"
    if not args:
        raise PermanentError("the command is empty")
    if not cwd.is_dir():
        raise PermanentError(f"cannot run {name}: working directory {cwd} does not exist")
    exit_file.unlink(missing_ok=True)
    full_env = child_environment()
    full_env.update(env)
    with log.open("ab") as out:
        try:
            child = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, str(exit_file), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, env=full_env, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise PermanentError(f"cannot run {name}: {exc.strerror or type(exc).__name__}"
                                 ) from None
    return child.pid


def identity(pid: int) -> str | None:
    """Something that tells this process apart from a later one given the same pid: its start
    time in clock ticks since boot (Linux). None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def alive(pid: int, ident: str | None = None) -> bool:
    """Whether process `pid` runs (and is the one with `ident`, when that is known).

    A finished child of this very process is reaped first, so it does not count as running.
    """
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if _zombie(pid):
        return False
    if ident is not None:
        now = identity(pid)
        return now is None or now == ident
    return True


def group_alive(pgid: int) -> bool:
    """Whether any (non-zombie) process of group `pgid` is left."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)  # our own finished leader, reaped
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _members(pgid)


async def stop(pgid: int, *, grace: float = 5.0) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after `grace` seconds; returns
    once nothing of the group is left (or after a further `grace` seconds)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            raise PermanentError(f"not allowed to stop process group {pgid}") from None
        deadline = asyncio.get_running_loop().time() + wait
        while group_alive(pgid):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        else:
            return


def exit_status(exit_file: Path) -> int | None:
    """The status the wrapper recorded; None while the command runs (or when it was killed
    together with its wrapper)."""
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(log: Path, lines: int = 20, *, since: int = 0) -> str:
    """The last `lines` lines of a log file written after byte `since` (reading at most its
    last 64 KiB)."""
    try:
        with log.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(since, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] == "Z"


def _members(pgid: int) -> bool:
    """Any live (non-zombie) process in group `pgid` (Linux; elsewhere the group's existence)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False
