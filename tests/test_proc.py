"""`bot.proc.run`, the one subprocess helper, with real processes.

The deadline tests use `sh` (starts in a millisecond) so the line printed before the deadline is
there; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bot import proc
from bot.config import child_environment
from bot.errors import PermanentError

# A shell that starts a grandchild writing nowhere (so only a group kill ends it), reports
# the grandchild's pid, says it is up, and waits.
GRANDCHILD = "sleep 30 >/dev/null 2>&1 & echo $!; echo up; wait"


def _state(pid: int) -> str | None:
    """Process `pid`'s state letter from /proc (Z: a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


async def _gone(pid: int) -> bool:
    """Has process `pid` died (gone, or a zombie waiting to be reaped)? Waits a little for the
    signal to land; a process that never dies fails the test rather than hanging it."""
    for _ in range(500):
        if _state(pid) in (None, "Z", "X"):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_streams_stdout_and_stderr_in_order_and_returns_the_exit_code() -> None:
    seen: list[str] = []

    async def on_line(line: str) -> None:
        seen.append(line)

    code = ("import sys\n"
            "print('one', flush=True)\n"
            "print('two', file=sys.stderr, flush=True)\n"
            "sys.stdout.write('three\\r\\nno newline at the end')\n"
            "sys.exit(4)\n")
    result = await proc.run([sys.executable, "-c", code], timeout=30, on_line=on_line)
    assert result.returncode == 4
    assert seen == ["one", "two", "three", "no newline at the end"]
    assert result.output == tuple(seen)
    assert result.tail(2) == "three\nno newline at the end"


async def test_keeps_only_a_bounded_tail_and_cuts_long_lines() -> None:
    code = ("import sys\n"
            "for i in range(500): print(f'line {i}')\n"
            f"print('x' * {proc.MAX_LINE * 5})\n"
            "print('after the long one')\n")
    result = await proc.run([sys.executable, "-c", code], timeout=30, keep_lines=10)
    assert result.returncode == 0
    assert len(result.output) == 10
    assert result.output[-3] == "line 499"
    assert result.output[-2] == "x" * proc.MAX_LINE
    assert result.output[-1] == "after the long one"


async def test_passes_extra_environment_and_working_directory(tmp_path: Path) -> None:
    where = str(tmp_path)  # pytest's tmp_path is already resolved
    code = "import os; print(os.environ['EPHEM_TEST_EXTRA'], os.getcwd())"
    result = await proc.run([sys.executable, "-c", code], env={"EPHEM_TEST_EXTRA": "given"},
                            cwd=tmp_path, timeout=30)
    assert result.output == (f"given {where}",)


def test_child_environment_leaves_out_ephems_own_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEM_SECRET_KEY", "do-not-pass-on")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-do-not-pass-on")
    monkeypatch.setenv("TF_VAR_region", "kept")
    env = child_environment()
    assert "EPHEM_SECRET_KEY" not in env
    assert "SLACK_BOT_TOKEN" not in env
    assert env["TF_VAR_region"] == "kept"


async def test_timeout_kills_the_whole_process_group() -> None:
    with pytest.raises(proc.ProcTimeoutError) as caught:
        await proc.run(["sh", "-c", GRANDCHILD], timeout=0.5, kill_grace=2)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "sh timed out after 0.5 s"
    assert caught.value.output[-1] == "up"
    assert await _gone(int(caught.value.output[0]))


async def test_cancellation_kills_the_process_group() -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def on_line(line: str) -> None:
        if line.isdigit():
            pids.append(int(line))
        else:
            started.set()

    task = asyncio.create_task(proc.run(["sh", "-c", GRANDCHILD],
                                        timeout=60, on_line=on_line))
    await asyncio.wait_for(started.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(pids[0])


# Cleans up on SIGINT (as Terraform saves its state and releases its lock), ignores SIGTERM.
POLITE = (
    "import signal, sys, time\n"
    "def stop(*_):\n"
    "    open(sys.argv[1], 'w').write('state saved')\n"
    "    sys.exit(130)\n"
    "signal.signal(signal.SIGINT, stop)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_interrupt_first_lets_the_tool_clean_up(tmp_path: Path, how: str) -> None:
    saved = tmp_path / "saved"
    started = asyncio.Event()

    async def on_line(line: str) -> None:
        started.set()

    task = asyncio.create_task(proc.run(
        [sys.executable, "-c", POLITE, str(saved)], timeout=60 if how == "cancel" else 1.5,
        on_line=on_line, interrupt_first=True, kill_grace=10))
    await asyncio.wait_for(started.wait(), timeout=20)
    if how == "cancel":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(proc.ProcTimeoutError):
            await task
    assert saved.read_text() == "state saved"


async def test_without_interrupt_first_a_cancelled_tool_gets_no_chance(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    started = asyncio.Event()

    async def on_line(line: str) -> None:
        started.set()

    task = asyncio.create_task(proc.run([sys.executable, "-c", POLITE, str(saved)],
                                        timeout=60, on_line=on_line))
    await asyncio.wait_for(started.wait(), timeout=20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not saved.exists()


async def test_an_exception_in_on_line_stops_the_process_and_propagates() -> None:
    pids: list[int] = []

    async def on_line(line: str) -> None:
        if line.isdigit():
            pids.append(int(line))
            return
        raise RuntimeError("listener broke")

    with pytest.raises(RuntimeError, match="listener broke"):
        await proc.run(["sh", "-c", GRANDCHILD], timeout=60,
                       on_line=on_line)
    assert await _gone(pids[0])


async def test_missing_executable_is_a_permanent_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as caught:
        await proc.run([str(tmp_path / "no-such-tool")], timeout=5)
    assert caught.value.reason == "cannot run no-such-tool: executable not found"

    with pytest.raises(PermanentError) as caught:
        await proc.run(["ephem-no-such-tool-on-path"], timeout=5)
    assert "ephem-no-such-tool-on-path" in caught.value.reason


async def test_missing_working_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(PermanentError) as caught:
        await proc.run([sys.executable, "-c", "pass"], cwd=missing, timeout=5)
    assert caught.value.reason.endswith(f"working directory {missing} does not exist")


async def test_a_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(PermanentError, match=r"tool\.sh: permission denied"):
        await proc.run([str(script)], timeout=5)
