"""The secret registry and its scrubbers, and mrkdwn escaping."""

from __future__ import annotations

import io
import logging
import secrets

from bot import mrkdwn, redaction


def test_registered_secrets_are_masked_wherever_they_appear() -> None:
    token = f"xoxb-{secrets.token_hex(8)}"
    inner = secrets.token_hex(6)
    longer = f"pre{inner}post"
    redaction.register(token, longer, inner)
    text = f"token={token}; a={longer}; b={inner}; url=postgresql://u:hunter22@db/x"
    assert redaction.scrub(text) == "token=***; a=***; b=***; url=postgresql://u:***@db/x"


def test_short_and_empty_values_are_not_secrets() -> None:
    before = redaction.known_count()
    redaction.register("", None, "5432", "abc")
    assert redaction.known_count() == before
    assert redaction.scrub("port 5432 abc") == "port 5432 abc"


def test_structures_are_scrubbed_through_and_left_unchanged() -> None:
    secret = secrets.token_hex(8)
    redaction.register(secret)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f"pw `{secret}`"}},
              {"type": "actions", "elements": [{"value": secret, "n": 3}]}]
    scrubbed = redaction.scrub_structure(blocks)
    assert scrubbed == [{"type": "section", "text": {"type": "mrkdwn", "text": "pw `***`"}},
                        {"type": "actions", "elements": [{"value": "***", "n": 3}]}]
    assert secret in blocks[0]["text"]["text"]  # the original is not modified


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    secret = secrets.token_hex(8)
    redaction.register(secret)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(redaction.ScrubFilter())
    log = logging.getLogger(f"test-redaction-{secret}")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting with %s", secret)
        try:
            raise RuntimeError(f"refused: {secret}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    written = out.getvalue()
    assert secret not in written
    assert "connecting with ***" in written and "RuntimeError: refused: ***" in written


def test_mrkdwn_escape_keeps_user_text_as_text() -> None:
    assert mrkdwn.escape("<!channel> & <https://evil|click>") == (
        "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;")
    assert mrkdwn.escape("api=2.8.0-rc1 *bold*") == "api=2.8.0-rc1 *bold*"
