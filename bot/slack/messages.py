"""Every sentence Ephem shows a person in Slack or the shell, as small functions.

Why one module: wording is reviewed, changed and translated in one place, and tests can compare
against the same functions instead of copying literals. Nothing here does I/O or knows Block Kit;
`bot.slack.blocks` arranges these texts into messages.
"""

from __future__ import annotations

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
    """`done in 2.4s` under ten seconds (a cloned database takes a fraction of one), then
    `done in 1m` as durations are written elsewhere."""
    verb = "removed" if destroying else "done"
    if took is None:
        return f"*{phase}* — {verb}"
    seconds = took.total_seconds()
    return f"*{phase}* — {verb} in " + (
        f"{seconds:.1f}s" if seconds < 10 else format_duration(took))


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
