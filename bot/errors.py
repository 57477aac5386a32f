"""One root error, and the two axes every failure is sorted on.

Why: a failure is either *expected* (the user typed something wrong, a name is taken — shown to
the user as it is) or *unexpected* (a bug, an outage — logged with context, shown as a short
apology with an id). Independently, work that failed is either worth retrying (`TemporaryError`,
carrying its delay) or not (`PermanentError`). Callers branch on these types, never on messages.
"""

from __future__ import annotations


class EphemError(Exception):
    """Root of every error Ephem raises on purpose."""


class UserError(EphemError):
    """An expected failure whose message is written for the person who asked.

    The message must be safe to show in a channel: no secrets, no traces.
    """


class ConfigError(EphemError):
    """Settings or blueprint are invalid; the message names the file, key path and expectation."""


class IllegalTransition(EphemError):
    """A status change that the state machine does not allow."""

    def __init__(self, kind: str, current: str, target: str) -> None:
        super().__init__(f"{kind} cannot go from {current} to {target}")
        self.kind = kind
        self.current = current
        self.target = target


class PhaseError(EphemError):
    """A phase failed. `reason` is a short, user-safe sentence (never a trace, never a secret);
    `details`, when given, is longer user-safe text for the thread (a tool's output tail)."""

    def __init__(self, reason: str, *, details: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class TemporaryError(PhaseError):
    """Worth retrying after `delay` seconds (a connection refused, a lock held elsewhere)."""

    def __init__(self, reason: str, *, delay: float = 5.0, details: str | None = None) -> None:
        super().__init__(reason, details=details)
        self.delay = delay


class PermanentError(PhaseError):
    """Retrying will not help (bad configuration, a rejected request); stop and report."""
