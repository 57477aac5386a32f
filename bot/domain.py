"""Pure values shared by every layer: requests, statuses, transitions, durations, names.

Why a module of its own: `handlers` produce these values, `pipelines` consume them and the store
persists them; none of the three may depend on another, so the vocabulary lives here. Nothing in
this module does I/O.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from bot.errors import IllegalTransition, UserError
from bot.mrkdwn import escape

# --------------------------------------------------------------------------- statuses


class EnvStatus(StrEnum):
    QUEUED = "queued"
    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


class JobKind(StrEnum):
    CREATE = "create"
    DESTROY = "destroy"
    RESET_DATA = "reset_data"  # re-clone the environment's database (data phase only)


class JobStatus(StrEnum):
    # Waits for an approver's decision (snapshot-derived data): no worker claims it and no phase
    # runs until it is approved (-> queued), denied or expired (-> failed), or cancelled.
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # the environment was destroyed while it waited


class PhaseName(StrEnum):
    INFRA = "infra"
    CODE = "code"
    DATA = "data"


class PhaseAction(StrEnum):
    APPLY = "apply"
    DESTROY = "destroy"


class PhaseStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"  # its process died mid-attempt; a later attempt takes over


class DataMode(StrEnum):
    NONE = "none"
    SEED = "seed"
    SNAPSHOT = "snapshot"


# A component needs its database migrated before it starts, and takes its connection from the
# data phase's outputs; the data phase may take its server from the infrastructure's outputs.
CREATE_ORDER: tuple[PhaseName, ...] = (PhaseName.INFRA, PhaseName.DATA, PhaseName.CODE)
DESTROY_ORDER: tuple[PhaseName, ...] = tuple(reversed(CREATE_ORDER))

LIVE_STATUSES = frozenset(s for s in EnvStatus if s is not EnvStatus.DESTROYED)

_ENV_TRANSITIONS: Mapping[EnvStatus, frozenset[EnvStatus]] = {
    # QUEUED -> FAILED: a create whose approval was denied or expired before anything ran.
    EnvStatus.QUEUED: frozenset({EnvStatus.CREATING, EnvStatus.DESTROYING, EnvStatus.FAILED}),
    EnvStatus.CREATING: frozenset({EnvStatus.READY, EnvStatus.FAILED}),
    EnvStatus.READY: frozenset({EnvStatus.DESTROYING, EnvStatus.CREATING}),
    EnvStatus.FAILED: frozenset({EnvStatus.CREATING, EnvStatus.DESTROYING}),
    EnvStatus.DESTROYING: frozenset({EnvStatus.DESTROYED, EnvStatus.FAILED}),
    EnvStatus.DESTROYED: frozenset(),
}

_JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.AWAITING_APPROVAL: frozenset(
        {JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    # RUNNING -> QUEUED: released on shutdown, or retried later after a temporary failure.
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def env_transition(current: EnvStatus, target: EnvStatus) -> EnvStatus:
    """Return `target` if an environment may move there from `current`, else raise."""
    if target == current or target in _ENV_TRANSITIONS[current]:
        return target
    raise IllegalTransition("environment", current, target)


def job_transition(current: JobStatus, target: JobStatus) -> JobStatus:
    """Return `target` if a job may move there from `current`, else raise."""
    if target in _JOB_TRANSITIONS[current]:
        return target
    raise IllegalTransition("job", current, target)


# --------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"([0-9]+)\s*([smhdw])", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_DIGITS = 9  # per number: `999999999m` is the longest number a duration takes
_MAX_SECONDS = int(timedelta.max.total_seconds())


def quoted(text: str, *, limit: int = 80) -> str:
    """User input as it is quoted in a message: shortened, mrkdwn-escaped, in backticks."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"`{escape(short)}`"


def parse_duration(text: str) -> timedelta:
    """Parse `90m`, `8h`, `2d`, `1w`, `1d12h` into a timedelta; raise UserError otherwise.

    Only ASCII digits count (`٣d` is no duration), and a number has at most DURATION_DIGITS
    digits, so what a person types can never overflow a timedelta or Python's int parsing.
    """
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION_RE.sub("", compact):
        raise UserError(
            f"{quoted(text)} is not a duration; use a number and a unit, like `90m`, `8h`, "
            "`2d` or `1w`."
        )
    terms = _DURATION_RE.findall(compact)
    if any(len(n.lstrip("0")) > DURATION_DIGITS for n, _ in terms):
        raise UserError(f"{quoted(text)}: a duration's number has at most {DURATION_DIGITS} "
                        "digits.")
    seconds = sum(int(n) * _UNITS[u] for n, u in terms)
    if seconds <= 0:
        raise UserError(f"{quoted(text)} is zero; a duration must be longer than that.")
    if seconds > _MAX_SECONDS:
        raise UserError(f"{quoted(text)} is longer than any duration I can count.")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a timedelta the way `parse_duration` reads it, coarsest units first."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or f"{seconds}s"


