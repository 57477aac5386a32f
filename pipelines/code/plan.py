"""What the code phase deploys, how readiness is counted, and how a failing component is named —
the same for every deployer.

Why shared: the `local` and `kubernetes` deployers differ in how a component runs, not in what
is deployed or how it is reported. Both deploy exactly the environment's release set: a
component of the set the deployer has nothing for is refused up front, naming it and where it
should have been; both count "3/7 components ready" on the card as components come up; and a
component that fails is reported as `<component>: <reason>` with its last log lines, whether
it is a pod in CrashLoopBackOff or a process that exited with code 3.

Neighbours: `phase.CodePhase` calls a `Deployer`; `local` and `kubernetes` implement it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.domain import ReleaseSet
from bot.errors import PermanentError
from pipelines.base import PhaseContext

Emit = Callable[[str], Awaitable[None]]
LOG_LINES = 20  # log lines of a failing component shown in the thread


@dataclass(frozen=True)
class Planned:
    component: str
    version: str


@dataclass(frozen=True)
class Plan:
    """The release set's components the deployer knows how to run, by name; and those it
    knows but the set does not name (`unversioned`: what a deployer does with them is its
    own business — the Kubernetes copy keeps them as the reference runs them)."""

    components: tuple[Planned, ...]
    unversioned: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [p.component for p in self.components]


def plan_release(release: ReleaseSet, available: Collection[str], *, where: str) -> Plan:
    """Match the release set to what a deployer can deploy; raise PermanentError naming every
    component of the set that `where` has nothing for."""
    missing = sorted(set(release.versions) - set(available))
    if missing:
        raise PermanentError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} in the release set, "
            f"but {where} has nothing to deploy for {'it' if len(missing) == 1 else 'them'}")
    return Plan(
        components=tuple(Planned(c, v) for c, v in sorted(release.versions.items())),
        unversioned=tuple(sorted(set(available) - set(release.versions))),
    )


@dataclass(frozen=True)
class Deployed:
    """One component up and ready: where it answers (if exposed) and what to remember."""

    component: str
    version: str | None
    link: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)  # persisted in the phase's outputs


class ComponentFailed(PermanentError):
    """Components did not become ready; the reason names each, `details` holds their last
    log lines (the runner posts them in the thread)."""

    def __init__(self, component: str, reason: str, *, logs: str = "") -> None:
        super().__init__(f"{component}: {reason}" if component else reason,
                         details=logs.strip() or None)
        self.component = component


def combine(failures: Sequence[ComponentFailed]) -> ComponentFailed:
    """Several components failed: one error naming each, their logs one after another."""
    if len(failures) == 1:
        return failures[0]
    logs = "\n".join(f"--- {f.component}\n{f.details}" for f in failures if f.details)
    combined = ComponentFailed("", "; ".join(f.reason for f in failures), logs=logs)
    combined.component = ", ".join(f.component for f in failures)
    return combined


class Readiness:
    """Counts components as they become ready and says so on the card."""

    def __init__(self, components: Sequence[str], emit: Emit) -> None:
        self.waiting = set(components)
        self.total = len(components)
        self.emit = emit

    @property
    def count(self) -> int:
        return self.total - len(self.waiting)

    async def ready(self, component: str) -> None:
        if component in self.waiting:
            self.waiting.discard(component)
            await self.emit(self.line())

    async def all_of(self, ready: Collection[str]) -> None:
        """Several at once (a poll of a cluster); says so once."""
        fresh = self.waiting & set(ready)
        if fresh:
            self.waiting -= fresh
            await self.emit(self.line())

    def line(self) -> str:
        text = f"{self.count}/{self.total} components ready"
        if self.waiting:
            rest = sorted(self.waiting)
            text += f" (waiting for {', '.join(rest[:3])}{'…' if len(rest) > 3 else ''})"
        return text


class Deployer(Protocol):
    kind: str

    async def deploy(self, ctx: PhaseContext, *, database_url: str | None) -> list[Deployed]:
        """Deploy the environment's release set and wait until every component is ready;
        idempotent (what runs at the right version is kept). Raises ComponentFailed naming
        the components that did not come up, or another PhaseError."""
        ...

    async def remove(self, ctx: PhaseContext) -> None:
        """Remove what `deploy` made for the environment; succeeds if it is gone already."""
        ...

    async def describe(self, ctx: PhaseContext) -> str:
        """Where the components go, in a few words (`as local processes`)."""
        ...
