"""The Slack edge's behaviour: parse → validate against the blueprint → persist → enqueue →
reply. Nothing slow happens here; the phases run later on the executor, found through the job
row this module writes.

Why a class: the same `Commands` serves slash commands, mentions, buttons and the terminal shell,
so every entry point behaves identically.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot import approvals, releases
from bot.config import ApproverRule, Blueprint
from bot.domain import (
    CREATE_ORDER,
    DataMode,
    DataRequest,
    EnvRequest,
    EnvStatus,
    JobKind,
    JobStatus,
    PhaseName,
    ReleaseSet,
    format_duration,
    generate_name,
    quoted,
    validate_name,
)
from bot.errors import UserError
from bot.mrkdwn import escape
from bot.ports import (
    ApproverDirectory,
    ChannelAccess,
    CredentialsSource,
    Invocation,
    ReleaseResolver,
    Reply,
    Visibility,
)
from bot.slack import messages
from bot.slack.approval_card import APPROVE_ACTION, DENY_ACTION
from bot.slack.blocks import ACTION_PREFIX
from bot.store import Store, repo
from bot.store.models import ApprovalRequest, Environment
from handlers import parser
from handlers.approvals import ApprovalDesk
from handlers.parser import (
    Approve,
    Create,
    Creds,
    Deny,
    Destroy,
    Diff,
    Extend,
    Help,
    ListEnvs,
    Pending,
    ResetData,
    Status,
)

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
    base: dict[str, str] = field(default_factory=dict)  # the reference's set, resolved


def reference_for(req: EnvRequest, blueprint: Blueprint) -> str | None:
    """The reference a create matches (`--match`, else the blueprint's default); raise
    UserError when the blueprint has no such reference."""
    reference = req.match or blueprint.defaults.reference
    if reference is not None and reference not in blueprint.references:
        known = ", ".join(f"`{r}`" for r in blueprint.references) or "none are configured"
        raise UserError(f"There is no reference environment {quoted(reference)} ({known}).")
    return reference


def plan_create(req: EnvRequest, blueprint: Blueprint, *,
                base: Mapping[str, str] | None = None) -> CreatePlan:
    """Validate a create request against the blueprint (pure); raise UserError on a problem.

    `base` is the reference's release set as resolved when the request was accepted; without
    it, the reference's static `releases` from the blueprint.
    """
    reference = reference_for(req, blueprint)
    ttl, data = plan_limits(req, blueprint)
    if base is None:
        base = dict(blueprint.references[reference].releases) if reference is not None else {}
    release_set = releases.apply_overrides(base, req.overrides, known=blueprint.components)
    return CreatePlan(
        name=req.name, reference=reference, release_set=release_set,
        overrides=dict(req.overrides), ttl=ttl, data=data, reason=req.reason,
        base=dict(base),
    )


def plan_limits(req: EnvRequest, blueprint: Blueprint) -> tuple[timedelta, DataRequest]:
    """The request's lifetime and data, checked against the blueprint; raise UserError."""
    ttl = req.ttl or blueprint.defaults.ttl
    if ttl > blueprint.defaults.max_ttl:
        raise UserError(
            f"`--ttl {format_duration(ttl)}` is longer than the "
            f"{format_duration(blueprint.defaults.max_ttl)} this project allows."
        )
    return ttl, plan_data(req.data or DataRequest(blueprint.defaults.data), blueprint)


def plan_data(data: DataRequest, blueprint: Blueprint) -> DataRequest:
    """`data` checked against the blueprint, the default snapshot filled in; raise UserError."""
    phase = blueprint.phases.data
    if data.mode is not DataMode.NONE and phase is None:
        raise UserError(
            f"{quoted('--data ' + str(data))} needs a database, and this project's blueprint "
            "configures no data phase. Use `--data none`."
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
            raise UserError(f"There is no snapshot {quoted(name or '(default)')}; known: {known}.")
        data = DataRequest(DataMode.SNAPSHOT, name)
    return data


def _ago(delta: timedelta) -> str:
    return format_duration(abs(delta)) if abs(delta) >= timedelta(minutes=1) else "<1m"


class Commands:
    """Implements `bot.ports.CommandHandler`.

    `releases` reads a reference's release set from its source (the composition root passes
    the pipelines' resolver); without one, only the blueprint's static `releases` are known.
    `credentials` says an environment's secrets again (`/ephem creds`, the Connection details
    button); without one, those answer that this Ephem cannot show them. `channels` says
    whether Ephem can post in a channel (a create's thread lives there).
    """

    def __init__(self, *, store: Store, blueprint: Blueprint, clock: Clock = utcnow,
                 releases: ReleaseResolver | None = None,
                 credentials: CredentialsSource | None = None,
                 channels: ChannelAccess | None = None,
                 directory: ApproverDirectory | None = None) -> None:
        self.store = store
        self.blueprint = blueprint
        self.clock = clock
        self.releases = releases
        self.credentials = credentials
        self.channels = channels
        self.desk = ApprovalDesk(store=store, blueprint=blueprint, clock=clock,
                                 directory=directory)

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
            if action_id in ("retry", "destroy", "extend"):
                # A button's value is the environment's name; anything else is not ours.
                value = validate_name(value)
            if action_id == "retry":
                return await self._retry(inv, value)
            if action_id == "destroy":
                return await self._destroy(inv, Destroy(value))
            if action_id == "extend":
                return await self._extend(inv, Extend(value))
            if action_id == "reset-data":
                return await self._reset_data(inv, ResetData(value))
            if action_id == "creds":
                return await self._creds(inv, Creds(value))
            if action_id == APPROVE_ACTION.removeprefix(ACTION_PREFIX):
                return await self.desk.decide(inv, parser.request_id(value), approve=True)
            if action_id == DENY_ACTION.removeprefix(ACTION_PREFIX):
                return await self.desk.deny_button(inv, parser.request_id(value))
        except UserError as exc:
            return [Reply(str(exc))]
        return [Reply(f"That button ({quoted(action_id)}) is not one I know; it may be from an "
                      "older version of Ephem.")]

    async def submission(self, inv: Invocation, *, callback_id: str, metadata: str,
                         values: Mapping[str, str]) -> list[Reply]:
        return await self.desk.submission(inv, callback_id=callback_id, metadata=metadata,
                                          values=values)

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
            case Creds():
                return await self._creds(inv, cmd)
            case Help():
                return [Reply(parser.usage(cmd.topic))]
            case Diff():
                return await self._diff(cmd)
            case Approve():
                return await self.desk.decide(inv, cmd.request, approve=True)
            case Deny():
                return await self.desk.decide(inv, cmd.request, approve=False,
                                              reason=cmd.reason)
            case Pending():
                return await self.desk.pending(inv)

    # ------------------------------------------------------------------ create

    async def _create(self, inv: Invocation, cmd: Create) -> list[Reply]:
        reference = reference_for(cmd.request, self.blueprint)
        plan_limits(cmd.request, self.blueprint)  # the cheap checks before the source is read
        base = await self._resolve(reference, refusing="Nothing was created.")
        plan = plan_create(cmd.request, self.blueprint, base=base.versions)
        rule = approvals.rule_for(self.blueprint, plan.data)
        if rule is not None and not plan.reason and not cmd.dry_run:
            raise UserError(messages.approval_needs_reason(quoted(f"--data {plan.data}")))
        if cmd.dry_run:
            return [Reply(self._dry_run(plan))]
        # The environment's thread lives in this channel: if Ephem cannot post there, nobody
        # could follow it, so nothing is created. (Unknown — Slack not answering — goes ahead.)
        if self.channels is not None and await self.channels.can_post(inv.channel_id) is False:
            raise UserError(messages.not_in_channel())
        for _ in range(5):
            try:
                env, request = await self._persist_create(inv, plan, rule)
                break
            except UserError:
                if plan.name is not None:
                    raise
        else:  # pragma: no cover - five generated names all taken at once
            raise UserError("I could not find a free name; please give one.")
        parts = [f"*{escape(env.name)}* requested by <@{inv.user_id}>"]
        if plan.reference:
            parts.append(f"matching {quoted(plan.reference)}")
        if plan.overrides:
            parts.append("with " + escape(", ".join(f"{c}={v}"
                                                    for c, v in plan.overrides.items())))
        parts.append(f"data: {escape(str(plan.data))}, expires in {format_duration(plan.ttl)}")
        if plan.reason:
            parts.append(f"reason: {escape(plan.reason)}")
        text = "Queued: " + "; ".join(parts) + "."
        if plan.release_set:
            text += f"\nRelease set: {escape(releases.summary(plan.release_set))}"
        replies = [Reply(text, visibility=Visibility.THREAD, env_id=env.id)]
        if request is not None:
            replies += self.desk.asked(request, env)
        elif plan.data.mode is DataMode.SNAPSHOT and plan.data.snapshot:
            replies.append(Reply(messages.approval_not_configured(plan.data.snapshot),
                                 visibility=Visibility.THREAD, env_id=env.id))
        return replies

    async def _resolve(self, reference: str | None, *, refusing: str) -> ReleaseSet:
        """What `reference` runs now (empty without one); a failing source is refused."""
        if reference is None:
            return ReleaseSet()
        if self.releases is None:
            source = self.blueprint.references[reference].release_source
            if source.kind != "static":
                raise UserError(f"{quoted(reference)} reads its release set from a {source.kind} "
                                f"source, and this Ephem has no resolver for it. {refusing}")
            return ReleaseSet(dict(source.releases))
        try:
            return await self.releases.resolve(reference)
        except UserError as exc:
            raise UserError(f"{exc} {refusing}".strip()) from None

    def _dry_run(self, plan: CreatePlan) -> str:
        name = plan.name or "(a generated name)"
        lines = [f"Dry run: nothing was created. `create` would make *{escape(name)}*"
                 + (f" matching {quoted(plan.reference)}" if plan.reference else "")
                 + f", data: {escape(str(plan.data))}, expiring in {format_duration(plan.ttl)}."]
        if plan.release_set:
            lines.append(f"Release set: {escape(releases.summary(plan.release_set))}")
        if plan.reference:
            rows = releases.diff_rows(plan.release_set, plan.base)
            table = releases.render_table(rows, mine="would run",
                                          theirs=f"{plan.reference} now")
            lines.append(f"```\n{escape(table)}\n```")
            summary = escape(releases.diff_summary(rows))
            lines.append(f"Against {quoted(plan.reference)}: {summary}.")
        return "\n".join(lines)

    async def _persist_create(self, inv: Invocation, plan: CreatePlan,
                              rule: ApproverRule | None
                              ) -> tuple[Environment, ApprovalRequest | None]:
        async with self.store.transaction() as s:
            # A generated name is random over ~400k; a clash fails the insert and is retried.
            name = plan.name or generate_name()
            env = await repo.create_environment(
                s, name=name, owner_id=inv.user_id, channel_id=inv.channel_id,
                reference=plan.reference, release_set=plan.release_set,
                data_mode=plan.data.mode, data_snapshot=plan.data.snapshot,
                reason=plan.reason, expires_at=self.clock() + plan.ttl,
            )
            await repo.audit(s, actor=inv.user_id, action="create", source=inv.source,
                             env_id=env.id, details={
                                 "text": inv.text[:500], "reference": plan.reference,
                                 "source": self._source_kind(plan.reference),
                                 "reference_set": plan.base, "overrides": plan.overrides,
                                 "release_set": plan.release_set,
                                 "approval": "asked" if rule else "not needed"})
            request = None
            if rule is not None:
                assert plan.data.snapshot is not None and plan.reason is not None
                request = await self.desk.ask(s, inv, env=env, kind=JobKind.CREATE,
                                              snapshot=plan.data.snapshot, rule=rule,
                                              reason=plan.reason)
            else:
                await repo.enqueue_job(s, env_id=env.id, kind=JobKind.CREATE,
                                       requested_by=inv.user_id)
        return env, request

    # ------------------------------------------------------------------ read-only

    async def _list(self, inv: Invocation, cmd: ListEnvs) -> list[Reply]:
        async with self.store.transaction() as s:
            envs = await repo.live_environments(s, owner_id=inv.user_id if cmd.mine else None)
        if not envs:
            return [Reply("No live environments. Make one with `/ephem create`.")]
        now = self.clock()
        lines = [
            f"• *{escape(e.name)}* — {e.status}, owner <@{e.owner_id}>, "
            + (f"expires in {_ago(e.expires_at - now)}" if e.expires_at > now else "expired")
            for e in envs
        ]
        return [Reply(f"{messages.count(len(envs), 'live environment')}:\n" + "\n".join(lines))]

    async def _status(self, cmd: Status) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name)
            runs = await repo.latest_phase_runs(s, env.id)
        now = self.clock()
        lines = [
            f"{messages.is_status(env.name, env.status)} (owner <@{env.owner_id}>, "
            f"reference {quoted(env.reference or '-')}, expires in {_ago(env.expires_at - now)})"
        ]
        if env.release_set:
            lines.append(f"releases: {escape(releases.summary(env.release_set))}")
        links = (env.outputs.get(PhaseName.CODE.value) or {}).get("links") or {}
        if links:
            lines.append("links: " + ", ".join(f"{label} {url}"
                                               for label, url in sorted(links.items())))
        for phase in CREATE_ORDER:
            run = runs.get(phase)
            if run is None:
                lines.append(f"• {phase}: pending")
                continue
            took = run.duration_seconds
            extra = f" in {took:.1f}s" if took is not None else ""
            why = run.error or run.detail or ""
            why = f" — {escape(why)}" if why else ""
            lines.append(f"• {phase}: {run.action} {run.status}{extra}{why}")
        if env.last_error and env.status is EnvStatus.FAILED:
            lines.append(f"last error: {escape(env.last_error)}")
        return [Reply("\n".join(lines))]

    async def _diff(self, cmd: Diff) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name)
        against = cmd.against or env.reference
        if against is None:
            raise UserError(f"*{env.name}* was made without a reference; say which to compare "
                            f"with: `/ephem diff {env.name} --against ENV`.")
        if against not in self.blueprint.references:
            known = ", ".join(f"`{r}`" for r in self.blueprint.references) or \
                "none are configured"
            raise UserError(f"There is no reference environment {quoted(against)} ({known}).")
        now = await self._resolve(against, refusing="Nothing to compare with.")
        rows = releases.diff_rows(dict(env.release_set), dict(now.versions))
        table = releases.render_table(rows, mine=env.name, theirs=f"{against} now")
        return [Reply(f"*{escape(env.name)}* against {quoted(against)} as it runs now: "
                      f"{escape(releases.diff_summary(rows))}.\n```\n{escape(table)}\n```")]

    def _source_kind(self, reference: str | None) -> str | None:
        if reference is None:
            return None
        return self.blueprint.references[reference].release_source.kind

    # ------------------------------------------------------------------ changes

    async def _destroy(self, inv: Invocation, cmd: Destroy) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "destroy it")
            pending = await repo.pending_jobs(s, env.id)
            if any(j.kind is JobKind.DESTROY for j in pending):
                return [Reply(f"*{escape(env.name)}* is already being destroyed.")]
            cancelled = await repo.cancel_queued_jobs(s, env.id, kind=JobKind.CREATE)
            withdrawn = await approvals.cancel_for(s, env.id, actor=inv.user_id,
                                                   now=self.clock(), source=inv.source)
            await repo.enqueue_job(s, env_id=env.id, kind=JobKind.DESTROY,
                                   requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action="destroy", source=inv.source,
                             env_id=env.id)
            running = any(j.status is JobStatus.RUNNING for j in pending)
        note = " It will start when the running step finishes." if running else ""
        if cancelled:
            note += " The queued create was cancelled."
        if withdrawn:
            note += " The request waiting for approval was withdrawn."
        return [Reply(f"Destroy requested by <@{inv.user_id}>.{note}",
                      visibility=Visibility.THREAD, env_id=env.id),
                *(Reply("", visibility=Visibility.APPROVAL, approval_id=r) for r in withdrawn)]

    async def _extend(self, inv: Invocation, cmd: Extend) -> list[Reply]:
        by = cmd.by or self.blueprint.defaults.ttl
        now = self.clock()
        limit = now + self.blueprint.defaults.max_ttl
        # `by` may be thousands of years: compare it with what is left before the limit instead
        # of adding it to a date first (which overflows past year 9999).
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "extend it")
            if env.status in (EnvStatus.DESTROYING, EnvStatus.DESTROYED):
                raise UserError(f"*{escape(env.name)}* is being destroyed; it cannot be extended.")
            base = max(env.expires_at, now)
            capped = by > limit - base
            env.expires_at = limit if capped else base + by
            env.reminded_at = None
            await repo.audit(s, actor=inv.user_id, action="extend", source=inv.source,
                             env_id=env.id, details={"by": format_duration(by)})
            expires = env.expires_at
        text = (f"<@{inv.user_id}> extended *{escape(env.name)}*: it now expires in "
                f"{_ago(expires - now)}.")
        if capped:
            text += (f" (capped: environments live at most "
                     f"{format_duration(self.blueprint.defaults.max_ttl)} from now)")
        return [Reply(text, visibility=Visibility.THREAD, env_id=env.id)]

    async def _reset_data(self, inv: Invocation, cmd: ResetData) -> list[Reply]:
        if self.blueprint.phases.data is None:
            raise UserError("This project's blueprint configures no data phase; there is no "
                            "database to reset.")
        wanted = plan_data(cmd.data, self.blueprint) if cmd.data is not None else None
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "reset its data")
            if env.status is not EnvStatus.READY:
                raise UserError(f"{messages.is_status(env.name, env.status)}; only a ready "
                                "environment's data can be reset.")
            if await repo.pending_jobs(s, env.id):
                raise UserError(f"*{escape(env.name)}* already has work queued.")
            data = wanted or DataRequest(env.data_mode, env.data_snapshot)
            rule = approvals.rule_for(self.blueprint, data)
            approved = None
            if rule is not None and data.snapshot is not None:
                # Covered: this person was approved for this snapshot on this environment.
                approved = await approvals.covered(s, env_id=env.id, snapshot=data.snapshot,
                                                   requester=inv.user_id)
            request = None
            if rule is not None and approved is None:
                assert data.snapshot is not None
                if not cmd.reason:
                    raise UserError(messages.approval_needs_reason(
                        quoted(f"--data {data}"), done="Nothing was reset."))
                request = await self.desk.ask(s, inv, env=env, kind=JobKind.RESET_DATA,
                                              snapshot=data.snapshot, rule=rule,
                                              reason=cmd.reason)
            else:
                # Not snapshot data, or covered: the environment takes it now.
                env.data_mode, env.data_snapshot = data.mode, data.snapshot
                await repo.enqueue_job(s, env_id=env.id, kind=JobKind.RESET_DATA,
                                       requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action="reset-data", source=inv.source,
                             env_id=env.id, details={
                                 "data": str(data), "reason": cmd.reason,
                                 "approval": (f"covered by request {approved.id}" if approved
                                              else "asked" if request else "not needed")})
        if request is not None:
            return [Reply(f"<@{inv.user_id}> asked to reset the data of *{escape(env.name)}* "
                          f"from {escape(str(data))}.", visibility=Visibility.THREAD,
                          env_id=env.id), *self.desk.asked(request, env)]
        covered = (f" (covered by the approval of request #{approved.id})"
                   if approved is not None else "")
        return [Reply(f"<@{inv.user_id}> asked to reset the data of *{escape(env.name)}*: its "
                      f"database is re-created ({escape(str(data))}){covered}; everything "
                      "written to it is lost.",
                      visibility=Visibility.THREAD, env_id=env.id)]

    async def _retry(self, inv: Invocation, name: str) -> list[Reply]:
        async with self.store.transaction() as s:
            env = await self._find(s, name, for_update=True)
            self._authorize(inv, env, "retry it")
            if env.status is not EnvStatus.FAILED:
                raise UserError(f"{messages.is_status(env.name, env.status)}; only a failed "
                                "environment can be retried.")
            if await repo.pending_jobs(s, env.id):
                raise UserError(f"*{escape(env.name)}* already has work queued.")
            kind = await repo.last_job_kind(s, env.id) or JobKind.CREATE
            data = DataRequest(env.data_mode, env.data_snapshot)
            rule = approvals.rule_for(self.blueprint, data) if kind is not JobKind.DESTROY \
                else None
            request = None
            if rule is not None and data.snapshot is not None and await approvals.covered(
                    s, env_id=env.id, snapshot=data.snapshot, requester=inv.user_id) is None:
                # A denied, expired or never-approved request is asked again, same reason.
                request = await self.desk.ask(s, inv, env=env, kind=kind,
                                              snapshot=data.snapshot, rule=rule,
                                              reason=env.reason or "retry")
            else:
                await repo.enqueue_job(s, env_id=env.id, kind=kind, requested_by=inv.user_id)
            await repo.audit(s, actor=inv.user_id, action=f"retry-{kind}", source=inv.source,
                             env_id=env.id)
        replies = [Reply(f"<@{inv.user_id}> asked to retry the {kind}; it resumes at the step "
                         "that failed.", visibility=Visibility.THREAD, env_id=env.id)]
        if request is not None:
            replies += self.desk.asked(request, env)
        return replies

    async def _creds(self, inv: Invocation, cmd: Creds) -> list[Reply]:
        """The owner's connection details, said again (derived, never stored).

        Owner only, admins included: an admin may destroy or extend anyone's environment, but
        its passwords are the owner's to share.
        """
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name)
        if inv.user_id != env.owner_id:
            return [Reply(messages.creds_not_yours(env.name, env.owner_id))]
        if self.credentials is None:
            raise UserError("This Ephem cannot say credentials again.")
        if not await self.credentials.credentials(env.id):
            return [Reply(messages.no_credentials(env.name))]
        # Only which environment: the notifier derives the secrets again as it sends them, to
        # the owner only, so this reply holds none and nothing on the way stores one.
        return [Reply("", visibility=Visibility.CREDENTIALS, env_id=env.id)]

    # ------------------------------------------------------------------ helpers

    async def _find(self, s: AsyncSession, name: str, *, for_update: bool = False
                    ) -> Environment:
        env = await repo.find_live_environment(s, name, for_update=for_update)
        if env is None:
            live = [e.name for e in await repo.live_environments(s)]
            close = difflib.get_close_matches(name, live, n=1, cutoff=0.6)
            raise UserError(messages.no_such_environment(name, close[0] if close else None))
        return env

    def _authorize(self, inv: Invocation, env: Environment, deed: str) -> None:
        if inv.user_id == env.owner_id or inv.user_id in self.blueprint.admins:
            return
        if inv.source == "scheduler":
            return
        raise UserError(messages.not_yours(env.name, env.owner_id, deed))
