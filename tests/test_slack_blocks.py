"""What the status card, the reminder and the console say — pure rendering, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.domain import DataMode, EnvStatus, PhaseAction, PhaseName, PhaseStatus
from bot.slack import messages
from bot.slack.blocks import (
    CardView,
    PhaseLine,
    fit_blocks,
    plain,
    reminder_blocks,
    status_card,
    status_card_text,
)
from bot.slack.bolt import strip_mention
from bot.slack.writer import ConsoleWriter

EXPIRES = datetime(2031, 5, 4, 12, 30, tzinfo=UTC)


def view(status: EnvStatus, *phases: PhaseLine, last_error: str | None = None,
         **choices: Any) -> CardView:
    return CardView(name="pr-142", status=status, owner_id="U1", reference="staging",
                    expires_at=EXPIRES, phases=phases, last_error=last_error, **choices)


def actions(blocks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["action_id"], e["value"]) for b in blocks if b["type"] == "actions"
            for e in b["elements"]]


MIXED = (
    PhaseLine(PhaseName.INFRA, PhaseStatus.SUCCEEDED, took=timedelta(seconds=72)),
    PhaseLine(PhaseName.CODE, PhaseStatus.FAILED,
              error="image api:9.9 not found\nTraceback (most recent call last): ..."),
    PhaseLine(PhaseName.DATA),
)


def test_a_failed_card_offers_retry_and_destroy() -> None:
    blocks = status_card(view(EnvStatus.FAILED, *MIXED))
    assert actions(blocks) == [("ephem:retry", "pr-142"), ("ephem:destroy", "pr-142")]
    destroy = blocks[-1]["elements"][1]
    assert destroy["style"] == "danger" and "confirm" in destroy


@pytest.mark.parametrize("status", [s for s in EnvStatus
                                    if s not in (EnvStatus.FAILED, EnvStatus.READY)])
def test_cards_of_work_in_progress_have_no_buttons(status: EnvStatus) -> None:
    assert actions(status_card(view(status, *MIXED))) == []


READY = (
    PhaseLine(PhaseName.INFRA, PhaseStatus.SKIPPED),
    PhaseLine(PhaseName.DATA, PhaseStatus.SUCCEEDED, took=timedelta(seconds=3)),
    PhaseLine(PhaseName.CODE, PhaseStatus.SKIPPED),
)


def test_a_ready_card_offers_extend_destroy_reset_data_and_connection_details() -> None:
    blocks = status_card(view(EnvStatus.READY, *READY))
    assert actions(blocks) == [("ephem:extend", "pr-142"), ("ephem:destroy", "pr-142"),
                               ("ephem:reset-data", "pr-142"), ("ephem:creds", "pr-142")]
    reset = blocks[-1]["elements"][2]
    assert "everything written to it is lost" in reset["confirm"]["text"]["text"]
    # Without a database there is nothing to reset and nothing to connect to.
    nothing = (PhaseLine(PhaseName.INFRA, PhaseStatus.SKIPPED),
               PhaseLine(PhaseName.DATA, PhaseStatus.SKIPPED),
               PhaseLine(PhaseName.CODE, PhaseStatus.SKIPPED))
    assert actions(status_card(view(EnvStatus.READY, *nothing))) == [
        ("ephem:extend", "pr-142"), ("ephem:destroy", "pr-142")]


def test_the_card_shows_what_was_asked_for_with_user_text_escaped() -> None:
    card = view(EnvStatus.READY, *READY, release_set=(("api", "2.8.0-rc1"), ("web", "5.1.0")),
                data_mode=DataMode.SNAPSHOT, data_snapshot="shop",
                reason="check <!channel> & the new <https://x|checkout>")
    [choices] = [b for b in status_card(card) if b["type"] == "context"][1]["elements"]
    assert choices["text"] == (
        "Releases: api `2.8.0-rc1`, web `5.1.0` · Data: snapshot `shop` · "
        "Reason: check &lt;!channel&gt; &amp; the new &lt;https://x|checkout&gt;")
    line = status_card_text(card).splitlines()[2]
    assert line.startswith("Releases: api `2.8.0-rc1`") and "&lt;!channel&gt;" in line
    # On a terminal the same line reads as typed.
    assert plain(line).endswith("Reason: check <!channel> & the new <https://x|checkout>")


def test_each_phase_says_where_it_is() -> None:
    running = PhaseLine(PhaseName.DATA, PhaseStatus.RUNNING, detail="cloning the template")
    skipped = PhaseLine(PhaseName.INFRA, PhaseStatus.SKIPPED)
    removing = PhaseLine(PhaseName.CODE, PhaseStatus.RUNNING, PhaseAction.DESTROY)

    text = status_card_text(view(EnvStatus.FAILED, *MIXED))
    assert text.splitlines() == [
        "pr-142 · failed",
        "Owner <@U1> · matches `staging` · expires 2031-05-04 12:30 UTC",
        "✓ *infra* — done in 1m",
        "✗ *code* — failed: image api:9.9 not found",
        "· *data* — pending",
    ]
    text = status_card_text(view(EnvStatus.CREATING, skipped, removing, running))
    assert "- *infra* — skipped" in text
    assert "… *code* — removing" in text
    assert "… *data* — running: cloning the template" in text


def test_the_card_in_block_kit() -> None:
    blocks = status_card(view(EnvStatus.CREATING, *MIXED))
    assert [b["type"] for b in blocks] == ["header", "context", "section"]
    assert blocks[0]["text"]["text"] == ":hammer_and_wrench: pr-142 · creating"
    assert f"<!date^{int(EXPIRES.timestamp())}^" in blocks[1]["elements"][0]["text"]  # local time
    lines = blocks[2]["text"]["text"].splitlines()
    assert lines[0] == ":white_check_mark: *infra* — done in 1m"
    assert lines[1] == ":x: *code* — failed: image api:9.9 not found"


def test_an_environment_error_shows_when_no_phase_explains_it() -> None:
    text = status_card_text(view(EnvStatus.FAILED, PhaseLine(PhaseName.INFRA),
                                 last_error="lease lost twice\ndetails"))
    assert text.splitlines()[-1] == "Last error: lease lost twice"
    assert "Last error" not in status_card_text(view(EnvStatus.FAILED, *MIXED,
                                                     last_error="x"))


def test_the_reminder_offers_extend_and_destroy() -> None:
    text = messages.reminder("pr-142", owner_id="U1", left=timedelta(minutes=30),
                             expires=messages.slack_date(EXPIRES))
    blocks = reminder_blocks("pr-142", text)
    assert blocks[0]["text"]["text"] == text and "`pr-142` expires in 30m" in text
    # A terminal shows the time, not Slack's fallback word.
    assert "expires in 30m (2031-05-04 12:30 UTC)" in plain(text)
    assert actions(blocks) == [("ephem:extend", "pr-142"), ("ephem:destroy", "pr-142")]


def test_fitting_leaves_small_messages_alone() -> None:
    blocks = status_card(view(EnvStatus.FAILED, *MIXED))
    assert fit_blocks(blocks) == blocks


async def test_the_console_shows_the_card_as_lines_and_buttons() -> None:
    printed: list[str] = []
    console = ConsoleWriter(printed.append)
    card = view(EnvStatus.FAILED, *MIXED)

    root = await console.post_message("shell", text=status_card_text(card),
                                      blocks=status_card(card))
    reply = await console.post_message("shell", text="queued", thread_ts=root)
    await console.post_ephemeral("shell", "U1", text="only you")

    assert root != reply
    assert printed[0].splitlines() == [
        "pr-142 · failed",
        "Owner @U1 · matches staging · expires 2031-05-04 12:30 UTC",
        "infra — done in 1m",
        "code — failed: image api:9.9 not found",
        "data — pending",
        "[Retry] [Destroy]",
    ]
    assert printed[1:] == ["  | queued", "only you"]


@pytest.mark.parametrize(("text", "expected"), [
    ("<@UBOT> status pr-1", "status pr-1"),
    ("<@UBOT|ephem>: create pr-2 --ttl 2d", "create pr-2 --ttl 2d"),
    ("  <@UBOT>", ""),
    ("approve <@UBOT>", "approve <@UBOT>"),  # only a leading mention addresses the bot
    ("<@U2> <@UBOT> help", "<@U2> <@UBOT> help"),  # someone else's mention is not stripped
])
def test_the_mention_is_stripped(text: str, expected: str) -> None:
    assert strip_mention(text, "UBOT") == expected


def test_without_the_bot_id_any_leading_mention_is_stripped() -> None:
    assert strip_mention("<@UOTHER> list") == "list"


def test_the_card_escapes_what_people_and_tools_wrote() -> None:
    view = CardView(
        name="pr-1", status=EnvStatus.FAILED, owner_id="U1", reference="<!channel>",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        phases=(PhaseLine(PhaseName.DATA, PhaseStatus.FAILED,
                          error="psql: <!here> <https://evil.example|click> & co"),),
        last_error="<!everyone>",
    )
    rendered = json.dumps(status_card(view)) + status_card_text(view)
    for raw in ("<!channel>", "<!here>", "<https://evil.example|click>", "<!everyone>"):
        assert raw not in rendered
    assert "&lt;!here&gt; &lt;https://evil.example|click&gt; &amp; co" in rendered
    # The terminal shows it as Slack would: as typed.
    assert plain("Last error: &lt;!here&gt; &amp; co") == "Last error: <!here> & co"
@pytest.mark.parametrize(("mrkdwn", "stripped", "bold"), [
    ("*pr-1* has failed", "pr-1 has failed", "\x1b[1mpr-1\x1b[22m has failed"),
    ("use `/ephem list`", "use /ephem list", "use /ephem list"),
    ("2*3*4 stays", "2*3*4 stays", "2*3*4 stays"),
    ("```\nlog line\n```", "\nlog line\n", "\nlog line\n"),
    ("<@U1> asked", "@U1 asked", "@U1 asked"),
])
def test_mrkdwn_on_a_terminal(mrkdwn: str, stripped: str, bold: str) -> None:
    assert plain(mrkdwn) == stripped
    assert plain(mrkdwn, ansi=True) == bold


def test_errors_on_the_card_are_escaped() -> None:
    failed = PhaseLine(PhaseName.DATA, PhaseStatus.FAILED,
                       error="migration V9__<!channel>.sql failed near <@U2>")
    blocks = status_card(view(EnvStatus.FAILED, failed))
    [section] = [b for b in blocks if b["type"] == "section"]
    assert "V9__&lt;!channel&gt;.sql failed near &lt;@U2&gt;" in section["text"]["text"]
    text = status_card_text(view(EnvStatus.FAILED, PhaseLine(PhaseName.INFRA),
                                 last_error="<!here> lease lost"))
    assert text.splitlines()[-1] == "Last error: &lt;!here&gt; lease lost"
