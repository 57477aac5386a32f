"""Block Kit: the status card, the expiry reminder, Slack's size limits, and a plain-text view.

Why: what a message looks like is decided here and nowhere else; the notifier only posts. The
card is built from a `CardView` — plain values taken from the store's rows — so rendering needs
no database and the same view renders as Block Kit (for Slack) and as text (fallback `text`, the
terminal shell). Blocks are built with `slack_sdk.models.blocks`, which validates shapes and
lengths; `fit_blocks` additionally trims any message (including blocks handed over by handlers)
to the limits Slack enforces, so an oversized message is shortened instead of rejected.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    Option,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)

from bot.domain import CREATE_ORDER, DataMode, EnvStatus, PhaseAction, PhaseName, PhaseStatus
from bot.mrkdwn import escape
from bot.slack import messages
from bot.slack.inbound import OWN_PREFIX
from bot.store.models import Environment, PhaseRun

# Slack's limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_TEXT = 40000  # chat.postMessage truncates `text` beyond this
SHORT_ERROR = 200

ACTION_PREFIX = OWN_PREFIX
RETRY_ACTION = ACTION_PREFIX + "retry"
DESTROY_ACTION = ACTION_PREFIX + "destroy"
EXTEND_ACTION = ACTION_PREFIX + "extend"
EXTEND_BY_ACTION = ACTION_PREFIX + "extend-by"
RESET_DATA_ACTION = ACTION_PREFIX + "reset-data"
CREDS_ACTION = ACTION_PREFIX + "creds"

Blocks = list[dict[str, Any]]

# --------------------------------------------------------------------------- limits


def truncate(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else cut and ended with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + messages.ELLIPSIS


def _fit_text_object(obj: Any, limit: int) -> None:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        obj["text"] = truncate(obj["text"], limit)


def fit_blocks(blocks: Sequence[Mapping[str, Any]]) -> Blocks:
    """A copy of `blocks` trimmed to Slack's limits: at most MAX_BLOCKS blocks (the last one
    saying how many were left out), section texts, fields and headers cut with an ellipsis."""
    fitted = [copy.deepcopy(dict(b)) for b in blocks]
    if len(fitted) > MAX_BLOCKS:
        omitted = len(fitted) - (MAX_BLOCKS - 1)
        note = ContextBlock(elements=[MarkdownTextObject(text=messages.blocks_omitted(omitted))])
        fitted = [*fitted[: MAX_BLOCKS - 1], note.to_dict()]
    for block in fitted:
        kind = block.get("type")
        if kind == "section":
            _fit_text_object(block.get("text"), MAX_SECTION_TEXT)
            if isinstance(block.get("fields"), list):
                block["fields"] = block["fields"][:MAX_FIELDS]
                for field in block["fields"]:
                    _fit_text_object(field, MAX_FIELD_TEXT)
        elif kind == "header":
            _fit_text_object(block.get("text"), MAX_HEADER_TEXT)
        elif kind == "context" and isinstance(block.get("elements"), list):
            block["elements"] = block["elements"][:MAX_CONTEXT_ELEMENTS]
            for element in block["elements"]:
                _fit_text_object(element, MAX_SECTION_TEXT)
    return fitted


def fit_text(text: str) -> str:
    return truncate(text, MAX_TEXT)


# --------------------------------------------------------------------------- plain text


def _text_of(obj: Any) -> str:
    return str(obj.get("text", "")) if isinstance(obj, dict) else ""


def blocks_to_lines(blocks: Sequence[Mapping[str, Any]]) -> list[str]:
    """Blocks as readable lines: texts as they are, buttons as `[Retry] [Destroy]`."""
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind in ("header", "section"):
            if text := _text_of(block.get("text")):
                lines.extend(text.splitlines())
            lines.extend(_text_of(f) for f in block.get("fields") or [])
        elif kind == "context":
            parts = [_text_of(e) or f"[{e.get('alt_text', 'image')}]"
                     for e in block.get("elements") or [] if isinstance(e, dict)]
            lines.append(" · ".join(p for p in parts if p))
        elif kind == "actions":
            buttons = [f"[{_text_of(e.get('text'))}]"
                       for e in block.get("elements") or [] if isinstance(e, dict)]
            lines.append(" ".join(buttons))
        elif kind == "divider":
            lines.append("---")
    return lines


_LEADING_EMOJI = re.compile(r"^(?::[a-z0-9_+-]+:\s*)+")
_DATE = re.compile(r"<!date\^[^|>]*\|([^>]*)>")
_USER = re.compile(r"<@([A-Z0-9_]+)(?:\|[^>]*)?>")
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_CODE = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"```")
BOLD_ON, BOLD_OFF = "\x1b[1m", "\x1b[22m"


def plain(line: str, *, ansi: bool = False) -> str:
    """A mrkdwn line for a terminal: no leading emoji codes; dates, users and links readable;
    `*bold*` in bold when `ansi` (a terminal that shows it), else without the stars; code
    without its backticks."""
    line = _LEADING_EMOJI.sub("", line)
    line = _DATE.sub(r"\1", line)
    line = _USER.sub(r"@\1", line)
    line = _LINK.sub(r"\2 (\1)", line)
    line = _FENCE.sub("", line)
    line = _CODE.sub(r"\1", line)
    line = _BOLD.sub(rf"{BOLD_ON}\1{BOLD_OFF}" if ansi else r"\1", line)
    return line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# --------------------------------------------------------------------------- the status card


@dataclass(frozen=True)
class PhaseLine:
    """What the card says about one phase: its latest run, or None when it has not run."""

    phase: PhaseName
    status: PhaseStatus | None = None
    action: PhaseAction = PhaseAction.APPLY
    detail: str = ""
    error: str = ""
    took: timedelta | None = None


@dataclass(frozen=True)
class CardView:
    name: str
    status: EnvStatus
    owner_id: str
    reference: str | None
    expires_at: datetime
    phases: tuple[PhaseLine, ...]
    last_error: str | None = None
    release_set: tuple[tuple[str, str], ...] = ()
    data_mode: DataMode | None = None
    data_snapshot: str | None = None
    reason: str | None = None
    cost: str | None = None  # `bot.cost.describe`: so far and per day
    waiting: str | None = None  # what an approval request of it waits for (mrkdwn)


def card_view(env: Environment, runs: Mapping[PhaseName, PhaseRun], *,
              cost: str | None = None) -> CardView:
    """The card's values from an environment row and the latest run of each phase."""
    lines = []
    for phase in CREATE_ORDER:
        run = runs.get(phase)
        if run is None:
            lines.append(PhaseLine(phase))
            continue
        took = run.duration_seconds
        lines.append(PhaseLine(
            phase, run.status, run.action, detail=run.detail or "", error=run.error or "",
            took=timedelta(seconds=took) if took is not None else None,
        ))
    return CardView(
        name=env.name, status=env.status, owner_id=env.owner_id, reference=env.reference,
        expires_at=env.expires_at, phases=tuple(lines), last_error=env.last_error,
        release_set=tuple(sorted((str(c), str(v)) for c, v in env.release_set.items())),
        data_mode=env.data_mode, data_snapshot=env.data_snapshot, reason=env.reason,
        cost=cost,
    )


