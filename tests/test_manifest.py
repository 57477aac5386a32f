"""The Slack app manifest (bot/slack/manifest.yaml) that creates Ephem's Slack app in one paste.

Why: a missing scope or a wrong request URL shows up only after someone has created the app and
wondered why `/ephem` times out or `chat.postMessage` answers `missing_scope`. These checks keep
the manifest in step with what the bot calls and where it listens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parent.parent / "bot" / "slack" / "manifest.yaml"
EVENTS_URL = "https://ephem.example.com/slack/events"

# Each scope and the calls that need it; the manifest asks for exactly these.
NEEDED_SCOPES = {
    "commands": "/ephem",
    "chat:write": "chat.postMessage, chat.update, chat.postEphemeral",
    "chat:write.public": "posting in channels the bot was not invited to",
    "app_mentions:read": "the app_mention event",
    "im:write": "conversations.open for reminders and credentials",
    "im:history": "the message.im event: commands in the Messages tab",
    "channels:read": "conversations.info: is the bot in the channel of a create",
    "groups:read": "conversations.info for private channels",
    "usergroups:read": "usergroups.users.list: the members of the approvers' user group",
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return loaded


def test_has_a_bot_user(manifest: dict[str, Any]) -> None:
    bot_user = manifest["features"]["bot_user"]
    assert bot_user["display_name"] == "ephem"


def test_display_information_fits_slack_limits(manifest: dict[str, Any]) -> None:
    info = manifest["display_information"]
    assert 0 < len(info["name"]) <= 35
    assert 0 < len(info["description"]) <= 140
    # Slack refuses a manifest whose long_description is shorter than 174 characters.
    assert 174 <= len(info["long_description"]) <= 4000


def test_slash_command(manifest: dict[str, Any]) -> None:
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/ephem"
    assert command["url"] == EVENTS_URL
    hint = command["usage_hint"]
    assert hint.startswith("create [NAME]")
    for part in ["--match ENV", "--set COMPONENT=VERSION", "--ttl DURATION",
                 "--data none|seed|snapshot[:NAME]", "--reason TEXT"]:
        assert part in hint
    assert "\n" not in hint


def test_every_request_url_is_the_one_events_endpoint(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["interactivity"] == {"is_enabled": True, "request_url": EVENTS_URL}
    assert settings["event_subscriptions"]["request_url"] == EVENTS_URL
    assert settings["event_subscriptions"]["bot_events"] == ["app_mention", "message.im",
                                                           "app_home_opened"]


def test_http_mode_by_default(manifest: dict[str, Any]) -> None:
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert "SLACK_APP_TOKEN" in MANIFEST.read_text(encoding="utf-8")  # how to switch


def test_asks_for_exactly_the_scopes_the_bot_needs(manifest: dict[str, Any]) -> None:
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert len(scopes) == len(set(scopes))
    missing = set(NEEDED_SCOPES) - set(scopes)
    assert not missing, f"missing scopes: {sorted(missing)}"
    extra = set(scopes) - set(NEEDED_SCOPES)
    assert not extra, f"scopes nobody needs: {sorted(extra)}"
    assert "user" not in manifest["oauth_config"]["scopes"]

