"""Every sentence Ephem shows a person in Slack or the shell, as small functions.

Why one module: wording is reviewed, changed and translated in one place, and tests can compare
against the same functions instead of copying literals. Nothing here does I/O or knows Block Kit;
`bot.slack.blocks` arranges these texts into messages.

Every value a function here receives that a person or a tool wrote (a name, a reference, a
reason, a phase's detail or error) is escaped with `bot.mrkdwn.escape` by the function itself,
so `<!channel>` in a reason is shown, never sent as a mention. Callers pass raw values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from bot.domain import EnvStatus, PhaseName, format_duration
from bot.mrkdwn import escape
from bot.redaction import scrub

RETRY = "Retry"
DESTROY = "Destroy"
EXTEND = "Extend"
EXTEND_BY = "Extend…"
DESTROY_NOW = "Destroy now"
RESET_DATA = "Reset data"
CONNECTION_DETAILS = "Connection details"
ELLIPSIS = "…"

_STATUS_EMOJI = {
    EnvStatus.QUEUED: ":hourglass:",
    EnvStatus.CREATING: ":hammer_and_wrench:",
    EnvStatus.READY: ":large_green_circle:",
    EnvStatus.FAILED: ":red_circle:",
    EnvStatus.DESTROYING: ":wastebasket:",
    EnvStatus.DESTROYED: ":white_circle:",
}


_STATUS_PHRASE = {
    EnvStatus.QUEUED: "is queued",
    EnvStatus.CREATING: "is being created",
    EnvStatus.READY: "is ready",
    EnvStatus.FAILED: "has failed",
    EnvStatus.DESTROYING: "is being destroyed",
    EnvStatus.DESTROYED: "is destroyed",
}


def is_status(name: str, status: EnvStatus) -> str:
    """`*pr-143* has failed`, `*pr-143* is ready`: a status said as a sentence."""
    return f"*{escape(name)}* {_STATUS_PHRASE[status]}"


def count(n: int, thing: str, plural: str | None = None) -> str:
    """`1 live environment`, `2 live environments`."""
    return f"{n} {thing if n == 1 else (plural or thing + 's')}"


def not_yours(name: str, owner_id: str, deed: str) -> str:
    """`deed` is what they may not do, said of the environment: `destroy it`, `reset its data`."""
    return f"*{escape(name)}* belongs to <@{owner_id}>; only they or an admin can {deed}."


def creds_not_yours(name: str, owner_id: str) -> str:
    return (f"Only the owner of *{escape(name)}*, <@{owner_id}>, can see its connection details; "
            "ask them.")


def no_credentials(name: str) -> str:
    return (f"*{name}* has no connection details yet: none of its phases that make "
            "credentials has finished. `/ephem status " + name + "` shows where it is.")


def no_such_environment(name: str, suggestion: str | None) -> str:
    hint = f" Did you mean `{suggestion}`?" if suggestion else ""
    return (f"There is no live environment named `{escape(name)}`.{hint} "
            "`/ephem list` shows the ones there are.")


def apology(error_id: str) -> str:
    return (
        f"Sorry, something went wrong on my side. It is logged as `{error_id}`; "
        "quote that id if you ask someone for help."
    )


def card_title(name: str, status: EnvStatus) -> str:
    return f"{escape(name)} · {status}"


def status_emoji(status: EnvStatus) -> str:
    return _STATUS_EMOJI[status]


def card_facts(*, owner_id: str, reference: str | None, expires: str,
               cost: str | None = None) -> str:
    ref = f"matches `{escape(reference)}`" if reference else "no reference"
    spent = f" · cost {cost}" if cost else ""
    return f"Owner <@{owner_id}> · {ref} · expires {expires}{spent}"


def card_error(error: str) -> str:
    return f"Last error: {escape(error)}"


def phase_pending(phase: PhaseName) -> str:
    return f"*{phase}* — pending"


def phase_running(phase: PhaseName, detail: str, *, destroying: bool) -> str:
    verb = "removing" if destroying else "running"
    return f"*{phase}* — {verb}" + (f": {escape(detail)}" if detail else "")


def phase_done(phase: PhaseName, took: timedelta | None, *, destroying: bool) -> str:
    """`done in 2.4s` under ten seconds (a cloned database takes a fraction of one), then
    `done in 1m` as durations are written elsewhere."""
    verb = "removed" if destroying else "done"
    if took is None:
        return f"*{phase}* — {verb}"
    seconds = took.total_seconds()
    return f"*{phase}* — {verb} in " + (
        f"{seconds:.1f}s" if seconds < 10 else format_duration(took))


def phase_failed(phase: PhaseName, error: str) -> str:
    return f"*{phase}* — failed" + (f": {escape(error)}" if error else "")


def phase_skipped(phase: PhaseName) -> str:
    return f"*{phase}* — skipped"


def phase_interrupted(phase: PhaseName) -> str:
    return f"*{phase}* — interrupted; the next attempt takes over"


def reminder(name: str, *, owner_id: str, left: timedelta, expires: str,
             cost: str | None = None, last: bool = False) -> str:
    first = "Last reminder: " if last else ""
    spent = f" It has cost {cost}." if cost else ""
    return (
        f"{first}<@{owner_id}> `{escape(name)}` expires in {format_duration(left)} "
        f"({expires}).{spent} Extend it if you still need it, or destroy it now to free its "
        "resources."
    )


def expired(name: str, *, lived: timedelta, cost: str | None = None) -> str:
    spent = f" It cost {cost}." if cost else ""
    return (f"`{escape(name)}` expired after {format_duration(lived)}: destroying it now.{spent}")


def destroyed(name: str, *, lived: timedelta, removed: Sequence[str], expired: bool) -> str:
    """The end of an environment: what was removed and how long it lived."""
    how = "expired and was destroyed" if expired else "was destroyed"
    what = "; ".join(escape(r) for r in removed) if removed else "nothing was left to remove"
    return f"`{escape(name)}` {how} after living {format_duration(lived)}. Removed: {what}."


def reminder_stale(name: str, *, left: str) -> str:
    return (f"That reminder is out of date: *{escape(name)}* was extended since, and now "
            f"expires in {left}. Nothing was changed.")


def extend_refused(name: str, *, asked: timedelta, room: timedelta, max_ttl: timedelta) -> str:
    limit = (f"environments live at most {format_duration(max_ttl)} from now, so "
             f"*{escape(name)}* ")
    if room < timedelta(minutes=1):
        return (f"*{escape(name)}* cannot be extended by {format_duration(asked)}: {limit}"
                "cannot be extended any further. Nothing was changed.")
    return (f"*{escape(name)}* cannot be extended by {format_duration(asked)}: {limit}can "
            f"gain at most {format_duration(room)}. Nothing was changed; try "
            f"`/ephem extend {escape(name)} {format_duration(room)}`.")


def over_quota(*, scope: str, limit: int, key: str) -> str:
    """`scope` is `you have` or `this channel has`."""
    return (f"Nothing was created: {scope} {count(limit, 'live environment')}, the most "
            f"this project allows (`{key}`). Destroy one first:")


def over_budget(*, projected: str, budget: str, over: str, spent: str) -> str:
    return (f"Nothing was created: this channel has spent {spent} this month, and with this "
            f"environment it would reach {projected}, {over} over its monthly budget of "
            f"{budget} (`cost.monthly_channel_budget`). Destroy an environment, ask for a "
            "shorter `--ttl`, or ask an admin to raise the budget.")


def orphans_found(lines: Sequence[str], *, grace: timedelta) -> str:
    listed = "\n".join(f"• {escape(line)}" for line in lines)
    return (f":mag: Reconciliation found {count(len(lines), 'object')} with Ephem's marks that "
            f"no live environment owns:\n{listed}\nEach is destroyed "
            f"{format_duration(grace)} after it was first seen, unless it belongs to an "
            "environment by then.")


def orphan_removed(line: str) -> str:
    return f":broom: Reconciliation destroyed {escape(line)}."


def orphan_remove_failed(line: str, *, error: str, attempt: int, again_in: timedelta) -> str:
    return (f":warning: Reconciliation could not destroy {escape(line)} (try {attempt}): "
            f"{escape(error)}. Trying again in {format_duration(again_in)}; "
            "`ephem doctor --orphans --fix` does it by hand.")


def confirm_reset_title() -> str:
    return "Reset this environment's data?"


def confirm_reset(name: str) -> str:
    return (f"The database of `{name}` is made again from scratch; everything written to it "
            "is lost.")
def to_owner(owner_id: str, text: str) -> str:
    """A thread reply that notifies the owner (a card edit notifies nobody)."""
    return f"<@{owner_id}> {text}"


def credentials(name: str, secrets: Mapping[str, Mapping[str, str]], *, direct: bool = False,
                copied: bool = False) -> str:
    """The environment's credentials, phase by phase, for its owner's eyes only."""
    if direct:
        where = "(here in our direct messages, so you can find them again)"
    elif copied:
        where = "(only you can see this; a copy is in your direct messages with Ephem)"
    else:
        where = "(only you can see this)"
    lines = [f"Connection details of *{escape(name)}* {where}:"]
    for phase, said in secrets.items():
        lines += [f"• {phase} {key}: `{value}`" for key, value in said.items()]
    return "\n".join(lines)


def not_in_channel() -> str:
    return ("I am not a member of this channel, so I could not post the environment's progress "
            "here and you could not follow it. Nothing was created. Invite me with "
            "`/invite @ephem` and run the command again, or run it in a channel I am in.")


def confirm_destroy_title() -> str:
    return "Destroy this environment?"


def confirm_destroy(name: str) -> str:
    return f"`{escape(name)}` and its database will be deleted. This cannot be undone."


def blocks_omitted(count: int) -> str:
    return f"{ELLIPSIS} {count} more not shown"


def slack_date(at: datetime) -> str:
    """A date Slack renders in each reader's time zone; the fallback is UTC."""
    fallback = plain_date(at)
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def plain_date(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def audit_detail(action: str, details: Mapping[str, object]) -> str:
    """One short plain line of what an audit event's details say (scrubbed, never escaped:
    the caller escapes for Slack)."""
    del action  # every action's details are said the same way today
    parts: list[str] = []
    if isinstance(details.get("text"), str):
        parts.append(f"`{details['text']}`")
    for key in ("by", "error", "expired_at", "job_id"):
        value = details.get(key)
        if value is not None:
            parts.append(f"{key.replace('_', ' ')}: {value}")
    text = scrub("; ".join(parts))
    return text if len(text) <= 300 else text[:299] + "…"


# --------------------------------------------------------------------------- approvals

APPROVE = "Approve"
DENY = "Deny"


def approvers_phrase(approvers: Sequence[str], usergroup: str | None, required: int) -> str:
    """`<@U1> or <@U2>`, `a member of <!subteam^S1>`, with how many must approve."""
    who = [f"<@{u}>" for u in approvers]
    if usergroup:
        who.append(f"a member of <!subteam^{usergroup}>")
    named = " or ".join(who) if len(who) <= 2 else ", ".join(who[:-1]) + " or " + who[-1]
    return named if required == 1 else f"{required} approvals from {named}"


def approval_needs_reason(data: str, *, done: str = "Nothing was created.") -> str:
    return (f"{data} is masked production data: an approver must agree first, and wants to "
            "know why. Say it with `--reason TEXT` (like `--reason \"reproduce INC-231\"`). "
            f"{done}")


def approval_waiting(request_id: int, *, who: str, expires: str) -> str:
    return (f":hourglass: Waiting for approval (request #{request_id}) by {who}, until "
            f"{expires}. Nothing runs before the decision.")


def approval_not_configured(snapshot: str) -> str:
    return (f"No approvers are configured for snapshot `{escape(snapshot)}`, so nobody was "
            "asked (the blueprint's `approvals` sets who decides).")


def approval_card_title(request_id: int) -> str:
    return f"Approval request #{request_id}: masked production data"


def approval_self(request_id: int) -> str:
    return (f"You asked for request #{request_id} yourself, and nobody decides their own "
            "request — not even an approver or an admin. Another approver must decide it.")


def approval_not_approver(request_id: int, who: str) -> str:
    return f"Only {who} may decide request #{request_id}. Nothing was changed."


def approval_unknown(request_id: int) -> str:
    return (f"I could not ask Slack who is in the approvers' group just now, so request "
            f"#{request_id} was not changed. Please try again in a minute.")


def approval_already(request_id: int, status: str, by: str | None, at: datetime | None) -> str:
    who = "Ephem" if by in (None, "ephem") else f"<@{by}>"
    when = f" on {slack_date(at)}" if at is not None else ""
    if status == "expired":
        return f"Request #{request_id} already expired{when}: nobody decided in time."
    return f"Request #{request_id} was already {status} by {who}{when}."


def approval_voted(request_id: int, approvals: int, required: int) -> str:
    return (f"You approved request #{request_id} already ({approvals} of {required} "
            "approvals).")


def approval_counted(request_id: int, user: str, approvals: int, required: int) -> str:
    return (f"<@{user}> approved request #{request_id}: {approvals} of {required} approvals; "
            "waiting for more.")


def approval_approved(user: str, snapshot: str) -> str:
    return (f":white_check_mark: <@{user}> approved snapshot data `{escape(snapshot)}`: "
            "starting now.")


def approval_denied(user: str, reason: str | None) -> str:
    return (f":no_entry: <@{user}> denied snapshot data: "
            f"{escape(reason) if reason else 'no reason given'}. Nothing was run.")


def approval_expired(expire_after: str) -> str:
    return (f":hourglass: Nobody approved the snapshot data within {expire_after}, so the "
            "request expired and nothing was run. Ask again to try once more.")


def deny_modal_title() -> str:
    return "Deny snapshot data"


def deny_modal_prompt(request_id: int, name: str, requester: str) -> str:
    return (f"Why is request #{request_id} (*{escape(name)}*, asked by <@{requester}>) "
            "denied? The reason is said in the requester's thread.")


def pending_none() -> str:
    return "Nothing waits for your decision."