def one_line(text: str) -> str:
    """The first line of an error or a detail, at most SHORT_ERROR characters (the message
    functions it is handed to escape it: tool output and errors may quote what a person typed)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return truncate(first, SHORT_ERROR)


_MARKS: dict[PhaseStatus | None, tuple[str, str]] = {  # (emoji, plain-text mark)
    None: (":white_circle:", "·"),
    PhaseStatus.PENDING: (":white_circle:", "·"),
    PhaseStatus.RUNNING: (":hourglass_flowing_sand:", "…"),
    PhaseStatus.SUCCEEDED: (":white_check_mark:", "✓"),
    PhaseStatus.FAILED: (":x:", "✗"),
    PhaseStatus.SKIPPED: (":next_track_button:", "-"),
    PhaseStatus.ABANDONED: (":warning:", "!"),
}


def phase_text(line: PhaseLine) -> str:
    destroying = line.action is PhaseAction.DESTROY
    match line.status:
        case None | PhaseStatus.PENDING:
            return messages.phase_pending(line.phase)
        case PhaseStatus.RUNNING:
            return messages.phase_running(line.phase, one_line(line.detail),
                                          destroying=destroying)
        case PhaseStatus.SUCCEEDED:
            return messages.phase_done(line.phase, line.took, destroying=destroying)
        case PhaseStatus.FAILED:
            return messages.phase_failed(line.phase, one_line(line.error or line.detail))
        case PhaseStatus.SKIPPED:
            return messages.phase_skipped(line.phase)
        case PhaseStatus.ABANDONED:
            return messages.phase_interrupted(line.phase)


def _card_error(view: CardView) -> str | None:
    """The environment's error, when it failed and no phase line already shows why."""
    if view.status is not EnvStatus.FAILED or not view.last_error:
        return None
    if any(line.status is PhaseStatus.FAILED for line in view.phases):
        return None
    return messages.card_error(one_line(view.last_error))


