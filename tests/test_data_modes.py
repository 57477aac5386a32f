"""What fills an environment's database: the example shop's migrations and seeds, reset-data,
and (with a built snapshot) a clone from the warm pool with newer migrations on top."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from bot.cli.sample_data import SHOP, make_production
from bot.config import Blueprint, MigrationsConfig, SnapshotConfig
from bot.domain import DataMode, DataRequest, ReleaseSet
from bot.errors import PermanentError
from bot.pg import asyncpg_dsn
from pipelines.base import PhaseContext
from pipelines.data.clone import WarmPool
from pipelines.data.postgres import DatabasePhase
from pipelines.data.snapshot import build_snapshot

KEY = b"data-modes-key"
MIGRATIONS = MigrationsConfig(locations=[SHOP / "migrations"], seed_locations=[SHOP / "seed"])


def ctx(env_id: int, name: str, mode: DataMode, *, snapshot: str | None = None,
        reset: bool = False) -> PhaseContext:
    async def emit(detail: str) -> None:
        return None

    return PhaseContext(env_id=env_id, name=name, owner_id="U1", release_set=ReleaseSet({}),
                        data=DataRequest(mode, snapshot), blueprint=Blueprint(), outputs={},
                        emit=emit, secret_key=KEY, reset_data=reset)


async def fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


@pytest.fixture
async def made(pg_admin_url: str, db_prefix: str) -> AsyncIterator[list[PhaseContext]]:
    """Contexts appended here are destroyed after the test."""
    contexts: list[PhaseContext] = []
    yield contexts
    phase = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix)
    for c in contexts:
        await phase.destroy(c)


async def test_seed_mode_migrates_and_seeds_as_the_environments_role(
    pg_admin_url: str, db_prefix: str, made: list[PhaseContext]
) -> None:
    phase = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix, migrations=MIGRATIONS)
    c = ctx(1, "dm-seed", DataMode.SEED)
    made.append(c)
    result = await phase.apply(c)
    url = result.secrets["database_url"]
    assert result.outputs["migrations"] == [
        "V1__customers_and_orders.sql", "V2__support_tickets.sql", "V3__marketing_opt_in.sql",
        "R__customer_order_totals.sql", "V1__products_and_a_customer.sql"]
    rows = await fetch(url, "SELECT count(*) AS n FROM products")
    assert rows[0]["n"] == 3
    owners = await fetch(url, "SELECT DISTINCT tableowner FROM pg_tables "
                              "WHERE schemaname = 'public'")
    assert [r["tableowner"] for r in owners] == [f"{db_prefix}dm_seed"]
    again = await phase.apply(c)  # idempotent: nothing more to apply
    assert again.outputs["migrations"] == []


async def test_none_mode_has_the_schema_but_no_seed_rows(
    pg_admin_url: str, db_prefix: str, made: list[PhaseContext]
) -> None:
    phase = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix, migrations=MIGRATIONS)
    c = ctx(2, "dm-none", DataMode.NONE)
    made.append(c)
    url = (await phase.apply(c)).secrets["database_url"]
    assert (await fetch(url, "SELECT count(*) AS n FROM products"))[0]["n"] == 0


async def test_reset_data_throws_away_what_was_written(
    pg_admin_url: str, db_prefix: str, made: list[PhaseContext]
) -> None:
    phase = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix, migrations=MIGRATIONS)
    c = ctx(3, "dm-reset", DataMode.SEED)
    made.append(c)
    url = (await phase.apply(c)).secrets["database_url"]
    await fetch(url, "INSERT INTO products (sku, name, price) VALUES ('X', 'x', 1) RETURNING id")
    assert (await fetch(url, "SELECT count(*) AS n FROM products"))[0]["n"] == 4
    await phase.apply(replace(c, reset_data=True))
    assert (await fetch(url, "SELECT count(*) AS n FROM products"))[0]["n"] == 3


async def test_snapshot_mode_takes_a_pooled_clone_and_migrates_on_top(
    pg_admin_url: str, db_prefix: str, made: list[PhaseContext]
) -> None:
    source = await make_production(pg_admin_url, f"{db_prefix}shop_prod", customers=120)
    snap = SnapshotConfig(source=source.url, rules=SHOP / "masking.yaml", pool=1)
    phase_without = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix,
                                  migrations=MIGRATIONS, snapshots={"shop": snap})
    with pytest.raises(PermanentError, match="has not been built yet"):
        await phase_without.apply(ctx(4, "dm-early", DataMode.SNAPSHOT, snapshot="shop"))
    made.append(ctx(4, "dm-early", DataMode.SNAPSHOT, snapshot="shop"))

    info = await build_snapshot(name="shop", config=snap, target_admin_url=pg_admin_url,
                                prefix=db_prefix, key=KEY)
    pool = WarmPool(pg_admin_url, prefix=db_prefix)
    assert await pool.fill(info.database, 1) == 1
    phase = DatabasePhase(admin_url=pg_admin_url, prefix=db_prefix, migrations=MIGRATIONS,
                          snapshots={"shop": snap}, pool=pool)
    c = ctx(5, "dm-snap", DataMode.SNAPSHOT, snapshot="shop")
    made.append(c)
    result = await phase.apply(c)
    assert result.outputs["snapshot"] == info.database
    assert "pool" in result.outputs["seconds"]  # taken from the pool, not copied
    # Production stopped at V2 (its history table came along in the snapshot): the
    # environment gets V3 on top; the repeatable view is unchanged, so it is not re-run.
    assert result.outputs["migrations"] == ["V3__marketing_opt_in.sql"]
    url = result.secrets["database_url"]
    masked = await fetch(url, "SELECT email FROM customers ORDER BY id LIMIT 20")
    originals = {r["email"] for r in await fetch(source.url, "SELECT email FROM customers")}
    assert masked and not {r["email"] for r in masked} & originals
    assert (await fetch(url, "SELECT count(*) AS n FROM customer_order_totals"))[0]["n"] > 0

    # A second environment finds the pool empty and copies instead.
    c2 = ctx(6, "dm-snap2", DataMode.SNAPSHOT, snapshot="shop")
    made.append(c2)
    second = await phase.apply(c2)
    assert "clone" in second.outputs["seconds"]


def test_the_card_shows_a_step_time_to_a_tenth_of_a_second_under_ten_seconds() -> None:
    """A data step from the warm pool takes a fraction of a second: `done in 0s` said nothing."""
    from datetime import timedelta

    from bot.domain import PhaseName
    from bot.slack.messages import phase_done

    assert phase_done(PhaseName.DATA, timedelta(seconds=0.34), destroying=False).endswith(
        "done in 0.3s")
    assert phase_done(PhaseName.DATA, timedelta(seconds=9.96), destroying=True).endswith(
        "removed in 10.0s")
    assert phase_done(PhaseName.DATA, timedelta(seconds=75), destroying=False).endswith(
        "done in 1m")
    assert phase_done(PhaseName.DATA, None, destroying=False) == "*data* — done"
