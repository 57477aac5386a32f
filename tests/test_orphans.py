"""Orphans: what carries Ephem's marks with no live environment — a Terraform workspace, a
namespace, a database and a role — listed and fixed by `ephem doctor --orphans [--fix]`, the
real CLI against the test PostgreSQL, the real terraform binary and the emulated cluster."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml

from bot.config import Blueprint, KubernetesConfig, TerraformBackend, TerraformConfig
from bot.domain import DataMode, DataRequest, EnvStatus, ReleaseSet
from bot.pg import asyncpg_dsn, quote_ident
from bot.store import Store, repo
from pipelines.base import PhaseContext
from pipelines.infra.namespace import NamespaceProvider
from pipelines.infra.orphans import DataServer, OrphanFinder
from pipelines.infra.terraform import TerraformProvider, find_binary, workspace_name
from tests.kube import Cluster, kube_fixture  # noqa: F401
from tests.phases import make_env

pytestmark = pytest.mark.skipif(find_binary(None) is None,
                                reason="no terraform or tofu binary on PATH")

MODULE = 'variable "env_name" { type = string }\n' \
         'resource "terraform_data" "thing" { input = var.env_name }\n'


def ctx(env_id: int, name: str) -> PhaseContext:
    async def emit(_: str) -> None:
        return None

    return PhaseContext(env_id=env_id, name=name, owner_id="U1", release_set=ReleaseSet({}),
                        data=DataRequest(DataMode.NONE), blueprint=Blueprint(), outputs={},
                        emit=emit)


@pytest.fixture
async def schema(bot_db_url: str) -> AsyncIterator[str]:
    name = f"tf_{uuid.uuid4().hex[:8]}"
    yield name
    conn = await asyncpg.connect(asyncpg_dsn(bot_db_url))
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        await conn.close()


async def admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def doctor(args: list[str], blueprint: Path, bot_db_url: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    env |= {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "doctor", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode is not None
    return child.returncode, out.decode()


async def test_orphans_are_listed_then_fixed_one_line_each(
    store: Store, kube: Cluster, bot_db_url: str, pg_admin_url: str, db_prefix: str,
    schema: str, tmp_path: Path,
) -> None:
    db_prefix = f"{db_prefix}o{uuid.uuid4().hex[:4]}_"  # other tests' leftovers are not ours
    module = tmp_path / "module"
    module.mkdir()
    (module / "main.tf").write_text(MODULE)
    tf_config = TerraformConfig(module=module, workdir=tmp_path / "work",
                                backend=TerraformBackend(schema_name=schema),
                                variables={"env_name": "{env.name}"},
                                timeout=timedelta(minutes=2))
    terraform = TerraformProvider(tf_config, state_url=bot_db_url)
    k8s = KubernetesConfig(kubeconfig=kube.kubeconfig, context=kube.context, quota={"pods": "5"})
    namespaces = NamespaceProvider(k8s)

    live = await make_env(store, "alive")
    gone = await make_env(store, "gone")
    async with store.transaction() as s:
        env = await repo.get_environment(s, gone, for_update=True)
        for status in (EnvStatus.DESTROYING, EnvStatus.DESTROYED):
            await repo.set_status(s, env, status)
    for env_id, name in ((live, "alive"), (gone, "gone")):
        await terraform.apply(ctx(env_id, name))
        await namespaces.apply(ctx(env_id, name))
    ghost, alive_db = f"{db_prefix}ghost", f"{db_prefix}alive"
    await admin(pg_admin_url, f"CREATE ROLE {quote_ident(ghost)}",
                f"CREATE DATABASE {quote_ident(ghost)}", f"CREATE ROLE {quote_ident(alive_db)}",
                f"CREATE DATABASE {quote_ident(alive_db)}",
                f"CREATE DATABASE {quote_ident(db_prefix + 'snap_shop_1')}")

    blueprint = tmp_path / "ephem.yaml"
    blueprint.write_text(yaml.safe_dump({"phases": {
        "infra": {"terraform": {"module": str(module), "workdir": str(tmp_path / "work"),
                                "backend": {"schema_name": schema},
                                "variables": {"env_name": "{env.name}"}},
                  "kubernetes": {"kubeconfig": str(kube.kubeconfig), "context": kube.context}},
        "data": {"server": pg_admin_url, "database_prefix": db_prefix}}}))
    code, listed = await doctor(["--orphans"], blueprint, bot_db_url)
    assert code == 1, listed
    lines = sorted(line for line in listed.splitlines() if line.startswith("orphan"))
    assert lines == sorted([
        f"orphan  terraform workspace {workspace_name(gone, 'gone')} "
        f"(environment {gone}, not live)",
        f"orphan  namespace ephem-gone (environment {gone}, not live)",
        f"orphan  database {ghost}",
        f"orphan  role {ghost}",
    ]), listed

    code, fixed = await doctor(["--orphans", "--fix"], blueprint, bot_db_url)
    assert code == 0, fixed
    assert len([line for line in fixed.splitlines() if line.startswith("fixed   destroyed")]) == 4

    finder = OrphanFinder(store=store, terraform=terraform, namespace=namespaces,
                          data=DataServer(pg_admin_url, db_prefix))
    assert await finder.find() == []
    assert workspace_name(live, "alive") in await terraform.workspaces()
    assert kube.get("v1/namespaces", None, "ephem-alive") is not None
    assert kube.get("v1/namespaces", None, "ephem-gone") is None
    await terraform.destroy(ctx(live, "alive"))
    namespaces.close()