def card_choices(view: CardView) -> str | None:
    """What the person asked for: the release set, the data and the reason (escaped)."""
    parts = []
    if view.release_set:
        parts.append("Releases: " + ", ".join(f"{escape(c)} `{escape(v)}`"
                                               for c, v in view.release_set))
    if view.data_mode is not None:
        data = str(view.data_mode)
        if view.data_mode is DataMode.SNAPSHOT and view.data_snapshot:
            data += f" `{escape(view.data_snapshot)}`"
        parts.append(f"Data: {data}")
    if view.reason:
        parts.append(f"Reason: {escape(view.reason)}")
    return " · ".join(parts) or None


def _applied(view: CardView, phase: PhaseName | None = None) -> bool:
    return any(line.status is PhaseStatus.SUCCEEDED and line.action is PhaseAction.APPLY
               and (phase is None or line.phase is phase) for line in view.phases)


def _card_buttons(view: CardView) -> list[ButtonElement]:
    """Failed: Retry and Destroy. Ready: Extend, Destroy, and — when a database was made —
    Reset data and Connection details."""
    if view.status is EnvStatus.FAILED:
        return [ButtonElement(text=messages.RETRY, action_id=RETRY_ACTION, value=view.name,
                              style="primary"),
                destroy_button(view.name)]
    if view.status is not EnvStatus.READY:
        return []
    buttons = [ButtonElement(text=messages.EXTEND, action_id=EXTEND_ACTION, value=view.name),
               destroy_button(view.name)]
    if _applied(view, PhaseName.DATA):
        buttons.append(ButtonElement(
            text=messages.RESET_DATA, action_id=RESET_DATA_ACTION, value=view.name,
            confirm=ConfirmObject(title=messages.confirm_reset_title(),
                                  text=messages.confirm_reset(view.name),
                                  confirm=messages.RESET_DATA, deny="Cancel", style="danger")))
    if _applied(view):
        buttons.append(ButtonElement(text=messages.CONNECTION_DETAILS, action_id=CREDS_ACTION,
                                     value=view.name))
    return buttons


def destroy_button(name: str, *, label: str = messages.DESTROY) -> ButtonElement:
    return ButtonElement(
        text=label, action_id=DESTROY_ACTION, value=name, style="danger",
        confirm=ConfirmObject(title=messages.confirm_destroy_title(),
                              text=messages.confirm_destroy(name),
                              confirm=messages.DESTROY, deny="Cancel", style="danger"),
    )