# --------------------------------------------------------------------------- names

NAME_MAX = 40
RESERVED_NAME_PREFIXES = ("snap-", "pool-")
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "coral", "crisp", "dusty", "eager", "fancy",
    "gentle", "glad", "green", "happy", "hazy", "ivory", "jolly", "keen", "lively", "lucky",
    "mellow", "misty", "noble", "olive", "plucky", "proud", "quick", "quiet", "rapid", "rosy",
    "rusty", "sandy", "shiny", "silver", "snowy", "sunny", "swift", "tidy", "vivid", "witty",
)  # fmt: skip
_NOUNS = (
    "badger", "beacon", "breeze", "canyon", "cedar", "comet", "delta", "ember", "falcon", "fern",
    "fjord", "forest", "galaxy", "glacier", "harbor", "heron", "island", "lagoon", "lantern",
    "maple", "meadow", "meteor", "orchid", "otter", "panda", "pebble", "pine", "prairie", "quasar",
    "raven", "reef", "river", "sparrow", "summit", "thistle", "tiger", "tundra", "walrus", "willow",
)  # fmt: skip


def validate_name(name: str) -> str:
    """Check an environment name against DNS-label rules; return it or raise UserError.

    The name becomes a Kubernetes namespace, a database name and a Terraform workspace, so the
    strictest of those rules applies: lowercase letters, digits and hyphens, starting with a
    letter, ending with a letter or digit, at most NAME_MAX characters.
    """
    if len(name) > NAME_MAX:
        raise UserError(f"{quoted(name)} is {len(name)} characters long; names have at most "
                        f"{NAME_MAX}.")
    if name.startswith(RESERVED_NAME_PREFIXES):
        raise UserError(
            f"{quoted(name)}: names starting with "
            f"{' or '.join(f'`{p}`' for p in RESERVED_NAME_PREFIXES)}"
            " are reserved for Ephem's own snapshot and pool databases."
        )
    if not _NAME_RE.fullmatch(name):
        suggestion = suggest_name(name)
        raise UserError(
            f"{quoted(name)} is not a valid name: use lowercase letters, digits and hyphens, "
            "starting with a letter and ending with a letter or digit (like `pr-142`)."
            + (f" Did you mean `{suggestion}`?" if suggestion else "")
        )
    return name


def suggest_name(text: str) -> str | None:
    """The valid name closest to `text` (`PR_145` → `pr-145`), or None if nothing is left."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:NAME_MAX].rstrip("-")
    if not name or name == text or not _NAME_RE.match(name):
        return None
    if name.startswith(RESERVED_NAME_PREFIXES):
        return None
    return name


def generate_name(taken: frozenset[str] | set[str] = frozenset()) -> str:
    """A short, readable name such as `brisk-otter-7k`, not in `taken`."""
    while True:
        name = (
            f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-"
            f"{secrets.token_hex(1)}"
        )
        if name not in taken:
            return name


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ReleaseSet:
    """Component → version, as recorded on an environment."""

    versions: Mapping[str, str] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, str]) -> ReleaseSet:
        return ReleaseSet({**self.versions, **overrides})

    def diff(self, other: ReleaseSet) -> dict[str, tuple[str | None, str | None]]:
        """Components whose versions differ: name → (this version, other version)."""
        names = sorted(set(self.versions) | set(other.versions))
        return {
            n: (self.versions.get(n), other.versions.get(n))
            for n in names
            if self.versions.get(n) != other.versions.get(n)
        }


@dataclass(frozen=True)
class DataRequest:
    mode: DataMode
    snapshot: str | None = None

    def __str__(self) -> str:
        return f"{self.mode}:{self.snapshot}" if self.snapshot else str(self.mode)


@dataclass(frozen=True)
class EnvRequest:
    """What `/ephem create` asked for, after parsing and before validation against a blueprint.

    `None` means "not given": the blueprint's default applies.
    """

    name: str | None = None
    match: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    ttl: timedelta | None = None
    data: DataRequest | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """Emitted by the pipeline runner; the notifier turns it into Slack updates."""

    env_id: int
    phase: PhaseName | None
    status: PhaseStatus
    detail: str = ""
    milestone: bool = False  # also post `detail` into the thread, not only on the card
