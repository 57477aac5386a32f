"""The Terraform provider with the real binary and the pg backend on the test PostgreSQL:
apply, outputs, re-apply, destroy (twice), failures and retries, parallel environments,
cancellation, a lock held elsewhere, and a bot killed mid-apply."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.config import Blueprint, TerraformBackend, TerraformConfig, TerraformOutputs
from bot.domain import DataMode, DataRequest, ReleaseSet
from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident
from bot.redaction import scrub
from pipelines.base import PhaseContext
from pipelines.infra.terraform import TerraformProvider, find_binary, workspace_name

pytestmark = pytest.mark.skipif(find_binary(None) is None,
                                reason="no terraform or tofu binary on PATH")

MODULE = """
variable "env_name" { type = string }
variable "delay" {
  type    = number
  default = 0
}
variable "fail_marker" {
  type    = string
  default = "/nonexistent"
}
resource "terraform_data" "first" {
  input = "first-${var.env_name}"
}
resource "terraform_data" "slow" {
  input = terraform_data.first.output
  provisioner "local-exec" { command = "sleep ${var.delay}" }
}
resource "terraform_data" "fragile" {
  input = terraform_data.slow.output
  provisioner "local-exec" { command = "test ! -e ${var.fail_marker}" }
}
resource "terraform_data" "last" {
  input = terraform_data.fragile.output
}
output "domain" { value = "${var.env_name}.test.example" }
output "token" {
  value     = "tok-${terraform_data.first.id}"
  sensitive = true
}
output "hidden" {
  value     = "never-shown"
  sensitive = true
}
"""


@dataclass
class Env:
    env_id: int
    name: str
    said: list[str] = field(default_factory=list)

    def ctx(self) -> PhaseContext:
        async def emit(text: str) -> None:
            self.said.append(text)

        return PhaseContext(env_id=self.env_id, name=self.name, owner_id="U_OWNER",
                            release_set=ReleaseSet({"api": "1.0"}),
                            data=DataRequest(DataMode.NONE), blueprint=Blueprint(), outputs={},
                            emit=emit, expires_at=datetime(2030, 1, 1, tzinfo=UTC))


@dataclass
class Setup:
    state_url: str
    schema: str
    module: Path
    workdir: Path
    marker: Path

    def provider(self, *, delay: float = 0, lock_wait: float = 1.0,
                 conn_str: str | None = None) -> TerraformProvider:
        config = TerraformConfig(
            module=self.module, workdir=self.workdir,
            backend=TerraformBackend(schema_name=self.schema, conn_str=conn_str),
            variables={"env_name": "{env.name}", "delay": delay,
                       "fail_marker": str(self.marker)},
            outputs=TerraformOutputs(secret=["token"]),
            timeout=timedelta(minutes=2), parallelism=4,
            lock_wait=timedelta(seconds=lock_wait))
        return TerraformProvider(config, state_url=self.state_url, quiet_lock=0)


@pytest.fixture
async def tf(bot_db_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    module = tmp_path / "module"
    module.mkdir()
    (module / "main.tf").write_text(MODULE)
    schema = f"tf_{uuid.uuid4().hex[:8]}"
    yield Setup(bot_db_url, schema, module, tmp_path / "work", tmp_path / "fail-now")
    conn = await asyncpg.connect(asyncpg_dsn(bot_db_url))
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


async def state_of(setup: Setup, workspace: str) -> dict[str, Any] | None:
    conn = await asyncpg.connect(asyncpg_dsn(setup.state_url))
    try:
        data = await conn.fetchval(
            f"SELECT data FROM {quote_ident(setup.schema)}.states WHERE name = $1", workspace)
    finally:
        await conn.close()
    return json.loads(data) if data else None


def addresses(state: dict[str, Any] | None) -> list[str]:
    return sorted(f"{r['type']}.{r['name']}" for r in (state or {}).get("resources", []))


async def test_apply_outputs_reapply_destroy_and_destroy_again(tf: Setup) -> None:
    provider = tf.provider()
    env = Env(101, "pr-1")
    public, secret, summary = await provider.apply(env.ctx())
    assert public == {"domain": "pr-1.test.example"}  # sensitive outputs are not persisted
    assert secret["token"].startswith("tok-")  # a secret output, for the owner only
    assert "4 added" in summary
    assert any(s.startswith("applying") for s in env.said)
    ws = workspace_name(101, "pr-1")
    assert ws in await provider.workspaces()
    assert addresses(await state_of(tf, ws)) == [
        "terraform_data.first", "terraform_data.fragile", "terraform_data.last",
        "terraform_data.slow"]
    workdir = tf.workdir / "pr-1-101"
    assert not list(workdir.glob("*.tfstate"))  # state lives in PostgreSQL only
    assert await provider.secrets(env.ctx()) == secret  # said again, from the state

    _, _, again = await provider.apply(env.ctx())
    assert "0 added, 0 changed, 0 destroyed" in again

    await provider.destroy(env.ctx())
    assert ws not in await provider.workspaces()
    assert not workdir.exists()
    await provider.destroy(env.ctx())  # already gone: fine
    assert f"workspace {ws} is already gone" in env.said


async def test_failing_halfway_then_retry_converges_and_destroy_cleans_up(tf: Setup) -> None:
    # A password in the backend's URL (trust authentication ignores it) is never shown.
    password = "pg-secret-4711"
    provider = tf.provider(conn_str=tf.state_url.replace("postgres@", f"postgres:{password}@"))
    tf.marker.touch()
    broken = Env(102, "half")
    with pytest.raises(PermanentError) as failed:
        await provider.apply(broken.ctx())
    assert "terraform_data.fragile" in failed.value.reason
    assert failed.value.details and "error:" in failed.value.details
    assert "local-exec provisioner error" in failed.value.details
    seen = " ".join([failed.value.reason, failed.value.details, *broken.said])
    assert password not in seen and password not in scrub(f"PG_CONN_STR={provider._conn_str}")
    state = await state_of(tf, workspace_name(102, "half"))
    assert addresses(state) == ["terraform_data.first", "terraform_data.fragile",
                                "terraform_data.slow"]
    tainted = [r["name"] for r in state["resources"]  # type: ignore[index]
               if r["instances"][0].get("status") == "tainted"]
    assert tainted == ["fragile"]  # its provisioner failed: made, and to be replaced
    await provider.destroy(broken.ctx())  # removes what the half-finished apply made
    assert workspace_name(102, "half") not in await provider.workspaces()

    retried = Env(103, "retry")
    with pytest.raises(PermanentError):
        await provider.apply(retried.ctx())
    tf.marker.unlink()
    _, _, summary = await provider.apply(retried.ctx())
    assert "2 added" in summary  # the tainted one replaced, and the one after it
    assert len(addresses(await state_of(tf, workspace_name(103, "retry")))) == 4
    await provider.destroy(retried.ctx())


async def test_two_environments_apply_in_parallel(tf: Setup) -> None:
    provider = tf.provider(delay=0.3)
    envs = [Env(104, "left"), Env(105, "right")]
    results = await asyncio.gather(*(provider.apply(e.ctx()) for e in envs))
    assert [r[0]["domain"] for r in results] == ["left.test.example", "right.test.example"]
    assert {workspace_name(104, "left"), workspace_name(105, "right")} <= set(
        await provider.workspaces())
    await asyncio.gather(*(provider.destroy(e.ctx()) for e in envs))
    assert await provider.workspaces() == ["default"] or not await provider.workspaces()


async def test_cancellation_interrupts_and_leaves_the_state_unlocked(tf: Setup) -> None:
    slow = tf.provider(delay=60)
    env = Env(106, "cancel")
    task = asyncio.ensure_future(slow.apply(env.ctx()))
    for _ in range(300):
        if any("terraform_data.slow" in s for s in env.said):
            break
        await asyncio.sleep(0.1)
    else:
        task.cancel()
        raise AssertionError(f"the slow resource never started: {env.said}")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ws = workspace_name(106, "cancel")
    assert await slow.lock_holder(ws) is None  # SIGINT: Terraform released its lock
    assert "terraform_data.first" in addresses(await state_of(tf, ws))  # and saved its state
    quick = tf.provider(delay=0, lock_wait=0)
    _, _, summary = await quick.apply(env.ctx())
    assert not any("locked by" in s for s in env.said)
    assert "Apply complete" in summary
    await quick.destroy(env.ctx())


async def test_a_lock_held_elsewhere_is_temporary_and_names_the_holder(tf: Setup) -> None:
    provider = tf.provider()
    env = Env(107, "locked")
    await provider.apply(env.ctx())
    ws = workspace_name(107, "locked")
    conn = await asyncpg.connect(asyncpg_dsn(tf.state_url),
                                 server_settings={"application_name": "alice-laptop"})
    try:
        state_id = await conn.fetchval(
            f"SELECT id FROM {quote_ident(tf.schema)}.states WHERE name = $1", ws)
        await conn.execute("SELECT pg_advisory_lock($1)", state_id)
        with pytest.raises(TemporaryError) as locked:
            await provider.apply(env.ctx())
        assert "alice-laptop" in locked.value.reason
        assert any("locked by alice-laptop" in s and "waiting" in s for s in env.said)
        await conn.execute("SELECT pg_advisory_unlock($1)", state_id)
    finally:
        await conn.close()
    _, _, summary = await provider.apply(env.ctx())
    assert "0 added" in summary
    await provider.destroy(env.ctx())


async def test_bot_killed_mid_apply_then_another_process_converges(tf: Setup) -> None:
    spec = {"state_url": tf.state_url, "schema": tf.schema, "module": str(tf.module),
            "workdir": str(tf.workdir / "killed-bot"), "env_id": 108, "name": "killed",
            "variables": {"env_name": "{env.name}", "delay": 3}}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.terraform_child", json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        assert child.stdout is not None
        async with asyncio.timeout(60):
            while line := (await child.stdout.readline()).decode():
                if "terraform_data.slow" in line:
                    break
        os.kill(child.pid, signal.SIGKILL)  # the bot only; its terraform runs on
        await asyncio.wait_for(child.wait(), timeout=10)
    finally:
        if child.returncode is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    provider = tf.provider(delay=0, lock_wait=60)
    env = Env(108, "killed")
    held = await provider.lock_holder(workspace_name(108, "killed"))
    public, _, _ = await provider.apply(env.ctx())  # waits for the lock if held, converges
    assert public["domain"] == "killed.test.example"
    waited = [s for s in env.said if "locked by" in s]
    # The killed bot's terraform may still hold the lock when this process reaches it (it then
    # waits and says whose lock it is), or may have ended meanwhile: its supervisor stops it
    # once the bot is gone, and held above is only what the lock was a moment earlier.
    if waited:
        assert held is not None and "locked by ephem:" in waited[0] and "waiting" in waited[0]
    state = await state_of(tf, workspace_name(108, "killed"))
    assert len(addresses(state)) == 4  # every resource exactly once
    _, _, again = await provider.apply(env.ctx())
    assert "0 added, 0 changed, 0 destroyed" in again
    await provider.destroy(env.ctx())


async def test_providers_come_only_from_the_mirror(tf: Setup, tmp_path: Path) -> None:
    module = tmp_path / "needs-null"
    module.mkdir()
    (module / "main.tf").write_text(
        'terraform {\n  required_providers {\n    null = { source = "hashicorp/null" }\n  }\n}\n'
        'resource "null_resource" "x" {}\n')
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    config = TerraformConfig(module=module, workdir=tmp_path / "w",
                             backend=TerraformBackend(schema_name=tf.schema),
                             provider_mirror=mirror, timeout=timedelta(minutes=1))
    with pytest.raises(PermanentError) as refused:
        await TerraformProvider(config, state_url=tf.state_url).apply(Env(109, "mirror").ctx())
    assert refused.value.reason == "terraform init failed"
    assert refused.value.details is not None
    assert "hashicorp/null" in refused.value.details and str(mirror) in refused.value.details
    assert "provider_mirror" in refused.value.details  # what to do about it


def test_each_installation_has_its_own_working_directories(tmp_path: Path) -> None:
    """Two Ephems on one machine (other state databases, or schemas) never share a working
    directory, and the password is not what tells them apart."""
    def root(url: str, schema: str = "ephem_tf") -> Path:
        config = TerraformConfig(module=tmp_path, backend=TerraformBackend(schema_name=schema))
        return TerraformProvider(config, state_url=url).root

    one = root("postgresql://ephem:pw1@db:5432/ephem")
    assert one == root("postgresql://ephem:pw2@db:5432/ephem")  # the same installation
    assert one != root("postgresql://ephem:pw1@db:5432/other")
    assert one != root("postgresql://ephem:pw1@db:5432/ephem", schema="tf_two")
    assert one.parent.name == "ephem-terraform"
