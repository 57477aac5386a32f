"""The Slack edge's behaviour: parse → validate against the blueprint → persist → enqueue →
reply. Nothing slow happens here; the phases run later on the executor, found through the job
row this module writes.

Why a class: the same `Commands` serves slash commands, mentions, buttons and the terminal shell,
so every entry point behaves identically.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot import approvals, cost, logs, releases
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
    parse_duration,
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
from bot.slack.blocks import ACTION_PREFIX, destroy_list_blocks
from bot.store import Store, repo
from bot.store.models import ApprovalRequest, Environment, Job
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
    Log,
    Pending,
    ResetData,
    Status,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


_ACTIONS = frozenset({"retry", "destroy", "extend", "extend-by", "reset-data", "creds"})


def _name_or_none(value: str) -> str | None:
    """A button's value as an environment name for the log line, or None if it is none (a
    reminder's Extend buttons carry `name@expiry`, its menu `name:3d@expiry`)."""
    try:
        return validate_name(value.partition("@")[0].partition(":")[0])
    except UserError:
        return None


def _log_command(inv: Invocation, verb: str, name: str | None, outcome: str,
                 reason: str | None) -> None:
    """The one line per command: who, what, which environment, outcome (never the text)."""
    log.info("%s %s by %s (%s)%s: %s%s", verb, name or "-", inv.user_id, inv.source,
             f" in {inv.channel_id}" if inv.channel_id else "", outcome,
             f" ({reason})" if reason else "",
             extra={"event": "command", "user": inv.user_id, "verb": verb,
                    "source": inv.source, "outcome": outcome,
                    "error": reason.splitlines()[0][:200] if reason else None})


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