def status_card(view: CardView) -> Blocks:
    """The card at the root of an environment's thread, as Block Kit."""
    title = f"{messages.status_emoji(view.status)} {messages.card_title(view.name, view.status)}"
    facts = messages.card_facts(owner_id=view.owner_id, reference=view.reference,
                                expires=messages.slack_date(view.expires_at), cost=view.cost)
    phases = "\n".join(f"{_MARKS[line.status][0]} {phase_text(line)}" for line in view.phases)
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=truncate(title, MAX_HEADER_TEXT), emoji=True)),
        ContextBlock(elements=[MarkdownTextObject(text=facts)]),
    ]
    if choices := card_choices(view):
        blocks.append(ContextBlock(elements=[MarkdownTextObject(
            text=truncate(choices, MAX_SECTION_TEXT))]))
    if view.waiting:
        blocks.append(SectionBlock(text=MarkdownTextObject(
            text=truncate(view.waiting, MAX_SECTION_TEXT))))
    blocks.append(SectionBlock(text=MarkdownTextObject(text=truncate(phases, MAX_SECTION_TEXT))))
    if error := _card_error(view):
        blocks.append(SectionBlock(text=MarkdownTextObject(text=truncate(error,
                                                                         MAX_SECTION_TEXT))))
    if buttons := _card_buttons(view):
        blocks.append(ActionsBlock(elements=buttons))
    return [b.to_dict() for b in blocks]


def status_card_text(view: CardView) -> str:
    """The card as plain text: the fallback `text` of the Slack message, and the shell's view."""
    lines = [
        messages.card_title(view.name, view.status),
        messages.card_facts(owner_id=view.owner_id, reference=view.reference,
                            expires=messages.plain_date(view.expires_at), cost=view.cost),
        *([choices] if (choices := card_choices(view)) else []),
        *([view.waiting] if view.waiting else []),
        *(f"{_MARKS[line.status][1]} {phase_text(line)}" for line in view.phases),
    ]
    if error := _card_error(view):
        lines.append(error)
    return "\n".join(lines)


# --------------------------------------------------------------------------- reminder


def extend_by_value(name: str, by: str, *, expires: int | None = None) -> str:
    """The value of an Extend… menu option: the environment and the duration (and the expiry
    it reminds of, in epoch seconds)."""
    return f"{name}:{by}" + (f"@{expires}" if expires is not None else "")


def reminder_blocks(name: str, text: str, choices: Sequence[str] = (), *,
                    expires: int | None = None) -> Blocks:
    """The reminder before expiry: `text` (`messages.reminder`), then Extend (by the default),
    Extend… (a menu of `choices`, durations like `3d`; none: no menu) and Destroy now.

    Extend and Extend… carry `expires` (the expiry reminded of, epoch seconds): the reminder
    goes to the thread and to a direct message, and once one copy (or the card) extended it,
    the other's extend buttons change nothing."""
    stamp = f"@{expires}" if expires is not None else ""
    elements: list[Any] = [ButtonElement(text=messages.EXTEND, action_id=EXTEND_ACTION,
                                         value=name + stamp, style="primary")]
    if choices:
        elements.append(StaticSelectElement(
            placeholder=PlainTextObject(text=messages.EXTEND_BY), action_id=EXTEND_BY_ACTION,
            options=[Option(value=extend_by_value(name, c, expires=expires), label=f"by {c}")
                     for c in choices]))
    elements.append(destroy_button(name, label=messages.DESTROY_NOW))
    blocks: list[Block] = [
        SectionBlock(text=MarkdownTextObject(text=truncate(text, MAX_SECTION_TEXT))),
        ActionsBlock(elements=elements),
    ]
    return [b.to_dict() for b in blocks]


def destroy_list_blocks(text: str, envs: Sequence[tuple[str, str]]) -> Blocks:
    """`text`, then one line per environment (name, what to say of it) with a Destroy button:
    the answer to a create refused by a quota."""
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(
        text=truncate(text, MAX_SECTION_TEXT)))]
    for name, said in envs[: MAX_BLOCKS - 2]:
        blocks.append(SectionBlock(
            text=MarkdownTextObject(text=truncate(f"*{escape(name)}* — {said}",
                                                  MAX_SECTION_TEXT)),
            accessory=destroy_button(name)))
    return [b.to_dict() for b in blocks]


def button_used(outcome: str) -> Blocks:
    """What a message with buttons (the reminder) becomes once one was used: what happened,
    and no buttons to click again."""
    return [SectionBlock(text=MarkdownTextObject(
        text=truncate(f":heavy_check_mark: {outcome}", MAX_SECTION_TEXT))).to_dict()]
