"""A bot process for the crash test: an Executor and a Runner against the test database, whose
`data` phase writes a marker file once it has started and then blocks forever. The test SIGKILLs
this process mid-phase and checks that another executor resumes the job.

Usage: python executor_child.py DATABASE_URL MARKER_FILE
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bot.config import Blueprint
from bot.domain import PhaseName
from bot.executor import Executor
from bot.ports import RecordedEvents
from bot.store import Store
from pipelines.base import PhaseContext, PhaseResult
from pipelines.runner import Runner


class Quick:
    name = PhaseName.INFRA

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        return PhaseResult(outputs={"made_by": "child"})

    async def destroy(self, ctx: PhaseContext) -> None:
        return None

    async def describe(self, ctx: PhaseContext) -> str:
        return "quick"


class Stuck:
    name = PhaseName.DATA

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        self.marker.write_text(str(os.getpid()))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def destroy(self, ctx: PhaseContext) -> None:
        return None

    async def describe(self, ctx: PhaseContext) -> str:
        return "stuck"


async def main(url: str, marker: Path) -> None:
    store = Store(url, pool_size=2, max_overflow=2)
    runner = Runner(store=store, phases={PhaseName.INFRA: Quick(), PhaseName.DATA: Stuck(marker)},
                    blueprint=Blueprint(), events=RecordedEvents(), secret_key=b"child")
    executor = Executor(store=store, work=runner, owner=f"child-{os.getpid()}", workers=2,
                        lease_seconds=1.0, poll_seconds=0.1, grace_seconds=0.0)
    await executor.start()
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
