"""The infra phase as the runner runs it: Terraform and a namespace composed, their outputs handed
to the next phases, the data phase's server taken from an infra output, secrets to the owner,
destroy in reverse; and the blueprint section's validation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from bot.cli.app import ServerFromInfra
from bot.config import (
    KubernetesConfig,
    TerraformBackend,
    TerraformConfig,
    TerraformOutputs,
    parse_blueprint,
)
from bot.domain import EnvStatus, JobKind, PhaseName
from bot.errors import ConfigError
from bot.pg import asyncpg_dsn, quote_ident
from bot.ports import OutcomeKind, RecordedEvents
from bot.store import Store, repo
from pipelines.data.postgres import DatabasePhase
from pipelines.infra.namespace import NamespaceProvider
from pipelines.infra.phase import InfraPhase
from pipelines.infra.terraform import TerraformProvider, find_binary, workspace_name
from pipelines.runner import Runner
from tests.kube import Cluster, kube_fixture  # noqa: F401
from tests.phases import ScriptedPhase, blueprint, make_env, new_job

MODULE = """
variable "env_name" { type = string }
variable "server" { type = string }
variable "api" { type = string }
resource "terraform_data" "db" { input = var.env_name }
output "db_url" { value = var.server }
output "api_version" { value = var.api }
output "token" {
  value     = "token-${terraform_data.db.id}"
  sensitive = true
}
"""


@pytest.fixture
async def schema(bot_db_url: str) -> AsyncIterator[str]:
    name = f"tf_{uuid.uuid4().hex[:8]}"
    yield name
    conn = await asyncpg.connect(asyncpg_dsn(bot_db_url))
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        await conn.close()


@pytest.mark.skipif(find_binary(None) is None, reason="no terraform or tofu binary on PATH")
async def test_create_and_destroy_through_the_runner(
    store: Store, kube: Cluster, bot_db_url: str, pg_admin_url: str, db_prefix: str,
    schema: str, tmp_path: Path,
) -> None:
    module = tmp_path / "module"
    module.mkdir()
    (module / "main.tf").write_text(MODULE)
    terraform = TerraformProvider(TerraformConfig(
        module=module, workdir=tmp_path / "work", backend=TerraformBackend(schema_name=schema),
        variables={"env_name": "{env.name}", "server": pg_admin_url, "api": "{release.api}"},
        outputs=TerraformOutputs(show=["api_version"], secret=["token"]),
        timeout=timedelta(minutes=2)), state_url=bot_db_url)
    namespace = NamespaceProvider(KubernetesConfig(kubeconfig=kube.kubeconfig,
                                                   context=kube.context))
    infra = InfraPhase(terraform=terraform, namespace=namespace)

    def make(url: str) -> DatabasePhase:
        return DatabasePhase(admin_url=url, prefix=db_prefix)

    data = ServerFromInfra(output="db_url", infra=infra, make=make)
    calls: list[str] = []
    code = ScriptedPhase(PhaseName.CODE, calls)
    events = RecordedEvents()
    runner = Runner(store=store, phases={p.name: p for p in (infra, data, code)},
                    blueprint=blueprint(timeout=120), events=events, secret_key=b"k")

    env_id = await make_env(store, "pr-7")
    outcome = await runner(await new_job(store, env_id))
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome
    handed = code.seen[0].outputs[PhaseName.INFRA]
    assert handed["namespace"] == "ephem-pr-7" and handed["api_version"] == "1.0"
    assert "token" not in handed  # sensitive: never persisted
    assert code.seen[0].outputs[PhaseName.DATA]["database"] == f"{db_prefix}pr_7"
    texts = [e.detail for e in events.progress_events]
    assert any(t.startswith("applying") for t in texts)  # Terraform's progress on the card
    # Shown outputs, in the thread, under the phase's summary.
    assert any(t.endswith("\napi_version: 1.0\nnamespace: ephem-pr-7") for t in texts), texts
    # The secret output is for the owner only: the runner says it is ready, the notifier
    # derives it again when it sends it (below, as the notifier would).
    assert (env_id, PhaseName.INFRA) in events.credentials
    # (ScriptedPhase's `secrets` attribute would pass for HasSecrets: leave it out here.)
    said = await Runner(store=store, phases={p.name: p for p in (infra, data)},
                        blueprint=blueprint(), events=events, secret_key=b"k").credentials(env_id)
    assert said["infra"]["token"].startswith("token-")
    assert said["data"]["database_url"].startswith("postgresql://")
    assert kube.get("v1/namespaces", None, "ephem-pr-7") is not None

    async with store.transaction() as s:
        env = await repo.get_environment(s, env_id, for_update=True)
        await repo.set_status(s, env, EnvStatus.READY)
    outcome = await runner(await new_job(store, env_id, JobKind.DESTROY))
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome
    assert calls == ["code.apply", "code.destroy"]
    assert kube.get("v1/namespaces", None, "ephem-pr-7") is None
    assert workspace_name(env_id, "pr-7") not in await terraform.workspaces()
    namespace.close()


@pytest.mark.parametrize(("raw", "expected"), [
    ({"infra": {}}, "phases.infra: configure `terraform`, `kubernetes` or both"),
    ({"infra": {"terraform": {"module": "missing"}}},
     "phases.infra.terraform.module: module directory"),
    ({"infra": {"terraform": {"module": ".", "variables": {"a": "{env.nme}"}}}},
     "phases.infra.terraform.variables.a: unknown placeholder `{env.nme}`"),
    ({"infra": {"terraform": {"module": ".", "backend": {"conn_str": "mysql://x"}}}},
     "phases.infra.terraform.backend.conn_str: expected a postgresql:// URL"),
    ({"infra": {"kubernetes": {"namespace": "Team-{name}"}}},
     "phases.infra.kubernetes.namespace: the namespace pattern must make DNS labels"),
    ({"infra": {"kubernetes": {"in_cluster": True, "context": "x"}}},
     "phases.infra.kubernetes: `in_cluster` takes no `kubeconfig` or `context`"),
    ({"data": {"server": "{infra.db_url}"}},
     "phases.data.server is `{infra.db_url}` but `phases.infra` is not configured"),
])
def test_blueprint_errors_name_the_key_path(raw: dict[str, object], expected: str,
                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_blueprint({"phases": raw}, source="ephem.yaml", base_dir=tmp_path)
    assert expected in str(bad.value)


def test_a_valid_infra_section(tmp_path: Path) -> None:
    bp = parse_blueprint({"phases": {
        "infra": {"terraform": {"module": ".", "variables": {"n": 3, "who": "{env.owner}"}},
                  "kubernetes": {"quota": {"pods": "10"}}},
        "data": {"server": "{infra.db_url}"}}}, base_dir=tmp_path)
    assert bp.phases.infra is not None and bp.phases.infra.terraform is not None
    assert bp.phases.infra.terraform.module == tmp_path
    assert bp.phases.infra.terraform.variables == {"n": 3, "who": "{env.owner}"}
    assert bp.phases.infra.kubernetes is not None
    assert bp.phases.infra.kubernetes.namespace == "ephem-{name}"
