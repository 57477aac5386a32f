"""`bot.proc.run`, the one subprocess helper, with real processes.

The deadline tests use `sh` (starts in a millisecond) so the line printed before the deadline is
there; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from bot import proc, redaction
from bot.config import CHILD_ALLOWED, child_environment
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn

# A shell that starts a grandchild writing nowhere (so only a group kill ends it), reports
# the grandchild's pid, says it is up, and waits.
GRANDCHILD = "sleep 30 >/dev/null 2>&1 & echo $!; echo up; wait"


def _state(pid: int) -> str | None:
    """Process `pid`'s state letter from /proc (Z: a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
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


def test_child_environment_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEM_SECRET_KEY", "do-not-pass-on")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-do-not-pass-on")
    monkeypatch.setenv("ADMIN_PASSWORD", "the-server-password")  # a blueprint's ${VAR}
    monkeypatch.setenv("TF_VAR_region", "only-when-passed")
    monkeypatch.setenv("LC_TIME", "C")
    env = child_environment()
    assert set(env) <= CHILD_ALLOWED | {k for k in env if k.startswith("LC_")}
    assert env["LC_TIME"] == "C" and env["PATH"]
    for name in ("EPHEM_SECRET_KEY", "SLACK_BOT_TOKEN", "ADMIN_PASSWORD", "TF_VAR_region"):
        assert name not in env
    passed = child_environment(["TF_VAR_region", "NOT_SET_ANYWHERE"])
    assert passed["TF_VAR_region"] == "only-when-passed" and "NOT_SET_ANYWHERE" not in passed
    # A value passed on is treated as a secret from then on.
    assert redaction.scrub("region only-when-passed") == "region ***"


PRINT_ENVIRONMENT = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')"


async def test_the_tool_sees_the_allow_list_what_is_passed_and_what_the_caller_sets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEM_DATABASE_URL", "postgresql://ephem:state-db-password@db/ephem")
    monkeypatch.setenv("ADMIN_PASSWORD", "the-server-password")
    monkeypatch.setenv("PROJECT_FLAG", "passed-on")
    result = await proc.run([sys.executable, "-c", PRINT_ENVIRONMENT], pass_env=["PROJECT_FLAG"],
                            env={"DATABASE_URL": "set-by-the-phase"}, timeout=30)
    seen = dict(line.split("=", 1) for line in result.output)
    assert seen["DATABASE_URL"] == "set-by-the-phase"
    assert seen["PROJECT_FLAG"] == "***"  # passed on, and scrubbed from the output as a secret
    assert "ADMIN_PASSWORD" not in seen and "EPHEM_DATABASE_URL" not in seen
    assert set(seen) - {"DATABASE_URL", "PROJECT_FLAG", *proc.STREAMING_ENV} <= CHILD_ALLOWED | {
        k for k in seen if k.startswith("LC_")}


async def test_every_line_is_scrubbed_before_anyone_sees_it() -> None:
    secret = f"s3cr3t-{secrets.token_hex(6)}"
    redaction.register(secret)
    seen: list[str] = []

    async def on_line(line: str) -> None:
        seen.append(line)

    code = ("import sys\n"
            "print('password=' + sys.argv[1])\n"
            "print('url postgresql://admin:' + sys.argv[1] + '@db:5432/x')\n"
            "print('unregistered postgresql://u:hunter22@db/x')\n")
    result = await proc.run([sys.executable, "-c", code, secret], timeout=30, on_line=on_line)
    assert seen == ["password=***", "url postgresql://admin:***@db:5432/x",
                    "unregistered postgresql://u:***@db/x"]
    assert result.output == tuple(seen)


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


async def test_cancellation_kills_the_tool_even_while_on_line_is_stuck() -> None:
    pids: list[int] = []
    stuck, release = asyncio.Event(), asyncio.Event()

    async def on_line(line: str) -> None:
        if line.isdigit():
            pids.append(int(line))
            return
        stuck.set()
        try:
            await asyncio.Event().wait()
        finally:  # like rolling back a progress write on a connection that hangs
            await release.wait()

    task = asyncio.create_task(proc.run(["sh", "-c", GRANDCHILD], timeout=60, on_line=on_line))
    await asyncio.wait_for(stuck.wait(), 20)
    task.cancel()
    try:
        assert await _gone(pids[0])  # killed while on_line is still cleaning up
        assert not task.done()
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


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


# --------------------------------------------------------------------------- a bot that dies

