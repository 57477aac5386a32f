"""The snapshot keeper: scheduled builds when due, warm pools refilled after takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.cli.sample_data import SHOP, make_production
from bot.config import SnapshotConfig
from pipelines.data.clone import WarmPool
from pipelines.data.golden import list_snapshots
from pipelines.data.keeper import SnapshotKeeper

KEY = b"keeper-key"


async def test_a_due_snapshot_is_built_and_its_pool_kept_full(pg_admin_url: str,
                                                              db_prefix: str) -> None:
    prefix = f"{db_prefix}k_"
    source = await make_production(pg_admin_url, f"{db_prefix}keeper_prod", customers=80)
    cfg = SnapshotConfig(source=source.url, rules=SHOP / "masking.yaml", pool=2,
                         schedule=timedelta(hours=6))
    pool = WarmPool(pg_admin_url, prefix=prefix)
    now = [datetime.now(UTC)]
    keeper = SnapshotKeeper(admin_url=pg_admin_url, prefix=prefix, snapshots={"shop": cfg},
                            key=KEY, pool=pool, clock=lambda: now[0])

    await keeper.tick()  # nothing built yet: a build starts
    assert set(keeper.builds) == {"shop"}
    await keeper.wait()
    built = await list_snapshots(pg_admin_url, prefix=prefix, name="shop")
    assert len(built) == 1
    golden = built[0].database
    assert await pool.ready(golden) == 2  # the build filled the pool

    assert await pool.take(golden, f"{db_prefix}keeper_env")
    assert await pool.ready(golden) == 1
    await keeper.tick()  # not due again: no build, but the pool is refilled
    assert keeper.builds == {}
    assert await pool.ready(golden) == 2

    now[0] += timedelta(hours=7)  # due again
    await keeper.tick()
    await keeper.wait()
    assert len(await list_snapshots(pg_admin_url, prefix=prefix, name="shop")) == 2
    await keeper.stop()
