"""The Phase protocol: what every phase of an environment implements.

Why: the runner orders phases, persists their outcomes, retries and times them out; a phase only
knows how to bring its part of one environment to "applied" or "destroyed". Both operations are
idempotent — applying twice changes nothing, destroying something already gone succeeds — because
a crash between doing the work and recording it means the runner will ask again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from bot import redaction
from bot.config import Blueprint
from bot.domain import DataRequest, PhaseName, ReleaseSet


@dataclass(frozen=True)
class PhaseContext:
    """Everything a phase may know about the environment it works on."""

    env_id: int
    name: str
    owner_id: str
    release_set: ReleaseSet
    data: DataRequest
    blueprint: Blueprint
    # Outputs of phases that already ran for this environment (e.g. infra → data).
    outputs: Mapping[PhaseName, Mapping[str, Any]]
    # Reports progress detail ("creating role") on the status card.
    emit: Callable[[str], Awaitable[None]]
    secret_key: bytes = field(repr=False, default=b"")
    # `/ephem reset-data`: the data phase re-creates the database instead of keeping it.
    reset_data: bool = False
    # The reference environment the release set was resolved from (`--match`), if any.
    reference: str | None = None
    # Secrets of earlier phases this phase asks for (`NeedsSecrets`; `{data: {database_url: …}}`),
    # said again by each (`HasSecrets`) for this context only: the code phase hands the data
    # phase's connection to the components. Never persisted, never shown.
    secrets: Mapping[PhaseName, Mapping[str, str]] = field(repr=False, default_factory=dict)
    expires_at: datetime | None = None

    def derive_secret(self, purpose: str, length: int = 32) -> str:
        """A stable secret for this environment (e.g. its database password).

        Derived with HMAC from the process secret, so re-applying a phase yields the same value
        and nothing secret needs to be stored. Registered with `bot.redaction`, so it is masked
        in every log line, tool output and error text from then on.
        """
        msg = f"{self.env_id}:{self.name}:{purpose}".encode()
        secret = hmac.new(self.secret_key, msg, hashlib.sha256).hexdigest()[:length]
        redaction.register(secret)
        return secret


@dataclass(frozen=True)
class PhaseResult:
    outputs: Mapping[str, Any] = field(default_factory=dict)  # persisted; visible in the thread
    secrets: Mapping[str, str] = field(default_factory=dict)  # to the owner only; never persisted
    links: Mapping[str, str] = field(default_factory=dict)  # label → URL, posted in the thread
    summary: str = ""  # one line for the card ("database ephem_pr_142 on db:5432")


class Phase(Protocol):
    name: PhaseName

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        """Bring this part of the environment into existence; idempotent."""
        ...

    async def destroy(self, ctx: PhaseContext) -> None:
        """Remove this part of the environment; succeeds if it is already gone."""
        ...

    async def describe(self, ctx: PhaseContext) -> str:
        """One line on what apply would do, for `status` and the card."""
        ...


@runtime_checkable
class NeedsSecrets(Protocol):
    """A phase that applies with the secrets of earlier phases (`PhaseContext.secrets`).

    Saying them again can be costly (Terraform reads its outputs back), so the runner derives
    only what a phase names here, and only when it applies.
    """

    secrets_of: tuple[PhaseName, ...]


@runtime_checkable
class HasSecrets(Protocol):
    """A phase whose results include secrets for the owner can say them again on request."""

    async def secrets(self, ctx: PhaseContext) -> Mapping[str, str]:
        """The same secrets `apply` returned, from `ctx` alone (its derived secrets and the
        phase's recorded outputs); no changes made. Empty when the phase has nothing to say."""
        ...
