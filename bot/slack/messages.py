"""Every sentence Ephem shows a person in Slack or the shell, as small functions.

Why one module: wording is reviewed, changed and translated in one place, and tests can compare
against the same functions instead of copying literals. Nothing here does I/O or knows Block Kit;
`bot.slack.blocks` arranges these texts into messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from bot.domain import EnvStatus, PhaseName, format_duration

RETRY = "Retry"
DESTROY = "Destroy"
EXTEND = "Extend"
ELLIPSIS = "…"

_STATUS_EMOJI = {
    EnvStatus.QUEUED: ":hourglass:",
    EnvStatus.CREATING: ":hammer_and_wrench:",
    EnvStatus.READY: ":large_green_circle:",
    EnvStatus.FAILED: ":red_circle:",
    EnvStatus.DESTROYING: ":wastebasket:",
    EnvStatus.DESTROYED: ":white_circle:",
}


def apology(error_id: str) -> str:
    return (
        f"Sorry, something went wrong on my side. It is logged as `{error_id}`; "
        "quote that id if you ask someone for help."
    )


def card_title(name: str, status: EnvStatus) -> str:
    return f"{name} · {status}"


def status_emoji(status: EnvStatus) -> str:
    return _STATUS_EMOJI[status]


def card_facts(*, owner_id: str, reference: str | None, expires: str) -> str:
    ref = f"matches `{reference}`" if reference else "no reference"
    return f"Owner <@{owner_id}> · {ref} · expires {expires}"


def card_error(error: str) -> str:
    return f"Last error: {error}"


def phase_pending(phase: PhaseName) -> str:
    return f"*{phase}* — pending"


def phase_running(phase: PhaseName, detail: str, *, destroying: bool) -> str:
    verb = "removing" if destroying else "running"
    return f"*{phase}* — {verb}" + (f": {detail}" if detail else "")


def phase_done(phase: PhaseName, took: timedelta | None, *, destroying: bool) -> str:
    verb = "removed" if destroying else "done"
    return f"*{phase}* — {verb}" + (f" in {format_duration(took)}" if took is not None else "")


def phase_failed(phase: PhaseName, error: str) -> str:
    return f"*{phase}* — failed" + (f": {error}" if error else "")


def phase_skipped(phase: PhaseName) -> str:
    return f"*{phase}* — skipped"


def phase_interrupted(phase: PhaseName) -> str:
    return f"*{phase}* — interrupted; the next attempt takes over"


def reminder(name: str, *, expires: str) -> str:
    return (
        f"`{name}` expires {expires}. Extend it if you still need it, "
        "or destroy it now to free its resources."
    )


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
    lines = [f"Credentials for *{name}* {where}:"]
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
    return f"`{name}` and its database will be deleted. This cannot be undone."


def blocks_omitted(count: int) -> str:
    return f"{ELLIPSIS} {count} more not shown"


def slack_date(at: datetime) -> str:
    """A date Slack renders in each reader's time zone; the fallback is UTC."""
    fallback = plain_date(at)
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def plain_date(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
