"""Keeps snapshots fresh and their warm pools full, in the background of `ephem serve`.

Why: an environment created with `--data snapshot` should wait for no copy, so each snapshot's
pool is refilled after every take; a snapshot with a `schedule` is rebuilt when its newest build
is older than that; pools of rotated-out golden databases are drained. The scheduler calls
`tick()` every interval; builds run as tasks of their own (one per snapshot, and across
processes the build's advisory lock keeps it to one), so a long build never delays reminders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from bot import metrics
from bot.config import SnapshotConfig
from bot.errors import PhaseError
from pipelines.data.clone import WarmPool
from pipelines.data.golden import latest_snapshot
from pipelines.data.snapshot import BuildProgress, build_snapshot

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class SnapshotKeeper:
    def __init__(
        self,
        *,
        admin_url: str,
        prefix: str,
        snapshots: Mapping[str, SnapshotConfig],
        key: bytes,
        pool: WarmPool | None,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._admin_url = admin_url
        self._prefix = prefix
        self._snapshots = dict(snapshots)
        self._key = key
        self._pool = pool
        self._clock = clock
        self.builds: dict[str, asyncio.Task[None]] = {}

    async def tick(self) -> None:
        """Start due builds; refill pools; drain pools of golden databases that are gone."""
        now = self._clock()
        for name, cfg in self._snapshots.items():
            latest = await latest_snapshot(self._admin_url, prefix=self._prefix, name=name)
            metrics.SNAPSHOT_AGE_SECONDS.labels(name).set(
                (now - latest.built_at).total_seconds() if latest is not None else math.inf)
            if cfg.schedule is not None:
                metrics.SNAPSHOT_SCHEDULE_SECONDS.labels(name).set(cfg.schedule.total_seconds())
            due = cfg.schedule is not None and (
                latest is None or latest.built_at + cfg.schedule <= now)
            if due and self._key and name not in self.builds:
                self.builds[name] = asyncio.create_task(self._build(name, cfg),
                                                        name=f"ephem-snapshot-{name}")
            if latest is not None and self._pool is not None and cfg.pool > 0:
                made = await self._pool.fill(latest.database, cfg.pool)
                if made:
                    log.info("snapshot %s: %d clone(s) added to the warm pool", name, made)
                metrics.POOL_READY.labels(name).set(await self._pool.ready(latest.database))
            if self._pool is not None:
                metrics.POOL_TARGET.labels(name).set(cfg.pool)
        if self._pool is not None:
            await self._pool.drain()

    async def _build(self, name: str, cfg: SnapshotConfig) -> None:
        async def progress(p: BuildProgress) -> None:
            log.info("snapshot %s: %d/%d tables, %d rows, %.0f rows/s", name, p.tables_done,
                     p.tables_total, p.rows, p.rows_per_second)

        try:
            info = await build_snapshot(name=name, config=cfg, target_admin_url=self._admin_url,
                                        prefix=self._prefix, key=self._key, progress=progress)
            log.info("snapshot %s built: %s (%d rows in %.1fs)", name, info.database,
                     info.rows, info.seconds)
            if self._pool is not None and cfg.pool > 0:
                await self._pool.fill(info.database, cfg.pool)
        except PhaseError as exc:
            log.warning("snapshot %s: scheduled build failed: %s", name, exc.reason)
        except Exception:
            log.exception("snapshot %s: scheduled build failed unexpectedly", name)
        finally:
            self.builds.pop(name, None)

    async def stop(self) -> None:
        for task in list(self.builds.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wait(self) -> Awaitable[list[None]]:
        """All builds under way (for tests and the CLI)."""
        return asyncio.gather(*self.builds.values())