class Refused(UserError):
    """A create refused by a quota or the budget; the answer may carry buttons."""

    def __init__(self, text: str, *, blocks: list[dict[str, Any]] | None = None) -> None:
        super().__init__(text)
        self.blocks = blocks


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
        words = parser.normalize(inv.text).split()
        verb = words[0].lower() if words else "help"
        verb = verb if verb in parser.VERBS else "unknown"
        if isinstance(parsed, parser.Say):
            _log_command(inv, verb, None, "refused", "not understood")
            return [Reply(parsed.text)]
        cmd = parsed.command
        name = cmd.request.name if isinstance(cmd, Create) else getattr(cmd, "name", None)
        with logs.bind(env=name):
            return await self._logged(inv, verb, name, lambda: self._run(inv, cmd))

    async def action(self, inv: Invocation, *, action_id: str, value: str) -> list[Reply]:
        verb = action_id if action_id in _ACTIONS else "unknown"
        name = _name_or_none(value) if verb in _ACTIONS else None
        with logs.bind(env=name):
            return await self._logged(inv, f"button {verb}", name,
                                      lambda: self._action(inv, action_id=action_id, value=value))

    async def _logged(self, inv: Invocation, verb: str, name: str | None,
                      run: Callable[[], Awaitable[list[Reply]]]) -> list[Reply]:
        """Run a command; one INFO line says who asked what of which environment, and how it
        ended (ok; refused, with the reason the asker was given; error, logged by the edge)."""
        try:
            replies = await run()
        except UserError as exc:
            _log_command(inv, verb, name, "refused", str(exc))
            return [Reply(str(exc), blocks=getattr(exc, "blocks", None))]
        except Exception:
            _log_command(inv, verb, name, "error", None)
            raise
        env_id = next((r.env_id for r in replies if r.env_id is not None), None)
        with logs.bind(env_id=env_id):
            _log_command(inv, verb, name, "ok", None)
        return replies

    async def _action(self, inv: Invocation, *, action_id: str, value: str) -> list[Reply]:
        try:
            # A reminder's Extend and Extend… carry the expiry they remind of (`name@<epoch>`):
            # once that expiry has moved (the other copy of the reminder, or the card, was
            # used), a click on them changes nothing.
            stamp: int | None = None
            if action_id in ("extend", "extend-by") and "@" in value:
                value, _, at = value.rpartition("@")
                stamp = int(at) if at.isascii() and at.isdigit() and len(at) < 12 else -1
            if action_id in ("retry", "destroy", "extend"):
                # A button's value is the environment's name; anything else is not ours.
                value = validate_name(value)
            if action_id == "retry":
                return await self._retry(inv, value)
            if action_id == "destroy":
                return await self._destroy(inv, Destroy(value))
            if action_id == "extend":
                return await self._extend(inv, Extend(value), reminded_of=stamp)
            if action_id == "extend-by":  # the reminder's Extend… menu: `name:3d`
                name, _, by = value.partition(":")
                return await self._extend(inv, Extend(validate_name(name), parse_duration(by)),
                                          reminded_of=stamp)
            if action_id == "reset-data":
                return await self._reset_data(inv, ResetData(value))
            if action_id == "creds":
                return await self._creds(inv, Creds(value))
            if action_id == APPROVE_ACTION.removeprefix(ACTION_PREFIX):
                return await self.desk.decide(inv, parser.request_id(value), approve=True)
            if action_id == DENY_ACTION.removeprefix(ACTION_PREFIX):
                return await self.desk.deny_button(inv, parser.request_id(value))
        except UserError as exc:
            return [Reply(str(exc), blocks=getattr(exc, "blocks", None))]
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
            case Log():
                return await self._log(cmd)
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
            except UserError as exc:
                if plan.name is not None or isinstance(exc, Refused):
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
            await self._within_limits(s, inv, plan)
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

    async def _within_limits(self, s: AsyncSession, inv: Invocation, plan: CreatePlan) -> None:
        """Refuse a create over the blueprint's quotas or the channel's monthly budget.

        Counted under transaction-scoped advisory locks on the channel and the user (always in
        that order), so two creates at once cannot both take the last place."""
        quotas, prices = self.blueprint.quotas, self.blueprint.cost
        budget = prices.monthly_channel_budget if prices.priced else None
        if quotas.per_user is None and quotas.per_channel is None and budget is None:
            return
        await repo.lock_for_quota(s, f"channel:{inv.channel_id}")
        await repo.lock_for_quota(s, f"user:{inv.user_id}")
        now = self.clock()
        mine = await repo.counted_environments(s, owner_id=inv.user_id)
        if quotas.per_user is not None and len(mine) >= quotas.per_user:
            raise self._over_quota(mine, scope="you have", limit=quotas.per_user,
                                   key="quotas.per_user", now=now)
        if quotas.per_channel is not None:
            theirs = await repo.counted_environments(s, channel_id=inv.channel_id)
            if len(theirs) >= quotas.per_channel:
                raise self._over_quota(mine, scope="this channel has",
                                       limit=quotas.per_channel, key="quotas.per_channel",
                                       now=now)
        if budget is not None:
            since = cost.month_start(now)
            spent = cost.spent(await repo.channel_environments_since(
                s, channel_id=inv.channel_id, since=since), self.blueprint, now, since=since)
            month_end = (since + timedelta(days=32)).replace(day=1)
            days = min(plan.ttl, month_end - now) / timedelta(days=1)
            projected = spent + cost.per_day(self.blueprint) * days
            if projected > budget:
                c = prices.currency
                raise Refused(messages.over_budget(
                    projected=cost.money(projected, c), budget=cost.money(budget, c),
                    over=cost.money(projected - budget, c), spent=cost.money(spent, c)))

    def _over_quota(self, mine: Sequence[Environment], *, scope: str, limit: int, key: str,
                    now: datetime) -> Refused:
        text = messages.over_quota(scope=scope, limit=limit, key=key)
        if not mine:
            return Refused(text.removesuffix(" Destroy one first:") + " None of them is yours.")
        listed = [(e.name, self._expiry_and_cost(e, now)) for e in mine]
        lines = "\n".join(f"• *{escape(n)}* — {said}" for n, said in listed)
        return Refused(f"{text}\n{lines}", blocks=destroy_list_blocks(text, listed))

    def _expiry_and_cost(self, env: Environment, now: datetime) -> str:
        said = (f"{env.status}, expires in {_ago(env.expires_at - now)}"
                if env.expires_at > now else f"{env.status}, expired")
        spent = cost.describe(cost.estimate(env, self.blueprint, now))
        return f"{said}, {spent}" if spent else said

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
            + (f", cost {spent}" if (spent := cost.describe(
                cost.estimate(e, self.blueprint, now))) else "")
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
        if spent := cost.describe(cost.estimate(env, self.blueprint, now)):
            lines.append(f"cost: {spent}")
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

    async def _extend(self, inv: Invocation, cmd: Extend, *,
                      reminded_of: int | None = None) -> list[Reply]:
        """Push expiry back by `by` (the blueprint's ttl by default); refused, saying how much
        is possible, when that would take it past `max_ttl` from now. `reminded_of`: the
        expiry (epoch seconds) a reminder's button was about; another one changes nothing."""
        by = cmd.by or self.blueprint.defaults.ttl
        now = self.clock()
        max_ttl = self.blueprint.defaults.max_ttl
        # `by` may be thousands of years: compare it with what is left before the limit instead
        # of adding it to a date first (which overflows past year 9999).
        async with self.store.transaction() as s:
            env = await self._find(s, cmd.name, for_update=True)
            self._authorize(inv, env, "extend it")
            if env.status in (EnvStatus.DESTROYING, EnvStatus.DESTROYED):
                raise UserError(f"*{escape(env.name)}* is being destroyed; it cannot be extended.")
            if reminded_of is not None and int(env.expires_at.timestamp()) != reminded_of:
                raise UserError(messages.reminder_stale(env.name, left=_ago(env.expires_at
                                                                            - now)))
            base = max(env.expires_at, now)
            room = now + max_ttl - base
            if by > room:
                await repo.audit(s, actor=inv.user_id, action="extend-refused",
                                 source=inv.source, env_id=env.id,
                                 details={"by": format_duration(by),
                                          "room": format_duration(max(room, timedelta(0)))})
                refusal = messages.extend_refused(env.name, asked=by,
                                                  room=max(room, timedelta(0)), max_ttl=max_ttl)
            else:
                refusal = None
                env.expires_at = base + by
                env.reminded_at = None  # both reminders again, before the new expiry
                env.last_reminded_at = None
                await repo.audit(s, actor=inv.user_id, action="extend", source=inv.source,
                                 env_id=env.id, details={"by": format_duration(by),
                                                         "expires_at": env.expires_at.isoformat()})
            expires = env.expires_at
        if refusal is not None:
            # Committed (the audit), then refused: the reminder keeps its buttons.
            return [Reply(refusal)]
        text = (f"<@{inv.user_id}> extended *{escape(env.name)}* by {format_duration(by)}: it "
                f"now expires in {_ago(expires - now)}.")
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
            if _work_queued(await repo.pending_jobs(s, env.id)):
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
            if _work_queued(await repo.pending_jobs(s, env.id)):
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

    async def _log(self, cmd: Log, *, shown: int = 30) -> list[Reply]:
        """The newest environment of that name's history, oldest first: each audit event's
        time, who, what and how it ended. Anyone may read it (as anyone may `status`)."""
        async with self.store.transaction() as s:
            env = await repo.latest_environment_named(s, cmd.name)
            if env is None:
                await self._find(s, cmd.name)  # says there is none, and the closest name
                raise AssertionError("unreachable")
            events = await repo.audit_events(s, env_id=env.id, limit=shown + 1)
        if not events:
            return [Reply(f"*{escape(env.name)}* has no history yet.")]
        lines = []
        for event, _name in events[-shown:]:
            who = "Ephem" if event.actor in ("ephem", "scheduler") else f"<@{event.actor}>"
            detail = messages.audit_detail(event.action, event.details)
            lines.append(f"• {messages.slack_date(event.at)} — {who} {escape(event.action)}"
                         + (f" ({escape(event.source)})" if event.source else "")
                         + (f": {escape(detail)}" if detail else ""))
        head = f"History of *{escape(env.name)}* ({env.status})"
        if len(events) > shown:
            head += f", the last {shown} events"
        return [Reply(head + ":\n" + "\n".join(lines))]

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


def _work_queued(pending: Sequence[Job]) -> bool:
    """Whether an environment that has come to rest (ready, or failed) has work to come. A job
    still running then is the one that brought it there: the runner marks the environment
    before the executor records the job's end, and a click on Retry or Reset in between must
    not be told that work is queued."""
    return any(job.status is not JobStatus.RUNNING for job in pending)
