"""The infra phase: the configured providers as one `Phase` (`PhaseName.INFRA`).

Why one phase: the runner orders, persists and retries phases; infrastructure is one of them,
whatever it is made of. Terraform applies first (a namespace may be meant to live on a cluster
the module makes, and the module's outputs may name things the namespace needs), the namespace
second; destroy goes the other way. Each provider is idempotent on its own, so a retry after a
half-finished apply runs both again and converges.

Outputs: Terraform's public outputs and the namespace's (`namespace`) are merged into one
mapping, persisted, and handed to the later phases as `ctx.outputs[PhaseName.INFRA]`. The
outputs the blueprint asks to show are posted in the thread; secret outputs go to the owner
only and can be said again (`HasSecrets`).

Neighbours: `terraform.py`, `namespace.py`; `bot/cli/app.py` builds it from the blueprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.domain import PhaseName
from pipelines.base import PhaseContext, PhaseResult
from pipelines.infra.namespace import NamespaceProvider
from pipelines.infra.terraform import TerraformProvider


class InfraPhase:
    """Terraform and/or a Kubernetes namespace, in that order (destroy: the reverse)."""

    name = PhaseName.INFRA

    def __init__(self, *, terraform: TerraformProvider | None = None,
                 namespace: NamespaceProvider | None = None) -> None:
        if terraform is None and namespace is None:
            raise ValueError("the infra phase needs a provider")
        self.terraform = terraform
        self.namespace = namespace

    async def describe(self, ctx: PhaseContext) -> str:
        parts = []
        if self.terraform is not None:
            parts.append(await self.terraform.describe(ctx))
        if self.namespace is not None:
            parts.append(await self.namespace.describe(ctx))
        return " and ".join(parts)

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        outputs: dict[str, Any] = {}
        secrets: dict[str, str] = {}
        shown: dict[str, str] = {}
        summaries: list[str] = []
        if self.terraform is not None:
            public, secret, summary = await self.terraform.apply(ctx)
            outputs.update(public)
            secrets.update(secret)
            shown.update(self.terraform.shown(public))
            summaries.append(summary)
        if self.namespace is not None:
            made, summary = await self.namespace.apply(ctx)
            outputs.update(made)
            shown.update({k: str(v) for k, v in made.items()})
            summaries.append(summary)
        return PhaseResult(outputs=outputs, secrets=secrets, links=shown,
                           summary="; ".join(summaries))

    async def destroy(self, ctx: PhaseContext) -> None:
        if self.namespace is not None:
            await self.namespace.destroy(ctx)
        if self.terraform is not None:
            await self.terraform.destroy(ctx)

    async def secrets(self, ctx: PhaseContext) -> Mapping[str, str]:
        """`HasSecrets`: the secret Terraform outputs again, read from the state."""
        if self.terraform is None or not ctx.outputs.get(PhaseName.INFRA):
            return {}
        return await self.terraform.secrets(ctx)
