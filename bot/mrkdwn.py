"""Slack mrkdwn: how user text is made safe to echo.

Why: Slack reads `<!channel>`, `<@U123>` and `<https://x|label>` in a message as a mention of a
whole channel, a person or a disguised link. Text a person typed (a name, a `--reason`, a
version, an error that quotes them) is shown back by Ephem, and must be shown as text: Slack's
own rule is to escape `&`, `<` and `>` and nothing else
(https://api.slack.com/reference/surfaces/formatting#escaping). Slack escapes what a user
types the same way before sending it, and the parser undoes that (`html.unescape`), so escaping
again on the way out is what keeps it text.

What cannot be text at all — a NUL byte, half of a UTF-16 pair — is shown as U+FFFD: neither
PostgreSQL (where every message waits in the outbox) nor Slack can hold it, and a refusal that
quoted it would otherwise never be sent.

Neighbours: `handlers` and `bot.slack.blocks` call `escape` on every piece of user text they put
into a message; messages Ephem writes itself (mentions of the owner, dates) are not escaped.
"""

from __future__ import annotations

_NOT_TEXT = "\ufffd"  # the replacement character
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\x00": _NOT_TEXT,
                          **{chr(c): _NOT_TEXT for c in range(0xD800, 0xE000)}})


def escape(text: str) -> str:
    """`text` with `&`, `<` and `>` escaped, so Slack shows it as typed; a NUL or a lone
    surrogate becomes U+FFFD."""
    return text.translate(_ESCAPES)
