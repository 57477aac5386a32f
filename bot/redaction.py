"""Every secret value Ephem knows, and the one function that takes them out of a text.

Why: secrets reach Ephem from many places — the tokens in its settings, each `${VAR}` the
blueprint expands (an admin URL's password, a production source URL), the passwords it derives
for environments — and text leaves Ephem through a few doors: Slack messages, log lines, a
tool's output tail posted in a thread, error texts. Rather than trusting every door to know
every secret, each secret is registered here when it first appears, and each door calls
`scrub` (or installs `ScrubFilter` on its log handler). URL passwords are caught by shape even
when nobody registered them (`bot.pg.scrub`).

A registry is process-wide state, kept deliberately small: values are only ever added, and
values too short to be secrets (a `${PORT}` of `5432`) are ignored, so scrubbing never mangles
ordinary words.

Neighbours: `bot.config` registers the settings' tokens and expanded `${VAR}` values; the phase
context registers derived secrets; `bot.proc` scrubs tool output; `bot.slack.writer` scrubs
every text and block it sends; `bot.cli.main` installs the log filter.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.pg import scrub as scrub_url_passwords

MASK = "***"
MIN_LENGTH = 6  # shorter values are not treated as secrets (ports, flags, short names)

class _Registry:
    """The known secret values and one compiled pattern that finds any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str | None]) -> None:
        fresh = {v for v in values if v and len(v) >= MIN_LENGTH and v not in self._known}
        if not fresh:
            return
        with self._lock:
            self._known.update(fresh)
            # Longest first, so a secret that contains another is masked whole.
            alternatives = sorted(self._known, key=len, reverse=True)
            self.pattern = re.compile("|".join(re.escape(v) for v in alternatives))

    def __len__(self) -> int:
        return len(self._known)


_REGISTRY = _Registry()


def register(*values: str | None) -> None:
    """Remember secret values (None, empty and short ones are ignored)."""
    _REGISTRY.add(values)


def register_all(values: Iterable[str | None]) -> None:
    _REGISTRY.add(values)


def known_count() -> int:
    """How many secret values are registered (for `ephem doctor` and tests)."""
    return len(_REGISTRY)


def scrub(text: str) -> str:
    """`text` with every registered secret, and every URL password, replaced by `***`."""
    pattern = _REGISTRY.pattern
    if pattern is not None and text:
        text = pattern.sub(MASK, text)
    return scrub_url_passwords(text)


def scrub_structure(value: Any) -> Any:
    """A copy of a JSON-like structure (Block Kit blocks, say) with every string scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: scrub_structure(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [scrub_structure(v) for v in value]
    return value


class ScrubFilter(logging.Filter):
    """A log filter that renders each record's message and scrubs it (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        scrubbed = scrub(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        record.msg, record.args = scrubbed, None
        return True
