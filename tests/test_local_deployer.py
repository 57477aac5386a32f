"""The `local` deployer with real processes: started on free ports, health-checked, linked;
a crash reported with its exit code and log; adopted by a bot that restarted; stopped by
destroy and by the orphan finder, leaving nothing running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot import detached
from bot.config import Blueprint, LocalDeployerConfig, example_blueprint_path, parse_blueprint
from bot.domain import DataMode, DataRequest, PhaseName, ReleaseSet
from bot.errors import PermanentError
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.base import PhaseContext
from pipelines.code.local import LocalDeployer
from pipelines.code.phase import CodePhase
from pipelines.code.plan import ComponentFailed

EXAMPLES = example_blueprint_path().parent
SHOP = {"api": {"command": ["{python}", "components/shop.py", "api", "customers"]},
        "web": {"command": ["{python}", "components/shop.py", "web", "products"]},
        "worker": {"command": ["{python}", "components/shop.py", "worker", "orders"],
                   "expose": False}}
# A component that fails in the ways the tests need, picked by its first argument.
FLAKY = """
import os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
mode = sys.argv[1]
print("starting", mode, "version", os.environ["VERSION"], flush=True)
if mode == "crash":
    print("boom: cannot read config", os.environ.get("DATABASE_URL", ""), flush=True)
    sys.exit(3)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if mode == "sick" else 200); self.end_headers()
        self.wfile.write(b"hello")
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def blueprint_raw(components: dict[str, Any], **local: Any) -> dict[str, Any]:
    return {"phases": {"code": {"local": {"components": components, "workdir": str(EXAMPLES),
                                          **local}}}}


def deployer(state: Path, components: dict[str, Any], **local: Any) -> LocalDeployer:
    cfg = parse_blueprint(blueprint_raw(components, **local)).phases.code
    assert cfg is not None and cfg.local is not None
    return LocalDeployer(cfg.local, state_dir=state, stop_grace=2.0)


def ctx(env_id: int, name: str, versions: dict[str, str], said: list[str] | None = None, *,
        secrets: dict[PhaseName, dict[str, str]] | None = None) -> PhaseContext:
    async def emit(detail: str) -> None:
        if said is not None:
            said.append(detail)

    return PhaseContext(env_id=env_id, name=name, owner_id="U1",
                        release_set=ReleaseSet(versions), data=DataRequest(DataMode.NONE),
                        blueprint=Blueprint(), outputs={}, emit=emit,
                        secrets=secrets or {})


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.json()


def pids_in(directory: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in directory.glob("*.json")}


