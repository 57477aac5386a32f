"""The seams between layers, as protocols and plain values.

Why: `bot.slack` must call the command handlers and `bot.executor` must call the pipeline runner,
yet `bot` may not import `handlers` or `pipelines`. Each side depends on these shapes only, and
`bot.cli.app` (the composition root) plugs the real implementations in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from bot.domain import JobKind, PhaseName, ProgressEvent, ReleaseSet

# --------------------------------------------------------------------------- Slack edge → handlers


@dataclass(frozen=True)
class Invocation:
    """Someone asked Ephem for something: a slash command, a mention, a button, a shell line."""

    user_id: str
    channel_id: str
    text: str = ""
    source: str = "slack"  # slack | mention | dm | button | modal | shell | scheduler
    thread_ts: str | None = None
    # Where Slack lets the app answer without being in the channel (slash commands, buttons);
    # valid for 30 minutes.
    response_url: str | None = None
    message_ts: str | None = None  # buttons: the message the button is on
    # Buttons: lets the app open a modal for the clicker within 3 seconds (`views.open`).
    trigger_id: str | None = None


class Visibility(StrEnum):
    EPHEMERAL = "ephemeral"  # only the person who asked sees it
    THREAD = "thread"  # in the environment's thread (the status card is its root)
    CHANNEL = "channel"  # a new message in the channel
    OWNER = "owner"  # only the environment's owner (ephemeral to them, or a DM)
    # The environment's credentials, to its owner only — whoever asked — ephemeral (a DM when
    # that cannot reach them). The reply's text is not used: the secrets are derived again when
    # the message is sent, so they are never stored on the way (`CredentialsSource`).
    CREDENTIALS = "credentials"
    # The approval request `approval_id`'s card: posted in the approvals channel, or updated
    # in place, rendered from the store when sent. The text is not used.
    APPROVAL = "approval"
    # A modal opened for the person who clicked (`Invocation.trigger_id`): `blocks` holds one
    # view (a dict), not message blocks.
    MODAL = "modal"


@dataclass(frozen=True)
class Reply:
    """Something to say back. Rendering and posting are the notifier's job."""

    text: str
    visibility: Visibility = Visibility.EPHEMERAL
    env_id: int | None = None  # THREAD/OWNER/CREDENTIALS replies: which environment
    blocks: Sequence[dict[str, Any]] | None = None
    approval_id: int | None = None  # APPROVAL replies: which request
    # A THREAD reply to a click replaces the clicked message with what happened (a used
    # reminder); False keeps the message (an approval card, which is rendered from the store).
    replace_message: bool = True


class ChannelAccess(Protocol):
    async def can_post(self, channel_id: str) -> bool | None:
        """Whether Ephem may post in the channel (it is a member); None when it cannot tell
        now (Slack unreachable): the caller goes ahead, as Slack is usually right there."""
        ...


class ApproverDirectory(Protocol):
    async def usergroup_members(self, usergroup: str) -> frozenset[str] | None:
        """The user ids in a Slack user group (remembered briefly); None when Slack cannot say
        now."""
        ...


class CommandHandler(Protocol):
    async def command(self, inv: Invocation) -> list[Reply]:
        """Handle `/ephem …` text (also mentions and shell lines)."""
        ...

    async def action(self, inv: Invocation, *, action_id: str, value: str) -> list[Reply]:
        """Handle a button click (`action_id` names the button, `value` carries its target)."""
        ...

    async def submission(self, inv: Invocation, *, callback_id: str, metadata: str,
                         values: Mapping[str, str]) -> list[Reply]:
        """Handle a submitted modal (`callback_id` names it, `metadata` is what Ephem put in
        it when it opened it, `values` are its inputs by action id)."""
        ...


# --------------------------------------------------------------------------- executor → runner


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    env_id: int
    kind: JobKind
    attempts: int
    requested_by: str


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"  # a temporary failure: run the job again after `delay` seconds


@dataclass(frozen=True)
class JobOutcome:
    kind: OutcomeKind
    error: str | None = None
    delay: float = 0.0


class JobWork(Protocol):
    async def __call__(self, job: ClaimedJob) -> JobOutcome:
        """Run a claimed job to an outcome. CancelledError means: lease lost or shutting down."""
        ...


# --------------------------------------------------------------------------- credentials


class CredentialsSource(Protocol):
    async def credentials(self, env_id: int) -> Mapping[str, Mapping[str, str]]:
        """The environment's secrets, phase by phase (`{"data": {"database_url": …}}`).

        Derived again from the secret key and the environment's recorded outputs each time:
        nothing secret is stored, so a message carrying them can be sent again (`/ephem creds`,
        a "Connection details" button, a delivery retried after an outage) without keeping
        the secret anywhere. Empty for a phase that has not applied yet.
        """
        ...


# --------------------------------------------------------------------------- pipelines → notifier


class Events(Protocol):
    """What a running job tells the people following it. Implementations must not wait on
    Slack: the notifier records what to say and sends it outside the job."""

    async def progress(self, event: ProgressEvent) -> None:
        """A phase moved; refresh the status card (and post `detail` if it is a milestone)."""
        ...

    async def credentials_ready(self, env_id: int, phase: PhaseName) -> None:
        """`phase` has secrets for the environment's owner. Deliver them (derived again from
        `CredentialsSource` when the message is sent, so they are never stored)."""
        ...


@dataclass
class RecordedEvents:
    """An `Events` that keeps what it was told; for the shell's summary and for tests."""

    progress_events: list[ProgressEvent] = field(default_factory=list)
    credentials: list[tuple[int, PhaseName]] = field(default_factory=list)

    async def progress(self, event: ProgressEvent) -> None:
        self.progress_events.append(event)

    async def credentials_ready(self, env_id: int, phase: PhaseName) -> None:
        self.credentials.append((env_id, phase))


# --------------------------------------------------------------------------- handlers → pipelines


class ReleaseResolver(Protocol):
    async def resolve(self, reference: str) -> ReleaseSet:
        """What `reference` (a key of the blueprint's `references`) runs now, from its source.

        Called when a request is accepted (`create`, `create --dry-run`, `diff`); the result
        is recorded on the environment and never re-read behind anyone's back. Raises
        `UserError` with a reason fit for the channel when the source fails, times out or
        answers something that is not a release set.
        """
        ...


# --------------------------------------------------------------------------- scheduler → pipelines


@dataclass(frozen=True)
class Orphan:
    """Something with Ephem's marks that no live environment owns (see `OrphanFinding`)."""

    kind: str  # "terraform workspace", "namespace", "database", "role"
    name: str
    env_id: int | None = None
    env_name: str | None = None

    def line(self) -> str:
        owner = f" (environment {self.env_id}, not live)" if self.env_id is not None else ""
        return f"{self.kind} {self.name}{owner}"


class OrphanFinding(Protocol):
    """The infrastructure phase's orphan finder, as the scheduler's reconciliation uses it."""

    async def find(self) -> Sequence[Orphan]:
        """Every object with Ephem's marks that no live environment owns, now."""
        ...

    async def remove(self, orphan: Orphan) -> str:
        """Destroy one (safe to repeat); one line saying what was done. Raises on failure."""
        ...


class DatabaseSizes(Protocol):
    async def sizes(self, names: Sequence[str]) -> Mapping[str, int]:
        """Environment name → its database's size in bytes (`pg_database_size`), for the
        names that have a database now; the others are left out."""
        ...
