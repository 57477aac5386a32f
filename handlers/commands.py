"""The Slack edge's behaviour: parse → validate against the blueprint → persist → enqueue →
reply. Nothing slow happens here; the phases run later on the executor, found through the job
row this module writes.

Why a class: the same `Commands` serves slash commands, mentions, buttons and the terminal shell,
so every entry point behaves identically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Blueprint
from bot.domain import (
    CREATE_ORDER,
    DataMode,
    DataRequest,
    EnvRequest,
    EnvStatus,
    JobKind,
    JobStatus,
    format_duration,
    generate_name,
)
from bot.errors import UserError
from bot.ports import ChannelAccess, Invocation, Reply, Visibility
from bot.slack import messages
from bot.store import Store, repo
from bot.store.models import Environment
from handlers import parser
from handlers.parser import Create, Destroy, Extend, Help, ListEnvs, ResetData, Status

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CreatePlan:
    """A create request resolved against the blueprint; everything needed to persist it."""

    name: str | None
    reference: str | None
    release_set: dict[str, str]
    overrides: dict[str, str]
    ttl: timedelta
    data: DataRequest
    reason: str | None


def plan_create(req: EnvRequest, blueprint: Blueprint) -> CreatePlan:
    """Validate a create request against the blueprint (pure); raise UserError on a problem."""
    reference = req.match or blueprint.defaults.reference
    releases: dict[str, str] = {}
    if reference is not None:
        if reference not in blueprint.references:
            known = ", ".join(f"`{r}`" for r in blueprint.references) or "none are configured"
            raise UserError(f"There is no reference environment `{reference}` ({known}).")
        releases = dict(blueprint.references[reference].releases)
    known_components = set(blueprint.components) | set(releases)
    unknown = sorted(set(req.overrides) - known_components) if known_components else []
    if unknown:
        raise UserError(
            f"`--set` names unknown components: {', '.join(unknown)}. "
            f"Known: {', '.join(sorted(known_components))}."
        )
    ttl = req.ttl or blueprint.defaults.ttl
    if ttl > blueprint.defaults.max_ttl:
        raise UserError(
            f"`--ttl {format_duration(ttl)}` is longer than the "
            f"{format_duration(blueprint.defaults.max_ttl)} this project allows."
        )
    data = req.data or DataRequest(blueprint.defaults.data)
    phase = blueprint.phases.data
    if data.mode is not DataMode.NONE and phase is None:
        raise UserError(
            f"`--data {data}` needs a database, and this project's blueprint configures no data "
            "phase. Use `--data none`."
        )
    if data.mode is DataMode.SNAPSHOT:
        assert phase is not None
        name = data.snapshot or phase.default_snapshot
        if not phase.snapshots:
            raise UserError(
                "`--data snapshot` needs a masked snapshot, and this project has none configured. "
                "Use `--data seed` or `--data none`."
            )
        if name is None or name not in phase.snapshots:
            known = ", ".join(f"`{n}`" for n in phase.snapshots)
            raise UserError(f"There is no snapshot `{name or '(default)'}`; known: {known}.")
        data = DataRequest(DataMode.SNAPSHOT, name)
    return CreatePlan(
        name=req.name, reference=reference, release_set={**releases, **req.overrides},
        overrides=dict(req.overrides), ttl=ttl, data=data, reason=req.reason,
    )


def _ago(delta: timedelta) -> str:
    return format_duration(abs(delta)) if abs(delta) >= timedelta(minutes=1) else "<1m"


class Commands:
    """Implements `bot.ports.CommandHandler`."""

    def __init__(self, *, store: Store, blueprint: Blueprint, clock: Clock = utcnow,
                 channels: ChannelAccess | None = None) -> None:
        self.store = store
        self.blueprint = blueprint
        self.clock = clock
        self.channels = channels

    # ------------------------------------------------------------------ entry points

    async def command(self, inv: Invocation) -> list[Reply]:
        parsed = parser.parse(inv.text)
        if isinstance(parsed, parser.Ignore):
            return []
        if isinstance(parsed, parser.Say):
            return [Reply(parsed.text)]
        try:
            return await self._run(inv, parsed.command)
        except UserError as exc:
            return [Reply(str(exc))]

    async def action(self, inv: Invocation, *, action_id: str, value: str) -> list[Reply]:
        try:
            if action_id == "retry":
                return await self._retry(inv, value)
            if action_id == "destroy":
                return await self._destroy(inv, Destroy(value))
            if action_id == "extend":
                return await self._extend(inv, Extend(value))
        except UserError as exc:
            return [Reply(str(exc))]
        return [Reply(f"That button (`{action_id}`) is not one I know; it may be from an older "
                      "version of Ephem.")]

    async def _run(self, inv: Invocation, cmd: parser.Command) -> list[Reply]:
        match cmd:
            case Create():
                return await self._create(inv, cmd)
            case ListEnvs():
                return await self._list(inv, cmd)
            case Status():
                return await self._status(cmd)
            case Destroy():
                return await self._destroy(inv, cmd)
            case Extend():
                return await self._extend(inv, cmd)
            case ResetData():
                return await self._reset_data(inv, cmd)
            case Help():
                return [Reply(parser.usage(cmd.topic))]

    # ------------------------------------------------------------------ create

    async def _create(self, inv: Invocation, cmd: Create) -> list[Reply]:
        plan = plan_create(cmd.request, self.blueprint)
        # The environment's thread lives in this channel: if Ephem cannot post there, nobody
        # could follow it, so nothing is created. (Unknown — Slack not answering — goes ahead.)
        if self.channels is not None and await self.channels.can_post(inv.channel_id) is False:
            raise UserError(messages.not_in_channel())
        for _ in range(5):
            try:
                env = await self._persist_create(inv, plan)
                break
            except UserError:
                if plan.name is not None:
                    raise
        else:  # pragma: no cover - five generated names all taken at once
            raise UserError("I could not find a free name; please give one.")
        parts = [f"*{env.name}* requested by <@{inv.user_id}>"]
        if plan.reference:
            parts.append(f"matching `{plan.reference}`")
        if plan.overrides:
            parts.append("with " + ", ".join(f"{c}={v}" for c, v in plan.overrides.items()))
        parts.append(f"data: {plan.data}, expires in {format_duration(plan.ttl)}")
        if plan.reason:
            parts.append(f"reason: {plan.reason}")
        return [Reply("Queued: " + "; ".join(parts) + ".", visibility=Visibility.THREAD,
                      env_id=env.id)]

    async def _persist_create(self, inv: Invocation, plan: CreatePlan) -> Environment:
        async with self.store.transaction() as s:
            # A generated name is random over ~400k; a clash fails the insert and is retried.
            name = plan.name or generate_name()
            env = await repo.create_environment(
                s, name=name, owner_id=inv.user_id, channel_id=inv.channel_id,
                reference=plan.reference, release_set=plan.release_set,
                data_mode=plan.data.mode, data_snapshot=plan.data.snapshot,
                reason=plan.reason, expires_at=self.clock() + plan.ttl,
            )
            await repo.enqueue_job(s, env_id=env.id, kind=JobKind.CREATE,
                                   requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action="create", source=inv.source,
                             env_id=env.id, details={"text": inv.text[:500]})
        return env

    # ------------------------------------------------------------------ read-only

    async def _list(self, inv: Invocation, cmd: ListEnvs) -> list[Reply]:
        async with self.store.transaction() as s:
            envs = await repo.live_environments(s, owner_id=inv.user_id if cmd.mine else None)
        if not envs:
            return [Reply("No live environments. Make one with `/ephem create`.")]
        now = self.clock()
        lines = [
            f"• *{e.name}* — {e.status}, owner <@{e.owner_id}>, "
            + (f"expires in {_ago(e.expires_at - now)}" if e.expires_at > now else "expired")
            for e in envs
        ]
        return [Reply(f"{len(envs)} live environment(s):\n" + "\n".join(lines))]

    async def _status(self, cmd: Status) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name)
            runs = await repo.latest_phase_runs(s, env.id)
        now = self.clock()
        lines = [
            f"*{env.name}* is {env.status} (owner <@{env.owner_id}>, "
            f"reference `{env.reference or '-'}`, expires in {_ago(env.expires_at - now)})"
        ]
        if env.release_set:
            lines.append("releases: " + ", ".join(f"{c}={v}" for c, v in
                                                  sorted(env.release_set.items())))
        for phase in CREATE_ORDER:
            run = runs.get(phase)
            if run is None:
                lines.append(f"• {phase}: pending")
                continue
            took = run.duration_seconds
            extra = f" in {took:.1f}s" if took is not None else ""
            why = f" — {run.error}" if run.error else (f" — {run.detail}" if run.detail else "")
            lines.append(f"• {phase}: {run.action} {run.status}{extra}{why}")
        if env.last_error and env.status is EnvStatus.FAILED:
            lines.append(f"last error: {env.last_error}")
        return [Reply("\n".join(lines))]

    # ------------------------------------------------------------------ changes

    async def _destroy(self, inv: Invocation, cmd: Destroy) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "destroy")
            pending = await repo.pending_jobs(s, env.id)
            if any(j.kind is JobKind.DESTROY for j in pending):
                return [Reply(f"*{env.name}* is already being destroyed.")]
            cancelled = await repo.cancel_queued_jobs(s, env.id, kind=JobKind.CREATE)
            await repo.enqueue_job(s, env_id=env.id, kind=JobKind.DESTROY,
                                   requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action="destroy", source=inv.source,
                             env_id=env.id)
            running = any(j.status is JobStatus.RUNNING for j in pending)
        note = " It will start when the running step finishes." if running else ""
        if cancelled:
            note += " The queued create was cancelled."
        return [Reply(f"Destroy requested by <@{inv.user_id}>.{note}",
                      visibility=Visibility.THREAD, env_id=env.id)]

    async def _extend(self, inv: Invocation, cmd: Extend) -> list[Reply]:
        by = cmd.by or self.blueprint.defaults.ttl
        now = self.clock()
        limit = now + self.blueprint.defaults.max_ttl
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "extend")
            if env.status in (EnvStatus.DESTROYING, EnvStatus.DESTROYED):
                raise UserError(f"*{env.name}* is being destroyed; it cannot be extended.")
            wanted = max(env.expires_at, now) + by
            env.expires_at = min(wanted, limit)
            env.reminded_at = None
            await repo.audit(s, actor=inv.user_id, action="extend", source=inv.source,
                             env_id=env.id, details={"by": format_duration(by)})
            capped = wanted > limit
            expires = env.expires_at
        text = f"<@{inv.user_id}> extended *{env.name}*: it now expires in {_ago(expires - now)}."
        if capped:
            text += (f" (capped: environments live at most "
                     f"{format_duration(self.blueprint.defaults.max_ttl)} from now)")
        return [Reply(text, visibility=Visibility.THREAD, env_id=env.id)]

    async def _reset_data(self, inv: Invocation, cmd: ResetData) -> list[Reply]:
        if self.blueprint.phases.data is None:
            raise UserError("This project's blueprint configures no data phase; there is no "
                            "database to reset.")
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "reset the data of")
            if env.status is not EnvStatus.READY:
                raise UserError(f"*{env.name}* is {env.status}; only a ready environment's "
                                "data can be reset.")
            if await repo.pending_jobs(s, env.id):
                raise UserError(f"*{env.name}* already has work queued.")
            await repo.enqueue_job(s, env_id=env.id, kind=JobKind.RESET_DATA,
                                   requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action="reset-data", source=inv.source,
                             env_id=env.id)
        return [Reply(f"<@{inv.user_id}> asked to reset the data of *{env.name}*: its database "
                      f"is re-created ({env.data_mode}); everything written to it is lost.",
                      visibility=Visibility.THREAD, env_id=env.id)]

    async def _retry(self, inv: Invocation, name: str) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, name, for_update=True)
            self._authorize(inv, env, "retry")
            if env.status is not EnvStatus.FAILED:
                raise UserError(f"*{env.name}* is {env.status}, not failed; nothing to retry.")
            if await repo.pending_jobs(s, env.id):
                raise UserError(f"*{env.name}* already has work queued.")
            kind = await repo.last_job_kind(s, env.id) or JobKind.CREATE
            await repo.enqueue_job(s, env_id=env.id, kind=kind, requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action=f"retry-{kind}", source=inv.source,
                             env_id=env.id)
        return [Reply(f"<@{inv.user_id}> asked to retry the {kind}; it resumes at the step "
                      "that failed.", visibility=Visibility.THREAD, env_id=env.id)]

    # ------------------------------------------------------------------ helpers

    async def _find(self, s: AsyncSession, name: str, *, for_update: bool = False
                    ) -> Environment:
        env = await repo.find_live_environment(s, name, for_update=for_update)
        if env is None:
            raise UserError(f"There is no live environment named `{name}`. "
                            "`/ephem list` shows the ones there are.")
        return env

    def _authorize(self, inv: Invocation, env: Environment, verb: str) -> None:
        if inv.user_id == env.owner_id or inv.user_id in self.blueprint.admins:
            return
        if inv.source == "scheduler":
            return
        raise UserError(f"*{env.name}* belongs to <@{env.owner_id}>; only they or an admin "
                        f"can {verb} it.")
