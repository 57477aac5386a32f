"""The state store on a real PostgreSQL: constraints and transitions the rest relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.cli.app import open_store
from bot.config import load_settings
from bot.domain import DataMode, EnvStatus, JobKind, JobStatus
from bot.errors import IllegalTransition, UserError
from bot.store import Store, repo
from bot.store.models import Job


async def _env(store: Store, name: str = "pr-1") -> int:
    async with store.transaction() as s:
        env = await repo.create_environment(
            s, name=name, owner_id="U1", channel_id="C1", reference="staging",
            release_set={"api": "1.0"}, data_mode=DataMode.SEED, data_snapshot=None,
            reason=None, expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        return env.id


async def test_live_name_is_unique_until_destroyed(store: Store) -> None:
    env_id = await _env(store)
    with pytest.raises(UserError, match="already exists"):
        await _env(store)
    async with store.transaction() as s:
        env = await repo.get_environment(s, env_id)
        await repo.set_status(s, env, EnvStatus.DESTROYING)
        await repo.set_status(s, env, EnvStatus.DESTROYED)
    assert await _env(store) != env_id  # the name is free again


async def test_illegal_transition_raises(store: Store) -> None:
    env_id = await _env(store)
    async with store.transaction() as s:
        env = await repo.get_environment(s, env_id)
        with pytest.raises(IllegalTransition, match="queued to ready"):
            await repo.set_status(s, env, EnvStatus.READY)


async def test_one_running_job_per_environment_is_enforced_by_the_database(store: Store) -> None:
    env_id = await _env(store)
    async with store.transaction() as s:
        s.add(Job(env_id=env_id, kind=JobKind.CREATE, status=JobStatus.RUNNING,
                  requested_by="U1"))
    with pytest.raises(IntegrityError):
        async with store.transaction() as s:
            s.add(Job(env_id=env_id, kind=JobKind.DESTROY, status=JobStatus.RUNNING,
                      requested_by="U1"))


async def test_slack_requests_are_seen_once(store: Store) -> None:
    keep = timedelta(minutes=10)
    async with store.transaction() as s:
        assert await repo.first_sighting(s, kind="event", key="Ev1", keep=keep) is True
    async with store.transaction() as s:
        assert await repo.first_sighting(s, kind="event", key="Ev1", keep=keep) is False
        # The same key of another kind is another request.
        assert await repo.first_sighting(s, kind="command", key="Ev1", keep=keep) is True
        assert await repo.first_sighting(s, kind="event", key="Ev2", keep=keep) is True


async def test_the_pool_is_sized_by_the_settings(bot_db_url: str) -> None:
    settings = load_settings(EPHEM_DATABASE_URL=bot_db_url, EPHEM_DB_POOL_SIZE="2",
                             EPHEM_DB_MAX_OVERFLOW="1", EPHEM_DB_POOL_TIMEOUT="0.2")
    store = open_store(settings)
    held: list[AsyncConnection] = []
    try:
        assert store.engine.pool.size() == 2  # type: ignore[attr-defined]
        for _ in range(3):  # pool_size + max_overflow connections at once
            held.append(await store.engine.connect())
        # A fourth waits pool_timeout for one of them, then fails instead of opening more.
        with pytest.raises(PoolTimeout):
            await store.engine.connect()
    finally:
        for conn in held:
            await conn.close()
        await store.close()


def test_the_default_pool_lets_three_replicas_fit_under_postgres_default() -> None:
    settings = load_settings()
    per_replica = settings.db_pool_size + settings.db_max_overflow
    assert 3 * per_replica <= 30


async def test_the_claims_line_check_has_its_index(store: Store) -> None:
    """Without it each claim compares every candidate with every job (a nested loop): about a
    second a claim with two thousand queued jobs."""
    async with store.transaction() as s:
        found = (await s.execute(text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'jobs' "
            "AND indexname = 'ix_jobs_env_active'"))).scalar_one_or_none()
    assert found is not None
    assert "(env_id, id)" in found and "queued" in found and "running" in found