@pytest.fixture
async def shop_db(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    """A database the components count rows in: 2 customers, 3 products, no orders."""
    name = f"{db_prefix}code_local"
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
        await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await admin.close()
    url = with_database(pg_admin_url, name)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("CREATE TABLE customers (id int); INSERT INTO customers VALUES (1), (2);"
                           "CREATE TABLE products (id int); INSERT INTO products VALUES (1), (2),"
                           " (3); CREATE TABLE orders (id int)")
    finally:
        await conn.close()
    yield url


async def test_components_start_answer_and_are_linked(tmp_path: Path, shop_db: str) -> None:
    said: list[str] = []
    phase = CodePhase(deployer(tmp_path, SHOP))
    context = ctx(11, "pr-11", {"api": "2.8.0-rc1", "web": "5.1.0", "worker": "2.7.3"}, said,
                  secrets={PhaseName.DATA: {"database_url": shop_db}})
    result = await phase.apply(context)
    assert set(result.links) == {"api", "web"}  # the worker is not exposed
    api = await get_json(result.links["api"])
    web = await get_json(result.links["web"])
    assert api == {"component": "api", "version": "2.8.0-rc1", "table": "customers", "rows": 2}
    assert (web["component"], web["version"], web["rows"]) == ("web", "5.1.0", 3)
    assert "3/3 components ready" in said
    assert result.summary == "3 components ready (local): api=2.8.0-rc1, web=5.1.0, worker=2.7.3"
    assert result.outputs["links"] == result.links
    assert result.outputs["components"]["worker"]["version"] == "2.7.3"
    pids = pids_in(tmp_path / "local" / "11-pr-11")
    assert set(pids) == {"api", "web", "worker"}
    await phase.destroy(context)
    assert not any(detached.group_alive(pid) for pid in pids.values())
    assert not (tmp_path / "local" / "11-pr-11").exists()
    await phase.destroy(context)  # twice is fine


async def test_a_crash_is_reported_with_exit_code_and_log(tmp_path: Path) -> None:
    url = "postgresql://app:pa55word-of-the-env@db:5432/app"
    components = {"api": {"command": [sys.executable, "-c", FLAKY, "crash"]},
                  "web": {"command": [sys.executable, "-c", FLAKY, "fine"]}}
    d = deployer(tmp_path, components)
    context = ctx(12, "pr-12", {"api": "1.0", "web": "1.0"},
                  secrets={PhaseName.DATA: {"database_url": url}})
    with pytest.raises(ComponentFailed) as err:
        await CodePhase(d).apply(context)
    assert err.value.reason == "api: exited with code 3 while starting"
    assert err.value.details is not None
    assert "boom: cannot read config" in err.value.details
    assert "pa55word-of-the-env" not in err.value.details  # the connection's password, scrubbed
    await d.remove(context)


async def test_a_component_that_never_gets_healthy(tmp_path: Path) -> None:
    d = deployer(tmp_path, {"api": {"command": [sys.executable, "-c", FLAKY, "sick"]}},
                 start_timeout="1s")
    context = ctx(13, "pr-13", {"api": "1.0"})
    with pytest.raises(ComponentFailed) as err:
        await d.deploy(context, database_url=None)
    assert "api: did not answer /healthz" in err.value.reason
    assert "(last: HTTP 500)" in err.value.reason
    assert "starting sick version 1.0" in (err.value.details or "")
    pids = pids_in(d.directory(context))
    await d.remove(context)
    assert not detached.group_alive(pids["api"])


async def test_a_set_naming_an_unknown_component_is_refused(tmp_path: Path) -> None:
    d = deployer(tmp_path, {"api": {"command": ["true"]}})
    with pytest.raises(PermanentError) as err:
        await d.deploy(ctx(14, "pr-14", {"api": "1", "search": "2"}), database_url=None)
    assert err.value.reason == ("search is in the release set, but "
                                "phases.code.local.components has nothing to deploy for it")


async def test_reapply_keeps_what_runs_and_replaces_a_changed_version(tmp_path: Path) -> None:
    components = {"api": {"command": [sys.executable, "-c", FLAKY, "fine"]},
                  "web": {"command": [sys.executable, "-c", FLAKY, "fine"]}}
    d = deployer(tmp_path, components)
    first = ctx(15, "pr-15", {"api": "1.0", "web": "1.0"})
    await d.deploy(first, database_url=None)
    before = pids_in(d.directory(first))
    await d.deploy(first, database_url=None)  # idempotent: nothing restarted
    assert pids_in(d.directory(first)) == before
    said: list[str] = []
    await d.deploy(ctx(15, "pr-15", {"api": "1.1", "web": "1.0"}, said), database_url=None)
    after = pids_in(d.directory(first))
    assert after["web"] == before["web"] and after["api"] != before["api"]
    assert not detached.group_alive(before["api"])
    assert "api: replacing 1.0 with 1.1" in said
    # One dies behind Ephem's back: the next apply says so and starts it again.
    os.kill(after["web"], signal.SIGKILL)
    await asyncio.sleep(0.2)
    said.clear()
    await d.deploy(ctx(15, "pr-15", {"api": "1.1", "web": "1.0"}, said), database_url=None)
    assert "web is no longer running; starting it again" in said
    assert pids_in(d.directory(first))["web"] != after["web"]
    await d.remove(first)


async def test_components_outlive_the_bot_and_are_adopted(tmp_path: Path) -> None:
    components = {"api": {"command": [sys.executable, "-c", FLAKY, "fine"]}}
    raw = blueprint_raw(components)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("local_child.py")), str(tmp_path),
        json.dumps(raw), "16", "pr-16", json.dumps({"api": "1.0"}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == 0, err.decode()
    started = json.loads(out)
    assert detached.group_alive(started["api"])  # the bot that started it has exited
    d = deployer(tmp_path, components)
    said: list[str] = []
    context = ctx(16, "pr-16", {"api": "1.0"}, said)
    deployed = await d.deploy(context, database_url=None)
    assert deployed[0].facts["pid"] == started["api"]  # adopted, not started again
    async with aiohttp.ClientSession() as session, session.get(deployed[0].link or "") as r:
        assert await r.text() == "hello"
    await d.remove(context)
    assert not detached.group_alive(started["api"])


async def test_orphans_are_found_and_stopped(tmp_path: Path) -> None:
    components = {"api": {"command": [sys.executable, "-c", FLAKY, "fine"]}}
    d = deployer(tmp_path, components)
    await d.deploy(ctx(17, "pr-17", {"api": "1.0"}), database_url=None)
    await d.deploy(ctx(18, "pr-18", {"api": "1.0"}), database_url=None)
    orphans = d.orphans({18})
    assert [(o.env_id, o.env_name, len(o.pids)) for o in orphans] == [(17, "pr-17", 1)]
    assert await d.remove_orphan(orphans[0]) == ["api"]
    assert not detached.group_alive(orphans[0].pids[0])
    assert d.orphans({18}) == []
    # The orphan finder needs only the state directory and the live ids.
    from pipelines.code.local import find_orphans, stop_orphan

    [other] = find_orphans(tmp_path, set())
    assert (other.env_id, other.env_name, len(other.pids)) == (18, "pr-18", 1)
    assert await stop_orphan(other, grace=2) == ["api"]
    assert not detached.group_alive(other.pids[0])
    assert find_orphans(tmp_path, set()) == []


def test_the_example_blueprint_deploys_its_components_locally() -> None:
    from bot.config import load_blueprint

    code = load_blueprint(None).phases.code
    assert code is not None and code.deployer == "local" and code.local is not None
    assert isinstance(code.local, LocalDeployerConfig)
    assert set(code.local.components) == {"api", "web", "worker"}
    for spec in code.local.components.values():
        assert (code.local.workdir / spec.command[1]).is_file()
