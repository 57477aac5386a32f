"""InFlight: work started after an ack is waited for on shutdown, and its failures are logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.tasks import InFlight


async def test_drain_waits_for_all_work_including_work_started_meanwhile() -> None:
    inflight = InFlight()
    gate = asyncio.Event()
    done: list[str] = []

    async def second() -> None:
        await gate.wait()
        done.append("second")

    async def first() -> None:
        await gate.wait()
        inflight.spawn(second(), name="second")  # e.g. a request accepted during shutdown
        done.append("first")

    inflight.spawn(first(), name="first")
    draining = asyncio.ensure_future(inflight.drain(5))
    await asyncio.sleep(0)
    assert not draining.done() and len(inflight) == 1
    gate.set()

    assert await draining is True
    assert done == ["first", "second"] and len(inflight) == 0


async def test_a_failure_in_tracked_work_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    inflight = InFlight()

    async def boom() -> None:
        raise ValueError("broken listener")

    inflight.spawn(boom(), name="mention-status-U1")
    assert await inflight.drain(5) is True
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "mention-status-U1" in record.getMessage()
    assert record.exc_info is not None and "broken listener" in str(record.exc_info[1])


async def test_drain_gives_up_after_its_deadline_and_cancels_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inflight = InFlight()
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    inflight.spawn(forever(), name="stuck")
    assert await inflight.drain(0.05) is False
    assert cancelled.is_set() and len(inflight) == 0
    assert "stuck" in caplog.text


async def test_drain_with_nothing_to_do_returns_at_once() -> None:
    assert await InFlight().drain(0) is True
