"""The approval desk: asking approvers, and taking their decisions from buttons, the Deny
modal and `/ephem approve|deny|pending`.

Why apart from `handlers.commands`: a request for snapshot data is asked from three commands
(create, reset-data, retry) and decided from five entry points, and all of them must say the
same things and refuse the same people. The rules themselves — coverage, who may decide, one
decision under the row's lock, expiry — are `bot.approvals`'; this module turns them into
replies. `Commands` owns one `ApprovalDesk` and hands it what is asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot import approvals
from bot.approvals import Membership, Result
from bot.config import ApproverRule, Blueprint
from bot.domain import ApprovalStatus, JobKind, format_duration, quoted
from bot.errors import UserError
from bot.mrkdwn import escape
from bot.ports import ApproverDirectory, Invocation, Reply, Visibility
from bot.slack import messages
from bot.slack.approval_card import DENY_REASON, DENY_VIEW, deny_modal
from bot.store import Store, repo
from bot.store.models import ApprovalRequest, Environment
from handlers import parser


class ApprovalDesk:
    """Asks (`ask`, then `asked` for what to say) and decides (`decide`, `deny_button`,
    `submission`, `pending`). `directory` says who is in an approvers' user group."""

    def __init__(self, *, store: Store, blueprint: Blueprint, clock: Callable[[], datetime],
                 directory: ApproverDirectory | None) -> None:
        self.store = store
        self.blueprint = blueprint
        self.clock = clock
        self.directory = directory

    def asked(self, request: ApprovalRequest, env: Environment) -> list[Reply]:
        """The thread says who is asked and until when; the card goes to the approvers."""
        who = messages.approvers_phrase(request.approvers, request.usergroup, request.required)
        text = messages.approval_waiting(request.id, who=who,
                                         expires=messages.slack_date(request.expires_at))
        return [Reply(text, visibility=Visibility.THREAD, env_id=env.id, replace_message=False),
                Reply("", visibility=Visibility.APPROVAL, approval_id=request.id)]

    async def ask(self, s: AsyncSession, inv: Invocation, *, env: Environment, kind: JobKind,
                  snapshot: str, rule: ApproverRule, reason: str) -> ApprovalRequest:
        """Queue a job of `kind` that waits for `rule`'s approvers, with its request."""
        job = await repo.enqueue_job(s, env_id=env.id, kind=kind, requested_by=inv.user_id,
                                     awaiting_approval=True)
        return await approvals.open_request(
            s, env=env, job=job, requester=inv.user_id, snapshot=snapshot, rule=rule,
            reason=reason, rules=approvals.rules_version(self.blueprint, snapshot),
            card_channel=self.blueprint.channels.approvals or env.channel_id,
            expires_at=self.clock() + self.blueprint.approvals.expire_after, source=inv.source)

    async def submission(self, inv: Invocation, *, callback_id: str, metadata: str,
                         values: Mapping[str, str]) -> list[Reply]:
        """The Deny modal, submitted: deny with the reason typed in it."""
        if callback_id != DENY_VIEW:
            return [Reply(f"That form ({quoted(callback_id)}) is not one I know; it may be from "
                          "an older version of Ephem.")]
        try:
            reason = (values.get(DENY_REASON) or "").strip()
            if not reason:
                raise UserError("A denial needs a reason; nothing was changed.")
            return await self.decide(inv, parser.request_id(metadata), approve=False,
                                     reason=reason[:500])
        except UserError as exc:
            return [Reply(str(exc))]

    async def _may_decide(self, inv: Invocation, request_id: int) -> ApprovalRequest | Reply:
        """The request if `inv`'s person may decide it; else the refusal to say (and audit)."""
        async with self.store.transaction() as s:
            request = await approvals.get(s, request_id)
        if request is None:
            raise approvals.not_found(request_id)
        refusal = None
        if inv.user_id == request.requester_id:
            refusal = messages.approval_self(request.id)
        else:
            member = await approvals.may_decide(request, inv.user_id, self.directory)
            if member is Membership.UNKNOWN:
                return Reply(messages.approval_unknown(request.id))
            if member is Membership.NO:
                refusal = messages.approval_not_approver(request.id, messages.approvers_phrase(
                    request.approvers, request.usergroup, 1))
        if refusal is None:
            return request
        async with self.store.transaction() as s:
            await repo.audit(s, actor=inv.user_id, action="approval-refused", source=inv.source,
                             env_id=request.env_id, details={
                                 "request": request.id,
                                 "why": "own request" if inv.user_id == request.requester_id
                                 else "not an approver"})
        return Reply(refusal)

    async def deny_button(self, inv: Invocation, request_id: int) -> list[Reply]:
        """Deny asks why first: a modal, whose submission denies (`submission`)."""
        found = await self._may_decide(inv, request_id)
        if isinstance(found, Reply):
            return [found]
        if found.status is not ApprovalStatus.PENDING:
            return [Reply(messages.approval_already(found.id, found.status, found.decided_by,
                                                    found.decided_at))]
        if not inv.trigger_id:
            raise UserError(f"Say why with `/ephem deny {found.id} REASON`.")
        async with self.store.transaction() as s:
            env = await repo.get_environment(s, found.env_id)
        view = deny_modal(found.id, env_name=env.name, requester=found.requester_id)
        return [Reply("", visibility=Visibility.MODAL, blocks=[view])]

    async def decide(self, inv: Invocation, request_id: int, *, approve: bool,
                     reason: str | None = None) -> list[Reply]:
        found = await self._may_decide(inv, request_id)
        if isinstance(found, Reply):
            return [found]
        async with self.store.transaction() as s:
            outcome = await approvals.decide(s, request_id, user=inv.user_id, approve=approve,
                                             reason=reason, now=self.clock(),
                                             source=inv.source)
        snapshot = found.snapshot
        card = Reply("", visibility=Visibility.APPROVAL, approval_id=outcome.request_id)

        def thread(text: str) -> Reply:
            return Reply(text, visibility=Visibility.THREAD, env_id=outcome.env_id,
                         replace_message=False)

        match outcome.result:
            case Result.ALREADY:
                return [Reply(messages.approval_already(outcome.request_id, outcome.status,
                                                        outcome.decided_by,
                                                        outcome.decided_at))]
            case Result.VOTED:
                return [Reply(messages.approval_voted(outcome.request_id, outcome.approvals,
                                                      outcome.required))]
            case Result.COUNTED:
                return [thread(messages.approval_counted(outcome.request_id, inv.user_id,
                                                         outcome.approvals, outcome.required)),
                        card]
            case Result.APPROVED:
                return [thread(messages.approval_approved(inv.user_id, snapshot)), card]
            case Result.DENIED:
                return [thread(messages.approval_denied(inv.user_id, outcome.reason)), card]
            case Result.EXPIRED:
                return [thread(messages.approval_expired(format_duration(
                            self.blueprint.approvals.expire_after))), card,
                        Reply(messages.approval_already(outcome.request_id, outcome.status,
                                                        outcome.decided_by,
                                                        outcome.decided_at))]

    async def pending(self, inv: Invocation) -> list[Reply]:
        async with self.store.transaction() as s:
            mine = [r for r in await approvals.pending(s) if r.requester_id == inv.user_id]
            waiting = await approvals.waiting_for(s, inv.user_id, self.directory)
            names = {r.env_id: (await repo.get_environment(s, r.env_id)).name
                     for r in [*mine, *waiting]}
        lines = []
        if waiting:
            lines.append(f"{messages.count(len(waiting), 'request')} waiting for your decision:")
            lines += [f"• *#{r.id}* <@{r.requester_id}> asks for snapshot "
                      f"`{escape(r.snapshot)}` on *{escape(names[r.env_id])}*: "
                      f"{escape(r.reason)} (until {messages.slack_date(r.expires_at)}) — "
                      f"`/ephem approve {r.id}` or `/ephem deny {r.id} REASON`"
                      for r in waiting]
        else:
            lines.append(messages.pending_none())
        if mine:
            lines.append("Your own requests still waiting:")
            lines += [f"• *#{r.id}* snapshot `{escape(r.snapshot)}` on "
                      f"*{escape(names[r.env_id])}*, asked of "
                      f"{messages.approvers_phrase(r.approvers, r.usergroup, r.required)}"
                      for r in mine]
        return [Reply("\n".join(lines))]
