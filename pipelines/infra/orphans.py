"""What carries Ephem's marks and belongs to no live environment, and its removal.

Why one finder: `ephem doctor --orphans [--fix]` and the scheduler's reconciliation must agree
on what an orphan is. Ephem's marks are: a Terraform workspace named `ephem-<id>-<name>` in the
state schema; a namespace labelled `app.kubernetes.io/managed-by: ephem` (its environment id in
`ephem.dev/environment-id`); a database or role named with the data phase's prefix
(`pipelines.data.orphans`). An object is an orphan when no environment that is not destroyed
(the store's live environments) owns it. Removing one uses the same code as a destroy, so
`fix` is as safe to repeat as a destroy is.

Neighbours: `terraform.py` and `namespace.py` (workspaces, namespaces), `pipelines.data.orphans`
(databases, roles); `bot/cli/doctor.py` prints what `find` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import NoResultFound

from bot.ports import Orphan
from bot.store import Store, repo
from pipelines.data import orphans as data_orphans
from pipelines.infra.namespace import NamespaceProvider
from pipelines.infra.terraform import WORKSPACE, Target, TerraformProvider


@dataclass(frozen=True)
class DataServer:
    """Where environment databases live, for the database and role part."""

    admin_url: str
    prefix: str
    keep: frozenset[str] = frozenset()  # never orphans (Ephem's own state database)


__all__ = ["DataServer", "Orphan", "OrphanFinder"]


class OrphanFinder:
    """Implements `bot.ports.OrphanFinding` (the scheduler's reconciliation uses it)."""

    def __init__(self, *, store: Store, terraform: TerraformProvider | None = None,
                 namespace: NamespaceProvider | None = None,
                 data: DataServer | None = None) -> None:
        self.store = store
        self.terraform = terraform
        self.namespace = namespace
        self.data = data

    async def find(self) -> list[Orphan]:
        """Every object with Ephem's marks that no live environment owns."""
        async with self.store.transaction() as s:
            live = await repo.live_environments(s)
        ids = {env.id for env in live}
        found: list[Orphan] = []
        if self.terraform is not None:
            for ws in await self.terraform.workspaces():
                m = WORKSPACE.match(ws)
                if m and int(m.group("id")) not in ids:
                    found.append(Orphan("terraform workspace", ws, int(m.group("id")),
                                        m.group("name")))
        if self.namespace is not None:
            for ns, env_id in await self.namespace.managed():
                if env_id is None or env_id not in ids:
                    found.append(Orphan("namespace", ns, env_id))
        if self.data is not None:
            dbs, roles = await data_orphans.unowned(
                self.data.admin_url, prefix=self.data.prefix, live_names={e.name for e in live},
                keep=self.data.keep)
            found += [Orphan("database", d) for d in dbs]
            found += [Orphan("role", r) for r in roles]
        return found

    async def remove(self, orphan: Orphan) -> str:
        """Destroy one orphan; one line saying what was done."""
        if orphan.kind == "terraform workspace":
            assert self.terraform is not None and orphan.env_id is not None
            await self.terraform.destroy_target(await self._target(orphan))
        elif orphan.kind == "namespace":
            assert self.namespace is not None

            async def quiet(_: str) -> None:
                return None

            await self.namespace.delete(orphan.name, quiet)
        elif orphan.kind == "database":
            assert self.data is not None
            await data_orphans.drop_database(self.data.admin_url, orphan.name)
        elif orphan.kind == "role":
            assert self.data is not None
            await data_orphans.drop_role(self.data.admin_url, orphan.name)
        else:
            raise ValueError(f"unknown orphan kind {orphan.kind}")
        return f"destroyed {orphan.line()}"

    async def _target(self, orphan: Orphan) -> Target:
        """The workspace's environment as the store remembers it (variables may need its
        owner, expiry and releases); its name alone when the store has forgotten it."""
        assert orphan.env_id is not None
        async with self.store.transaction() as s:
            try:
                env = await repo.get_environment(s, orphan.env_id)
            except NoResultFound:
                env = None
        if env is None or env.name != orphan.env_name:
            return Target(orphan.env_id, orphan.env_name or "", lenient=True)
        return Target(env.id, env.name, env.owner_id, env.expires_at, dict(env.release_set),
                      lenient=True)
