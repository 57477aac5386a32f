"""The composition root: the only place that builds and connects everything.

`handlers` (the Slack edge's behaviour) and `pipelines` (the work) never import each other; this
module hands each what it needs — the store, the blueprint, the notifier — and plugs the runner
into the executor and the command handler into the bolt app. Changing how Ephem is assembled
means changing this file only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from bot import approvals, proc
from bot.config import INFRA_OUTPUT, Blueprint, Settings, masking_key, state_directory
from bot.domain import PhaseName, format_duration
from bot.errors import PermanentError
from bot.executor import Executor
from bot.pg import asyncpg_dsn
from bot.ports import Invocation, Reply, Visibility
from bot.reconcile import Reconciler
from bot.redaction import register
from bot.scheduler import Scheduler
from bot.slack import messages
from bot.slack.lifecycle import LifecycleAnnouncer
from bot.slack.notifier import Notifier
from bot.slack.outbox import OutboxTiming
from bot.slack.writer import ConsoleWriter, SlackWriter, WebApiWriter, make_web_client
from bot.store import Store
from bot.tasks import InFlight
from handlers.commands import Commands
from pipelines.base import Phase, PhaseContext, PhaseResult
from pipelines.code.kubernetes import KubernetesDeployer
from pipelines.code.local import LocalDeployer
from pipelines.code.phase import CodePhase
from pipelines.code.sources import Resolver
from pipelines.data.clone import WarmPool
from pipelines.data.keeper import SnapshotKeeper
from pipelines.data.orphans import DatabaseSizes
from pipelines.data.postgres import DatabasePhase
from pipelines.infra.namespace import NamespaceProvider
from pipelines.infra.orphans import DataServer, OrphanFinder
from pipelines.infra.phase import InfraPhase
from pipelines.infra.terraform import TerraformProvider
from pipelines.runner import Runner

log = logging.getLogger(__name__)


def infra_phase(settings: Settings, blueprint: Blueprint) -> InfraPhase | None:
    """The infra phase from `phases.infra`: Terraform and/or a Kubernetes namespace."""
    infra = blueprint.phases.infra
    if infra is None:
        return None
    terraform = (TerraformProvider(infra.terraform, state_url=settings.database_url)
                 if infra.terraform is not None else None)
    namespace = NamespaceProvider(infra.kubernetes) if infra.kubernetes is not None else None
    return InfraPhase(terraform=terraform, namespace=namespace)


def orphan_finder(settings: Settings, blueprint: Blueprint, store: Store) -> OrphanFinder:
    """What `ephem doctor --orphans` (and the reaper) looks through: the blueprint's
    workspaces, namespaces and environment databases."""
    infra = infra_phase(settings, blueprint)
    data = blueprint.phases.data
    server = None
    if data is not None and not INFRA_OUTPUT.match(data.server or ""):
        own = urlsplit(asyncpg_dsn(settings.database_url)).path.lstrip("/")
        server = DataServer(data.server or settings.database_url, data.database_prefix,
                            keep=frozenset({own}))
    return OrphanFinder(store=store, terraform=infra.terraform if infra else None,
                        namespace=infra.namespace if infra else None, data=server)


def database_sizes(settings: Settings, blueprint: Blueprint) -> DatabaseSizes | None:
    """What measures environment databases for their cost: the shared data server's (a
    per-environment server from the infra phase is not measured)."""
    data = blueprint.phases.data
    if data is None or INFRA_OUTPUT.match(data.server or "") or not blueprint.cost.priced:
        return None
    return DatabaseSizes(data.server or settings.database_url, prefix=data.database_prefix)


class ServerFromInfra:
    """The data phase when `phases.data.server` is `{infra.<output>}`: the server is an
    infrastructure output (a PostgreSQL per environment in place of a managed service), read
    from the environment's infra outputs — or from the infra phase's secret outputs when the
    URL carries a password — each time the phase runs."""

    name = PhaseName.DATA

    def __init__(self, *, output: str, infra: InfraPhase,
                 make: Callable[[str], DatabasePhase]) -> None:
        self.output = output
        self.infra = infra
        self.make = make

    async def _phase(self, ctx: PhaseContext) -> DatabasePhase:
        url = (ctx.outputs.get(PhaseName.INFRA) or {}).get(self.output)
        if url is None:
            url = (await self.infra.secrets(ctx)).get(self.output)
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise PermanentError(f"phases.data.server is {{infra.{self.output}}} but the infra "
                                 f"phase has no postgresql:// output `{self.output}`")
        register(url)
        return self.make(url)

    async def describe(self, ctx: PhaseContext) -> str:
        return await (await self._phase(ctx)).describe(ctx)

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        return await (await self._phase(ctx)).apply(ctx)

    async def destroy(self, ctx: PhaseContext) -> None:
        await (await self._phase(ctx)).destroy(ctx)

    async def secrets(self, ctx: PhaseContext) -> Mapping[str, str]:
        return await (await self._phase(ctx)).secrets(ctx)


def data_parts(settings: Settings, blueprint: Blueprint, infra: InfraPhase | None = None
               ) -> tuple[Phase | None, SnapshotKeeper | None]:
    """The data phase and, when snapshots are configured, the keeper of their pools."""
    data = blueprint.phases.data
    if data is None:
        return None, None
    from_infra = INFRA_OUTPUT.match(data.server or "")
    if from_infra is not None and infra is not None:
        # Per-environment servers: no shared pool or keeper (snapshots live on one server).
        def make(url: str) -> DatabasePhase:
            return DatabasePhase(admin_url=url, prefix=data.database_prefix,
                                 migrations=data.migrations, snapshots=data.snapshots,
                                 pool=None)

        return ServerFromInfra(output=from_infra.group(1), infra=infra, make=make), None
    admin_url = data.server or settings.database_url
    pooled = any(s.pool > 0 for s in data.snapshots.values())
    pool = WarmPool(admin_url, prefix=data.database_prefix) if pooled else None
    phase = DatabasePhase(admin_url=admin_url, prefix=data.database_prefix,
                          migrations=data.migrations, snapshots=data.snapshots, pool=pool)
    keeper = None
    if data.snapshots:
        keeper = SnapshotKeeper(admin_url=admin_url, prefix=data.database_prefix,
                                snapshots=data.snapshots, key=masking_key(settings), pool=pool)
    return phase, keeper


def open_store(settings: Settings) -> Store:
    """The state store, its pool sized by `EPHEM_DB_POOL_SIZE` / `EPHEM_DB_MAX_OVERFLOW`."""
    return Store(settings.database_url, pool_size=settings.db_pool_size,
                 max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout)
def code_phase(settings: Settings, blueprint: Blueprint) -> CodePhase | None:
    """The code phase with the deployer `phases.code` chooses; None when it is not configured."""
    code = blueprint.phases.code
    if code is None:
        return None
    if code.deployer == "local":
        assert code.local is not None
        return CodePhase(LocalDeployer(code.local, state_dir=state_directory(settings)))
    assert code.kubernetes is not None
    return CodePhase(KubernetesDeployer(code.kubernetes, references=blueprint.references))


def secret_key(settings: Settings) -> bytes:
    key = settings.secret_key.get_secret_value()
    if key:
        return key.encode()
    log.warning("EPHEM_SECRET_KEY is not set: using a key for this process only, so "
                "environment passwords change when Ephem restarts. Set it in production.")
    return secrets.token_bytes(32)


@dataclass
class Ephem:
    """Everything one bot process runs, built and wired; `start`/`stop` in dependency order."""

    settings: Settings
    blueprint: Blueprint
    store: Store
    writer: SlackWriter
    notifier: Notifier
    commands: Commands
    runner: Runner
    executor: Executor
    scheduler: Scheduler
    keeper: SnapshotKeeper | None = None
    reconciler: Reconciler | None = None
    inflight: InFlight = field(default_factory=InFlight)

    async def start(self, *, executor: bool = True, scheduler: bool = True) -> None:
        self.notifier.start()
        if executor:
            await proc.prepare()  # the tools' supervisors are ready before the first job
            await self.executor.start()
        if scheduler:
            self.scheduler.start()

    async def stop(self) -> None:
        """Drain: stop taking work, let running phases finish up to the grace period, release
        the rest, then make sure the final Slack updates land.

        The scheduler's last tick, the snapshot builds, the acked requests and the running jobs
        are waited for together, not one after another, each bounded by the grace period (the
        executor's own bound is its grace plus a moment to stop claiming); the outbox then has
        at most 10 s more. So a stop takes at most about `grace + 10` seconds, whatever is busy.
        """
        grace = self.settings.grace_seconds
        parts: list[Awaitable[object]] = [
            self.scheduler.stop(tick_grace=min(grace, 10.0)),
            self.inflight.drain(grace),
            self.executor.stop(),
        ]
        if self.keeper is not None:
            parts.append(self.keeper.stop())
        if self.reconciler is not None:
            parts.append(self.reconciler.stop())
        for result in await asyncio.gather(*parts, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                log.warning("shutdown: a part failed to stop cleanly (%s)",
                            type(result).__name__)
        await self.notifier.close(timeout=min(grace, 10.0))
        await self.writer.close()
        await self.store.close()

    async def invoke(self, inv: Invocation) -> list[Reply]:
        """Run one command as Slack would, and deliver its replies (used by shell and demo):
        they are shown before this returns, so the next command's answer comes after them."""
        replies = await self.commands.command(inv)
        await self.notifier.flush(only=await self.notifier.deliver(inv, replies))
        return replies


def build(settings: Settings, blueprint: Blueprint, *, writer: SlackWriter | None = None,
          timing: OutboxTiming | None = None,
          skipped: Mapping[PhaseName, str] | None = None, reconcile: bool = True,
          clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Ephem:
    """Everything one process runs. `reconcile` False: the scheduler never runs the orphan
    finder (the shell and the demo, which may share a server with others, leave that to
    `ephem serve` and `ephem doctor --orphans`)."""
    store = open_store(settings)
    if writer is None:
        writer = WebApiWriter(make_web_client(settings))
    console = isinstance(writer, ConsoleWriter)
    if timing is None:
        timing = OutboxTiming(pace=0.0) if console else OutboxTiming()
    # In a terminal a direct message would only print the credentials a second time.
    notifier = Notifier(store, writer, timing=timing, credentials_by_dm=not console)
    infra = infra_phase(settings, blueprint)
    data_phase, keeper = data_parts(settings, blueprint, infra)
    phases: dict[PhaseName, Phase] = {PhaseName.DATA: data_phase} if data_phase else {}
    if infra is not None:
        phases[PhaseName.INFRA] = infra
    code = code_phase(settings, blueprint)
    if code is not None:
        phases[PhaseName.CODE] = code
    runner = Runner(store=store, phases=phases, blueprint=blueprint, events=notifier,
                    secret_key=secret_key(settings), skipped=skipped)
    notifier.credentials = runner  # credentials are derived again when they are sent
    commands = Commands(store=store, blueprint=blueprint, clock=clock, credentials=runner,
                        releases=Resolver(blueprint.references), channels=notifier,
                        directory=notifier)
    executor = Executor(
        store=store, work=runner, owner=f"{socket.gethostname()}:{os.getpid()}",
        workers=settings.workers, lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds, grace_seconds=settings.grace_seconds,
    )

    announcer = LifecycleAnnouncer(notifier, blueprint)
    notifier.cost = lambda env: announcer.cost_of(env, datetime.now(UTC))
    async def expire_approvals() -> None:
        """Requests nobody decided in time: the job fails, the thread and the card say so."""
        async with store.transaction() as s:
            expired = await approvals.expire(s, now=clock())
        text = messages.approval_expired(format_duration(blueprint.approvals.expire_after))
        for outcome in expired:
            await notifier.deliver(
                Invocation(user_id="ephem", channel_id="", source="scheduler"),
                [Reply(text, visibility=Visibility.THREAD, env_id=outcome.env_id),
                 Reply("", visibility=Visibility.APPROVAL, approval_id=outcome.request_id)])

    periodic: list[Callable[[], Awaitable[None]]] = [expire_approvals]
    if keeper is not None:
        periodic.append(keeper.tick)
    rc = blueprint.reconcile
    reconciler = None
    if reconcile and rc.enabled:
        reconciler = Reconciler(
            store=store, finder=orphan_finder(settings, blueprint, store), report=announcer,
            grace=rc.grace, every=rc.every, retry_base=rc.retry_base, retry_cap=rc.retry_cap)
        periodic.append(reconciler.tick)
    scheduler = Scheduler(store=store, remind_before=blueprint.defaults.remind_before,
                          last_remind_before=blueprint.defaults.last_reminder,
                          announce=announcer, interval=settings.scheduler_seconds, clock=clock,
                          periodic=periodic, sizes=database_sizes(settings, blueprint))
    return Ephem(settings=settings, blueprint=blueprint, store=store, writer=writer,
                 notifier=notifier, commands=commands, runner=runner, executor=executor,
                 scheduler=scheduler, keeper=keeper, reconciler=reconciler)
