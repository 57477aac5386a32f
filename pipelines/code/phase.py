"""The code phase: the environment's release set deployed, ready, and linked in the thread.

Why a thin layer over the deployers: what the phase promises is the same however components
run — the set recorded on the environment when the request was accepted is what is deployed
(never re-read from the reference), the data phase's connection reaches the components, the
thread gets one link per exposed component and the set's summary, and `status` can repeat the
links because they are kept in the phase's outputs. The deployer (`local` or `kubernetes`)
does the rest.

The connection comes from `PhaseContext.secrets`: the runner has the data phase say its
secrets again for this context (`HasSecrets`), so the URL with its password is derived when
needed and never stored. It is registered with `bot.redaction` so it cannot leak through a
component's log lines posted in the thread.

Neighbours: `plan` (the deployer protocol), `local`, `kubernetes`; `bot.cli.app` chooses the
deployer from `phases.code`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bot import redaction, releases
from bot.domain import PhaseName
from pipelines.base import PhaseContext, PhaseResult
from pipelines.code.plan import Deployer


class CodePhase:
    name = PhaseName.CODE
    secrets_of = (PhaseName.DATA,)  # `NeedsSecrets`: the components' database connection

    def __init__(self, deployer: Deployer) -> None:
        self.deployer = deployer

    async def describe(self, ctx: PhaseContext) -> str:
        count = len(ctx.release_set.versions)
        return (f"deploying {count} component{'s' if count != 1 else ''} "
                f"{await self.deployer.describe(ctx)}")

    async def apply(self, ctx: PhaseContext) -> PhaseResult:
        url = (ctx.secrets.get(PhaseName.DATA) or {}).get("database_url")
        if url:
            redaction.register(url, urlsplit(url).password)
        deployed = await self.deployer.deploy(ctx, database_url=url)
        links = {d.component: d.link for d in deployed if d.link}
        summary = (f"{len(deployed)} component{'s' if len(deployed) != 1 else ''} ready "
                   f"({self.deployer.kind}): {releases.summary(ctx.release_set.versions)}")
        return PhaseResult(
            outputs={
                "deployer": self.deployer.kind,
                "links": links,
                "components": {d.component: {"version": d.version, **d.facts}
                               for d in deployed},
            },
            links=links,
            summary=summary,
        )

    async def destroy(self, ctx: PhaseContext) -> None:
        await self.deployer.remove(ctx)
