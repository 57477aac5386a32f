"""Block Kit for approvals: the request's card (with Approve and Deny while it waits, the
decision once taken) and the modal that asks a denier why.

Why apart from `bot.slack.blocks`: the card is rendered from an `ApprovalView` — plain values
read from the store when the outbox sends it — so it shows the decision in place however many
clicks, commands or expiries raced to make it, and renders as text for the shell alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.domain import ApprovalStatus
from bot.mrkdwn import escape
from bot.slack import messages
from bot.slack.blocks import (
    ACTION_PREFIX,
    MAX_FIELD_TEXT,
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    Blocks,
    truncate,
)
from bot.store.models import ApprovalRequest, Environment

APPROVE_ACTION = ACTION_PREFIX + "approve"
DENY_ACTION = ACTION_PREFIX + "deny"
DENY_VIEW = ACTION_PREFIX + "deny-reason"  # the modal's callback id
DENY_REASON = "reason"  # the modal's input: block id and action id


@dataclass(frozen=True)
class ApprovalView:
    id: int
    requester: str
    env_name: str
    snapshot: str
    rules_version: str
    reason: str
    approvers: tuple[str, ...]
    usergroup: str | None
    required: int
    status: ApprovalStatus
    expires_at: datetime
    approved_by: tuple[str, ...] = ()
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None


def approval_view(request: ApprovalRequest, env: Environment, votes: list[str]) -> ApprovalView:
    return ApprovalView(
        id=request.id, requester=request.requester_id, env_name=env.name,
        snapshot=request.snapshot, rules_version=request.rules_version, reason=request.reason,
        approvers=tuple(request.approvers), usergroup=request.usergroup,
        required=request.required, status=request.status, expires_at=request.expires_at,
        approved_by=tuple(votes), decided_by=request.decided_by,
        decided_at=request.decided_at, decision_reason=request.decision_reason)


def _facts(view: ApprovalView) -> list[str]:
    return [
        f"*Asked by*\n<@{view.requester}>",
        f"*Environment*\n*{escape(view.env_name)}*",
        f"*Snapshot*\n`{escape(view.snapshot)}`",
        f"*Masking rules version*\n`{escape(view.rules_version)}`",
        f"*Reason*\n{escape(view.reason)}",
        "*Approvers*\n" + messages.approvers_phrase(view.approvers, view.usergroup,
                                                    view.required),
    ]


def decision_line(view: ApprovalView) -> str:
    """What happened to the request, for the card and the shell."""
    when = messages.slack_date(view.decided_at) if view.decided_at else ""
    match view.status:
        case ApprovalStatus.PENDING:
            got = f" ({len(view.approved_by)} of {view.required} so far)" \
                if view.required > 1 else ""
            return (f":hourglass: Waiting for a decision until "
                    f"{messages.slack_date(view.expires_at)}{got}.")
        case ApprovalStatus.APPROVED:
            by = ", ".join(f"<@{u}>" for u in view.approved_by) or f"<@{view.decided_by}>"
            return f":white_check_mark: Approved by {by} on {when}."
        case ApprovalStatus.DENIED:
            why = escape(view.decision_reason) if view.decision_reason else "no reason given"
            return f":no_entry: Denied by <@{view.decided_by}> on {when}: {why}"
        case ApprovalStatus.EXPIRED:
            return f":hourglass: Expired on {when}: nobody decided in time."
        case ApprovalStatus.CANCELLED:
            return f":wastebasket: Withdrawn on {when}: the environment is being destroyed."


def decision_buttons(request_id: int) -> ActionsBlock:
    return ActionsBlock(elements=[
        ButtonElement(text=messages.APPROVE, action_id=APPROVE_ACTION, value=str(request_id),
                      style="primary"),
        ButtonElement(text=messages.DENY, action_id=DENY_ACTION, value=str(request_id),
                      style="danger"),
    ])


def approval_card(view: ApprovalView) -> Blocks:
    title = messages.approval_card_title(view.id)
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=truncate(title, MAX_HEADER_TEXT))),
        SectionBlock(fields=[MarkdownTextObject(text=truncate(f, MAX_FIELD_TEXT))
                             for f in _facts(view)]),
        ContextBlock(elements=[MarkdownTextObject(
            text=truncate(decision_line(view), MAX_SECTION_TEXT))]),
    ]
    if view.status is ApprovalStatus.PENDING:
        blocks.append(decision_buttons(view.id))
    return [b.to_dict() for b in blocks]


def approval_card_text(view: ApprovalView) -> str:
    facts = " · ".join(f.replace("\n", ": ").replace("*", "") for f in _facts(view))
    return f"{messages.approval_card_title(view.id)}\n{facts}\n{decision_line(view)}"


def deny_modal(request_id: int, *, env_name: str, requester: str) -> dict[str, Any]:
    """The modal a Deny click opens: the reason is required, and said in the thread."""
    return View(
        type="modal", callback_id=DENY_VIEW, private_metadata=str(request_id),
        title=PlainTextObject(text=messages.deny_modal_title()),
        submit=PlainTextObject(text=messages.DENY), close=PlainTextObject(text="Cancel"),
        blocks=[
            SectionBlock(text=MarkdownTextObject(
                text=messages.deny_modal_prompt(request_id, env_name, requester))),
            InputBlock(block_id=DENY_REASON, label=PlainTextObject(text="Reason"),
                       element=PlainTextInputElement(action_id=DENY_REASON, multiline=True,
                                                     max_length=500)),
        ],
    ).to_dict()
