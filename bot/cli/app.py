"""The composition root: the only place that builds and connects everything.

`handlers` (the Slack edge's behaviour) and `pipelines` (the work) never import each other; this
module hands each what it needs — the store, the blueprint, the notifier — and plugs the runner
into the executor and the command handler into the bolt app. Changing how Ephem is assembled
means changing this file only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

from bot.config import Blueprint, Settings
from bot.domain import PhaseName
from bot.executor import Executor
from bot.ports import Invocation, Reply, Visibility
from bot.scheduler import Scheduler
from bot.slack.blocks import reminder_blocks
from bot.slack.notifier import Notifier
from bot.slack.outbox import OutboxTiming
from bot.slack.writer import ConsoleWriter, SlackWriter, WebApiWriter, make_web_client
from bot.store import Store, repo
from bot.tasks import InFlight
from handlers.commands import Commands
from pipelines.base import Phase
from pipelines.data.clone import WarmPool
from pipelines.data.keeper import SnapshotKeeper
from pipelines.data.postgres import DatabasePhase
from pipelines.runner import Runner

log = logging.getLogger(__name__)


def masking_key(settings: Settings) -> bytes:
    """EPHEM_MASKING_KEY; else derived from EPHEM_SECRET_KEY; else empty (builds refuse)."""
    key = settings.masking_key.get_secret_value()
    if key:
        return key.encode()
    secret = settings.secret_key.get_secret_value()
    if secret:
        return hmac.new(secret.encode(), b"ephem-masking", hashlib.sha256).digest()
    return b""


def data_parts(settings: Settings, blueprint: Blueprint
               ) -> tuple[DatabasePhase | None, SnapshotKeeper | None]:
    """The data phase and, when snapshots are configured, the keeper of their pools."""
    data = blueprint.phases.data
    if data is None:
        return None, None
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
    inflight: InFlight = field(default_factory=InFlight)

    async def start(self, *, executor: bool = True, scheduler: bool = True) -> None:
        self.notifier.start()
        if executor:
            await self.executor.start()
        if scheduler:
            self.scheduler.start()

    async def stop(self) -> None:
        """Drain: stop taking work, let running phases finish up to the grace period, release
        the rest, then make sure the final Slack updates land."""
        await self.scheduler.stop()
        if self.keeper is not None:
            await self.keeper.stop()
        await self.inflight.drain(self.settings.grace_seconds)
        await self.executor.stop()
        await self.notifier.close(timeout=min(self.settings.grace_seconds, 10.0))
        await self.writer.close()
        await self.store.close()

    async def invoke(self, inv: Invocation) -> list[Reply]:
        """Run one command as Slack would, and deliver its replies (used by shell and demo)."""
        replies = await self.commands.command(inv)
        await self.notifier.deliver(inv, replies)
        return replies


def build(settings: Settings, blueprint: Blueprint, *, writer: SlackWriter | None = None,
          timing: OutboxTiming | None = None) -> Ephem:
    store = Store(settings.database_url)
    if writer is None:
        writer = WebApiWriter(make_web_client(settings))
    console = isinstance(writer, ConsoleWriter)
    if timing is None:
        timing = OutboxTiming(pace=0.0) if console else OutboxTiming()
    # In a terminal a direct message would only print the credentials a second time.
    notifier = Notifier(store, writer, timing=timing, credentials_by_dm=not console)
    commands = Commands(store=store, blueprint=blueprint, channels=notifier)
    data_phase, keeper = data_parts(settings, blueprint)
    phases: dict[PhaseName, Phase] = {PhaseName.DATA: data_phase} if data_phase else {}
    runner = Runner(store=store, phases=phases, blueprint=blueprint, events=notifier,
                    secret_key=secret_key(settings))
    notifier.credentials = runner  # credentials are derived again when they are sent
    executor = Executor(
        store=store, work=runner, owner=f"{socket.gethostname()}:{os.getpid()}",
        workers=settings.workers, lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds, grace_seconds=settings.grace_seconds,
    )

    async def remind(env_id: int) -> None:
        async with store.transaction() as s:
            env = await repo.get_environment(s, env_id)
        text = (f"<@{env.owner_id}> *{env.name}* expires <!date^{int(env.expires_at.timestamp())}"
                f"^{{date_short_pretty}} at {{time}}|soon>. Extend it, or destroy it now?")
        await notifier.deliver(
            Invocation(user_id=env.owner_id, channel_id=env.channel_id, source="scheduler"),
            [Reply(text, visibility=Visibility.THREAD, env_id=env_id,
                   blocks=reminder_blocks(env.name, text))],
        )

    async def reaped(env_id: int) -> None:
        await notifier.deliver(
            Invocation(user_id="ephem", channel_id="", source="scheduler"),
            [Reply("Expired: destroying it now.", visibility=Visibility.THREAD, env_id=env_id)],
        )

    scheduler = Scheduler(store=store, remind_before=blueprint.defaults.remind_before,
                          remind=remind, reaped=reaped, interval=settings.scheduler_seconds,
                          periodic=[keeper.tick] if keeper else [])
    return Ephem(settings=settings, blueprint=blueprint, store=store, writer=writer,
                 notifier=notifier, commands=commands, runner=runner, executor=executor,
                 scheduler=scheduler, keeper=keeper)
