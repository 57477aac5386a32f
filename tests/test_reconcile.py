"""Reconciliation on the scheduler's beat: an orphaned namespace (kmock's emulated cluster,
reached by the real `kubernetes` client), an orphaned database and role (the test PostgreSQL)
are reported once in the operators' channel (the local Slack Web API), destroyed after the
grace period, and a failing destroy is retried with backoff and reported. The clock is the
test's; the finder is the one `ephem doctor --orphans` uses, built by the composition root."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import select

from bot.cli.app import build, orphan_finder
from bot.config import Blueprint, load_settings, parse_blueprint
from bot.domain import DataMode, DataRequest, EnvStatus, ReleaseSet
from bot.pg import asyncpg_dsn, quote_ident
from bot.reconcile import Reconciler
from bot.slack.lifecycle import LifecycleAnnouncer
from bot.slack.notifier import Notifier
from bot.slack.writer import ConsoleWriter, WebApiWriter, make_web_client
from bot.store import Store, repo
from bot.store.models import AuditEvent, OrphanSighting
from pipelines.base import PhaseContext
from pipelines.infra.namespace import NamespaceProvider
from tests.conftest import admin
from tests.kube import Cluster, kube_fixture  # noqa: F401
from tests.phases import make_env
from tests.slackapi import FAST_OUTBOX, SlackApi, slack_api_fixture  # noqa: F401

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
OPS = "COPS"


def ctx(env_id: int, name: str) -> PhaseContext:
    async def emit(_: str) -> None:
        return None

    return PhaseContext(env_id=env_id, name=name, owner_id="U1", release_set=ReleaseSet({}),
                        data=DataRequest(DataMode.NONE), blueprint=Blueprint(), outputs={},
                        emit=emit)


@pytest.fixture
async def notifier(store: Store, slack_api: SlackApi, bot_db_url: str
                   ) -> AsyncIterator[Notifier]:
    settings = load_settings(slack_bot_token="xoxb-reconcile", slack_api_url=slack_api.url,
                             database_url=bot_db_url, slack_app_token=None)
    writer = WebApiWriter(make_web_client(settings))
    notifier = Notifier(store, writer, timing=FAST_OUTBOX)
    notifier.start()
    yield notifier
    await notifier.close()
    await writer.close()


async def test_orphans_are_reported_once_destroyed_after_the_grace_and_failures_retried(
    store: Store, kube: Cluster, slack_api: SlackApi, notifier: Notifier, bot_db_url: str,
    pg_admin_url: str, db_prefix: str, tmp_path: Path,
) -> None:
    prefix = f"{db_prefix}r{uuid.uuid4().hex[:4]}_"  # other tests' leftovers are not ours
    blueprint = parse_blueprint({
        "channels": {"operators": OPS},
        "phases": {"infra": {"kubernetes": {"kubeconfig": str(kube.kubeconfig),
                                            "context": kube.context}},
                   "data": {"server": pg_admin_url, "database_prefix": prefix}},
        "reconcile": {"every": "10m", "grace": "1h", "retry_base": "15m", "retry_cap": "1h"},
    })
    settings = load_settings(database_url=bot_db_url, slack_app_token=None)

    # A namespace whose environment is destroyed, one whose environment lives; a database and
    # a role nobody owns, the role holding on to a schema elsewhere so its first drop fails.
    alive, gone = await make_env(store, "alive"), await make_env(store, "gone")
    async with store.transaction() as s:
        env = await repo.get_environment(s, gone, for_update=True)
        for status in (EnvStatus.DESTROYING, EnvStatus.DESTROYED):
            await repo.set_status(s, env, status)
    namespaces = NamespaceProvider(blueprint.phases.infra.kubernetes)  # type: ignore[union-attr]
    await namespaces.apply(ctx(alive, "alive"))
    await namespaces.apply(ctx(gone, "gone"))
    namespaces.close()
    ghost, holder = f"{prefix}ghost", f"{prefix}holds"
    await admin(pg_admin_url, f"CREATE ROLE {quote_ident(ghost)}",
                f"CREATE DATABASE {quote_ident(ghost)}")
    await admin(bot_db_url, f"CREATE SCHEMA {quote_ident(holder)} "
                            f"AUTHORIZATION {quote_ident(ghost)}")

    clock = [T0]
    finder = orphan_finder(settings, blueprint, store)
    announcer = LifecycleAnnouncer(notifier, blueprint)
    rc = blueprint.reconcile

    def reconciler() -> Reconciler:
        return Reconciler(store=store, finder=finder, report=announcer, grace=rc.grace,
                          every=rc.every, retry_base=rc.retry_base, retry_cap=rc.retry_cap,
                          clock=lambda: clock[0])

    def reports() -> list[str]:
        return [str(c.params["text"]) for c in slack_api.calls_to("chat.postMessage")
                if c.params["channel"] == OPS]

    # Two replicas at once: one runs, the other finds the run taken.
    first, other = await asyncio.gather(reconciler().run(), reconciler().run())
    ran = first or other
    assert (first is None) != (other is None) and ran is not None
    assert sorted(o.line() for o in ran.found) == sorted([
        f"namespace ephem-gone (environment {gone}, not live)",
        f"database {ghost}", f"role {ghost}"])
    assert ran.removed == [] and ran.failed == []
    assert await notifier.flush(20)
    [found] = reports()
    assert found.startswith(":mag: Reconciliation found 3 objects with Ephem's marks")
    assert "namespace ephem-gone" in found and f"role {ghost}" in found
    assert "destroyed 1h after it was first seen" in found

    # Within the grace period: nothing is destroyed, nothing is said again; a run is due only
    # every 10 minutes, across replicas.
    clock[0] = T0 + timedelta(minutes=5)
    assert await reconciler().run() is None
    clock[0] = T0 + timedelta(minutes=50)
    again = await reconciler().run()
    assert again is not None and again.new == [] and again.removed == []
    assert kube.get("v1/namespaces", None, "ephem-gone") is not None

    # After it: the namespace and the database go; the role cannot yet.
    clock[0] = T0 + timedelta(hours=1, minutes=1)
    late = await reconciler().run()
    assert late is not None
    assert sorted(o.kind for o in late.removed) == ["database", "namespace"]
    assert [o.line() for o in late.failed] == [f"role {ghost}"]
    assert kube.get("v1/namespaces", None, "ephem-gone") is None
    assert kube.get("v1/namespaces", None, "ephem-alive") is not None
    async with store.transaction() as s:
        [left] = (await s.execute(select(OrphanSighting))).scalars().all()
    assert (left.kind, left.attempts, left.next_try_at) == (
        "role", 1, T0 + timedelta(hours=1, minutes=16))
    assert left.last_error is not None and "depend" in left.last_error
    assert await notifier.flush(20)
    failed = [r for r in reports() if r.startswith(":warning:")]
    assert len(failed) == 1 and f"role {ghost}" in failed[0]
    assert "(try 1)" in failed[0] and "Trying again in 15m" in failed[0]

    # Backoff: not before its time; then it fails again and waits twice as long.
    clock[0] = T0 + timedelta(hours=1, minutes=11)
    assert (r := await reconciler().run()) is not None and r.failed == [] and r.removed == []
    clock[0] = T0 + timedelta(hours=1, minutes=21)
    assert (r := await reconciler().run()) is not None and len(r.failed) == 1
    async with store.transaction() as s:
        [left] = (await s.execute(select(OrphanSighting))).scalars().all()
    assert (left.attempts, left.next_try_at) == (2, T0 + timedelta(hours=1, minutes=51))

    # What held it is gone: the next due run removes it, and nothing is left to remember.
    await admin(bot_db_url, f"DROP SCHEMA {quote_ident(holder)}")
    clock[0] = T0 + timedelta(hours=1, minutes=41)
    assert (r := await reconciler().run()) is not None and r.removed == []
    clock[0] = T0 + timedelta(hours=1, minutes=52)
    assert (r := await reconciler().run()) is not None and [o.kind for o in r.removed] == ["role"]
    async with store.transaction() as s:
        assert (await s.execute(select(OrphanSighting))).first() is None
        actions = (await s.execute(select(AuditEvent.action).where(
            AuditEvent.action.startswith("orphan")).order_by(AuditEvent.id))).scalars().all()
    assert sorted(actions) == sorted(["orphan-found"] * 3 + ["orphan-removed"] * 3
                                     + ["orphan-remove-failed"] * 2)
    assert await finder.find() == []
    conn = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   ghost) == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                   ghost) == 0
    finally:
        await conn.close()
    assert await notifier.flush(20)
    assert len([r for r in reports() if r.startswith(":broom:")]) == 3


async def test_serve_reconciles_on_the_scheduler_beat_and_the_shell_does_not(
    bot_db_url: str
) -> None:
    settings = load_settings(database_url=bot_db_url, slack_app_token=None)
    for reconcile, blueprint, runs in ((True, {}, 1), (False, {}, 0),
                                       (True, {"reconcile": {"enabled": False}}, 0)):
        app = build(settings, parse_blueprint(blueprint), writer=ConsoleWriter(lambda _: None),
                    reconcile=reconcile)
        try:
            found = [w for w in app.scheduler.periodic
                     if isinstance(getattr(w, "__self__", None), Reconciler)]
            assert len(found) == runs, (reconcile, blueprint)
            assert (app.reconciler is not None) == bool(runs)  # stopped with the app
        finally:
            await app.store.close()