# A bot in miniature: runs `sh` under `proc.run` and prints what `sh` prints; the test kills it.
BOT = (
    "import asyncio, sys\n"
    "from bot import proc\n"
    "async def main():\n"
    "    async def show(line):\n"
    "        print(line, flush=True)\n"
    "    await proc.run(sys.argv[1:], timeout=120, on_line=show, kill_grace=2,\n"
    "                   interrupt_first=sys.argv[1] != 'sh')\n"
    "asyncio.run(main())\n"
)
# Starts a grandchild in its group and one that leaves it (setsid), reports their pids and its
# own, says it is up, and waits.
FAMILY = ("sleep 60 >/dev/null 2>&1 & echo $!; setsid sleep 61 >/dev/null 2>&1 & echo $!; "
          "echo $$; echo up; wait")


async def _start_bot(*args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    bot = await asyncio.create_subprocess_exec(sys.executable, "-c", BOT, *args,
                                               stdout=asyncio.subprocess.PIPE)
    assert bot.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while (line := (await bot.stdout.readline()).decode().strip()) != "up":
            assert line, f"the bot ended early after {lines}"
            lines.append(line)
    return bot, lines


async def test_a_killed_bot_leaves_nothing_of_its_tool_running() -> None:
    bot, pids = await _start_bot("sh", "-c", FAMILY)
    assert len(pids) == 3 and all(await asyncio.gather(*(_alive(int(p)) for p in pids)))
    bot.send_signal(signal.SIGKILL)
    await bot.wait()
    for pid in pids:  # the tool, its grandchild, and the one that left the group
        assert await _gone(int(pid)), f"process {pid} outlived the bot"


async def test_a_killed_bot_interrupts_first_when_asked(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    bot, _ = await _start_bot(sys.executable, "-c", POLITE, str(saved))
    bot.send_signal(signal.SIGKILL)
    await bot.wait()
    async with asyncio.timeout(20):  # only turns a hang into a failure
        while not (saved.exists() and saved.read_text()):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.02)
    assert saved.read_text() == "state saved"


async def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


# --------------------------------------------------------------------------- the fence

# Appends "start <t>" and "end <t>" (wall clock) to a file around a sleep.
RECORDED = ("import sys, time\n"
            "log = open(sys.argv[1], 'a', buffering=1)\n"
            "log.write(f'start {time.time()}\\n')\n"
            "print('up', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "log.write(f'end {time.time()}\\n')\n")


def _intervals(path: Path) -> list[tuple[float, float]]:
    marks = [line.split() for line in path.read_text().splitlines()]
    starts = [float(t) for kind, t in marks if kind == "start"]
    ends = [float(t) for kind, t in marks if kind == "end"]
    return list(zip(starts, ends, strict=True))


@pytest.fixture
def fence(pg_admin_url: str, db_prefix: str) -> proc.Fence:
    return proc.Fence(url=pg_admin_url, name=f"{db_prefix}test:{secrets.token_hex(4)}",
                      what="the test tool")


async def test_a_fenced_run_waits_for_the_earlier_one_and_says_so(
        fence: proc.Fence, tmp_path: Path) -> None:
    log = tmp_path / "runs"
    first_up = asyncio.Event()
    waits: list[str] = []

    async def up(_: str) -> None:
        first_up.set()

    async def waiting() -> None:
        waits.append(fence.waiting_text())

    first = asyncio.create_task(proc.run([sys.executable, "-c", RECORDED, str(log), "1"],
                                         timeout=60, fence=fence, on_line=up))
    await asyncio.wait_for(first_up.wait(), 20)
    second = await proc.run([sys.executable, "-c", RECORDED, str(log), "0"], timeout=60,
                            fence=fence, on_wait=waiting)
    assert (await first).returncode == 0 and second.returncode == 0
    assert waits == ["waiting for an earlier run of the test tool to finish"]
    (_, first_end), (second_start, _) = _intervals(log)
    assert first_end <= second_start


async def test_a_fence_held_on_another_host_keeps_the_tool_from_starting(
        fence: proc.Fence, tmp_path: Path) -> None:
    log = tmp_path / "runs"
    other = await asyncpg.connect(asyncpg_dsn(fence.url))  # an earlier run's supervisor
    try:
        await other.execute("SELECT pg_advisory_lock($1)", fence.key)
        waiting = asyncio.Event()

        async def on_wait() -> None:
            waiting.set()

        run = asyncio.create_task(proc.run([sys.executable, "-c", RECORDED, str(log), "0"],
                                           timeout=60, fence=fence, on_wait=on_wait))
        await asyncio.wait_for(waiting.wait(), 20)
        # The supervisor's session is queued behind ours on the lock.
        async with asyncio.timeout(20):
            while not await other.fetchval(  # noqa: ASYNC110 - another session's state
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted AND (classid::bigint << 32 | objid::bigint) = $1",
                    fence.key):
                await asyncio.sleep(0.02)
        assert not log.exists()
        released_at = time.time()
        await other.execute("SELECT pg_advisory_unlock($1)", fence.key)
        assert (await run).returncode == 0
    finally:
        await other.close()
    [(started, _)] = _intervals(log)
    assert started >= released_at


async def test_losing_the_fence_stops_the_tool(fence: proc.Fence, tmp_path: Path) -> None:
    pids: list[int] = []
    up = asyncio.Event()

    async def on_line(line: str) -> None:
        if line.isdigit():
            pids.append(int(line))
        else:
            up.set()

    run = asyncio.create_task(proc.run(["sh", "-c", "echo $$; echo up; sleep 60"], timeout=60,
                                       fence=fence, on_line=on_line))
    await asyncio.wait_for(up.wait(), 20)
    admin = await asyncpg.connect(asyncpg_dsn(fence.url))
    try:  # the fence's server ends its session (a restart, a database dropped WITH (FORCE))
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND (classid::bigint << 32 | objid::bigint) = $1",
            fence.key)
    finally:
        await admin.close()
    with pytest.raises(TemporaryError, match="the lock on the test tool was lost"):
        await run
    assert await _gone(pids[0])


async def test_giving_up_while_waiting_for_the_fence_says_so(fence: proc.Fence) -> None:
    other = await asyncpg.connect(asyncpg_dsn(fence.url))
    try:
        await other.execute("SELECT pg_advisory_lock($1)", fence.key)
        with pytest.raises(proc.ProcTimeoutError) as caught:
            await proc.run(["true"], timeout=1, fence=fence)
    finally:
        await other.close()
    assert caught.value.reason == (
        "true gave up after 1 s waiting for an earlier run of the test tool to finish")


async def test_an_unreachable_fence_is_a_temporary_error_and_nothing_runs(
        tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    nowhere = proc.Fence(url="postgresql://ephem:pw-of-nowhere@127.0.0.1:9/x", name="n",
                         what="nothing")
    with pytest.raises(TemporaryError) as caught:
        await proc.run(["touch", str(marker)], timeout=30, fence=nowhere)
    assert caught.value.reason.startswith(
        "cannot run touch: the lock on nothing could not be taken on "
        "postgresql://ephem:***@127.0.0.1:9/x")
    assert not marker.exists()


async def test_raw_output_reaches_on_line_as_written_and_the_tail_scrubbed() -> None:
    """A tool whose output is data (`terraform output -json`) reads its secrets back."""
    secret = f"s3cr3t-{uuid.uuid4().hex[:12]}"
    redaction.register(secret)
    seen: list[str] = []

    async def on_line(line: str) -> None:
        seen.append(line)

    result = await proc.run(["sh", "-c", f"echo token={secret}"], timeout=30,
                            on_line=on_line, raw_output=True)
    assert seen == [f"token={secret}"]
    assert result.output == ("token=***",)


async def test_supervisors_are_forked_by_one_zygote_started_again_when_it_has_gone() -> None:
    """Every run's supervisor is a child of the one zygote (not a fresh interpreter per run);
    a zygote that died is replaced at the next run, which works all the same."""
    supervisor_parent = [sys.executable, "-c", "import os; print(open(f'/proc/{os.getppid()}"
                         "/stat').read().rpartition(')')[2].split()[1])"]
    await proc.prepare()
    parents = set()
    for _ in range(2):
        got = await proc.run(supervisor_parent, timeout=30)
        parents.add(int(got.output[-1]))
    assert len(parents) == 1
    zygote = parents.pop()
    cmdline = await asyncio.to_thread(Path(f"/proc/{zygote}/cmdline").read_bytes)
    assert b"--zygote" in cmdline
    os.kill(zygote, signal.SIGKILL)
    assert await _gone(zygote)
    again = await proc.run(supervisor_parent, timeout=30)
    assert again.returncode == 0
    assert int(again.output[-1]) not in (zygote, 0)
