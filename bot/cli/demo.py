"""`ephem demo`: one environment created and destroyed end to end, on the embedded defaults.

What a newcomer sees first, so it shows the real thing: the same handlers, executor, runner and
phases as `ephem serve`, with the Slack thread rendered in the terminal. With the example
blueprint it also tells the data story: a stand-in production database made with Faker, the
default-deny lint, a masked snapshot built and its warm pool filled, the environment created
from it (`--data snapshot`), a few production rows beside their masked copies, and
`reset-data`. It checks its own result — the delivered credentials open the environment's
database, and after destroy the database is gone — and exits non-zero if anything did not
happen.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from pydantic import SecretStr
from sqlalchemy import select

from bot import detached
from bot.cli import snapshot as snapshot_cli
from bot.cli.app import Ephem, build
from bot.cli.bootstrap import state_database
from bot.cli.sample_data import make_production
from bot.config import Blueprint, Settings, load_blueprint
from bot.domain import EnvStatus, JobStatus, PhaseName
from bot.errors import PhaseError
from bot.pg import asyncpg_dsn, quote_ident, redact
from bot.ports import Invocation
from bot.slack.writer import ConsoleWriter
from bot.store import repo
from bot.store.models import Job
from pipelines.data import golden
from pipelines.data.clone import WarmPool
from pipelines.data.detect import lint
from pipelines.data.rules import load_rules
from pipelines.infra.terraform import TerraformProvider, find_binary, workspace_name

USER, CHANNEL = "U_DEMO", "C_DEMO"
_URL = re.compile(r"postgres(?:ql)?://\S+?(?=[\s`>|]|$)")


class Transcript:
    """Prints what the console writer renders and remembers it (to find the credentials)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)

    def urls(self) -> list[str]:
        return [m.group(0) for line in self.lines for m in _URL.finditer(line)]


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


async def wait_for(app: Ephem, name: str, statuses: Iterable[EnvStatus], *,
                   timeout: float = 180.0) -> EnvStatus:
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    env_id: int | None = None
    while time.monotonic() < deadline:
        async with app.store.transaction() as s:
            if env_id is None:
                env = await repo.find_live_environment(s, name)
                env_id = env.id if env else None
            else:
                env = await repo.get_environment(s, env_id)
            if env is not None and env.status in wanted:
                return env.status
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{name} did not reach {', '.join(sorted(wanted))} in {timeout:.0f}s")


async def wait_job(app: Ephem, name: str, *, timeout: float = 180.0) -> JobStatus:
    """Wait until the newest job of environment `name` has finished; its final status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with app.store.transaction() as s:
            env = await repo.find_live_environment(s, name)
            job = (await s.execute(select(Job).where(Job.env_id == env.id)
                                   .order_by(Job.id.desc()).limit(1))).scalar_one() \
                if env else None
        if job is not None and job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            return job.status
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the job of {name} did not finish in {timeout:.0f}s")


async def check_database(url: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS hello (id serial PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO hello (note) VALUES ('written by ephem demo')")
        who = await conn.fetchrow("SELECT current_user, current_database(), count(*) "
                                  "FROM hello")
    finally:
        await conn.close()
    assert who is not None
    return f"connected as {who[0]} to {who[1]}; wrote and read {who[2]} row(s)"


async def database_exists(admin_url: str, database: str) -> bool:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                        database))
    finally:
        await conn.close()


KEEP_NEEDS_A_DATABASE = (
    "`ephem demo --keep` needs EPHEM_DATABASE_URL: without it the demo runs on a private "
    "PostgreSQL that is deleted when the demo ends, so there would be nothing to keep. Run "
    "`ephem demo` to see it all, or set EPHEM_DATABASE_URL to a server of yours to keep the "
    "environment."
)


async def run_demo(settings: Settings, *, keep: bool = False) -> int:
    if keep and not settings.database_url:
        print(KEEP_NEEDS_A_DATABASE, file=sys.stderr)
        return 2
    blueprint = load_blueprint(settings.config)
    banner("starting" + ("" if settings.database_url else " a private PostgreSQL (embedded)"))
    async with state_database(settings) as url:
        key = settings.secret_key if settings.secret_key.get_secret_value() else \
            SecretStr(secrets.token_hex(16))  # the demo's environments live for one run
        masking = settings.masking_key if settings.masking_key.get_secret_value() else \
            SecretStr(secrets.token_hex(16))
        cfg = settings.model_copy(update={"database_url": url, "workers": 2, "secret_key": key,
                                          "masking_key": masking, "poll_seconds": 0.2,
                                          "lease_seconds": 15.0})
        data = blueprint.phases.data
        production = None
        if data is not None and data.snapshots:
            production, blueprint = await _production(cfg, blueprint)
        blueprint, skipped = _infra_or_skip(blueprint)
        transcript = Transcript()
        app = build(cfg, blueprint, writer=ConsoleWriter(transcript), skipped=skipped,
                    reconcile=False)
        await app.start(scheduler=False)
        try:
            if production is not None and not await _snapshot(app, cfg):
                return 1
            return await _scenario(app, transcript, production=production, keep=keep)
        finally:
            await app.stop()
            if production is not None and not keep:
                await _clean_snapshots(app, production)


def _infra_or_skip(blueprint: Blueprint) -> tuple[Blueprint, dict[PhaseName, str]]:
    """Without a terraform binary the infra phase cannot run here: say so in one line and
    report the phase as skipped with that reason."""
    infra = blueprint.phases.infra
    if infra is None or infra.terraform is None or find_binary(infra.terraform.binary):
        return blueprint, {}
    reason = (f"skipped: no {infra.terraform.binary or 'tofu or terraform'} binary on PATH, "
              "so the example Terraform module is not applied")
    print(f"terraform: {reason}", flush=True)
    kept = infra.model_copy(update={"terraform": None}) if infra.kubernetes else None
    phases = blueprint.phases.model_copy(update={"infra": kept})
    return blueprint.model_copy(update={"phases": phases}), {} if kept else {
        PhaseName.INFRA: reason}


async def _workspace_gone(app: Ephem, env_id: int, name: str) -> bool:
    """After destroy: the environment's Terraform workspace is gone (True without one)."""
    infra = app.runner.phases.get(PhaseName.INFRA)
    terraform = getattr(infra, "terraform", None)
    if not isinstance(terraform, TerraformProvider):
        return True
    workspace = workspace_name(env_id, name)
    gone = workspace not in await terraform.workspaces()
    banner(f"terraform workspace {workspace} " + ("is gone" if gone else "is STILL THERE"))
    return gone


async def _production(settings: Settings, blueprint: Blueprint) -> tuple[str, Blueprint]:
    """Make the stand-in production database; point the default snapshot at it."""
    data = blueprint.phases.data
    assert data is not None and data.snapshots
    name = data.default_snapshot or next(iter(data.snapshots))
    server = data.server or settings.database_url
    banner("making a stand-in production database with Faker (customers, orders, tickets)")
    started = time.monotonic()
    prod = await make_production(server, f"{data.database_prefix}shop_production",
                                 customers=400)
    print(f"{prod.database}: {prod.customers} customers, {prod.bytes / 1e6:.1f} MB "
          f"in {time.monotonic() - started:.1f}s", flush=True)
    snapshots = {**data.snapshots,
                 name: data.snapshots[name].model_copy(update={"source": prod.url})}
    new_data = data.model_copy(update={"snapshots": snapshots, "default_snapshot": name})
    phases = blueprint.phases.model_copy(update={"data": new_data})
    return prod.url, blueprint.model_copy(update={"phases": phases})


async def _snapshot(app: Ephem, settings: Settings) -> bool:
    """Lint, build the snapshot, fill the warm pool — what `ephem snapshot build` does."""
    data = app.blueprint.phases.data
    assert data is not None
    name = data.default_snapshot or next(iter(data.snapshots))
    cfg = data.snapshots[name]
    banner(f"ephem snapshot lint {name}")
    report = await lint(asyncpg_dsn(cfg.source), load_rules(cfg.rules))
    print(report.render(), flush=True)
    if not report.ok:
        return False
    banner(f"ephem snapshot build {name}")
    try:
        return await snapshot_cli.build(settings, app.blueprint, name) == 0
    except PhaseError as exc:
        print(f"the build failed: {exc.reason}")
        return False


async def _clean_snapshots(app: Ephem, production: str) -> None:
    """Nothing left behind: golden databases, their pools, the stand-in production."""
    data = app.blueprint.phases.data
    assert data is not None
    server = data.server or app.settings.database_url
    pool = WarmPool(server, prefix=data.database_prefix)
    conn = await asyncpg.connect(asyncpg_dsn(server))
    try:
        for info in await golden.list_snapshots(server, prefix=data.database_prefix):
            await pool.drain(info.database)
            await golden.drop(conn, info.database)
        prod = urlsplit(asyncpg_dsn(production)).path.lstrip("/")
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(prod)} WITH (FORCE)")
    finally:
        await conn.close()


async def _side_by_side(production: str, env_url: str) -> None:
    """A few customers as production has them and as the environment got them."""
    cols = "id, email, first_name || ' ' || last_name AS name, phone, birthday"
    prod = await asyncpg.connect(asyncpg_dsn(production))
    env = await asyncpg.connect(asyncpg_dsn(env_url))
    try:
        masked = await env.fetch(f"SELECT {cols} FROM customers ORDER BY id LIMIT 4")
        ids = [r["id"] for r in masked]
        original = {r["id"]: r for r in await prod.fetch(
            f"SELECT {cols} FROM customers WHERE id = ANY($1)", ids)}
        ticket = await env.fetchval("SELECT body FROM support_tickets LIMIT 1")
    finally:
        await prod.close()
        await env.close()
    for row in masked:
        before = original[row["id"]]
        for col in ("email", "name", "phone", "birthday"):
            print(f"  customer {row['id']:<4} {col:8} {before[col]!s:34} -> {row[col]!s}")
    if ticket is not None:
        print(f"  a support ticket's body in the environment: {ticket!r}")


async def _scenario(app: Ephem, transcript: Transcript, *, production: str | None,
                    keep: bool) -> int:
    name = f"demo-{secrets.token_hex(2)}"
    data_flag = " --data snapshot" if production is not None else ""
    text = (f"create {name} --match staging --set api=2.8.0-rc1{data_flag} --ttl 2h "
            "--reason ephem demo")
    await _code_preview(app, name)
    banner(f"/ephem {text}")
    await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=text, source="shell"))
    status = await wait_for(app, name, (EnvStatus.READY, EnvStatus.FAILED))
    await app.notifier.flush()
    if status is EnvStatus.FAILED:
        banner(f"{name} failed; destroying what was made")
        await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=f"destroy {name}"))
        await wait_for(app, name, (EnvStatus.DESTROYED, EnvStatus.FAILED))
        await app.notifier.flush()
        return 1

    banner(f"/ephem status {name}")
    await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=f"status {name}"))
    workload = await _code_links(app, name)
    if workload is None:
        return 1
    creds = [u for u in transcript.urls() if urlsplit(u).password]
    if app.blueprint.phases.data is not None:
        if not creds:
            print("the environment's credentials never reached its owner")
            return 1
        banner("using the credentials delivered to the owner")
        print(await check_database(creds[-1]), flush=True)
        if production is not None:
            banner("production beside the environment (masked, deterministic, joins intact)")
            await _side_by_side(production, creds[-1])
            banner(f"/ephem reset-data {name}")
            await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL,
                                        text=f"reset-data {name}"))
            if await wait_job(app, name) is not JobStatus.SUCCEEDED:
                return 1
            await app.notifier.flush()
    if keep:
        banner(f"kept {name} in {redact(app.settings.database_url)}; destroy it with "
               f"`ephem shell`, then `destroy {name}`")
        return 0

    async with app.store.transaction() as s:
        live = await repo.find_live_environment(s, name)
    env_id = live.id if live is not None else 0
    banner(f"/ephem destroy {name}")
    await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=f"destroy {name}"))
    status = await wait_for(app, name, (EnvStatus.DESTROYED, EnvStatus.FAILED))
    await app.notifier.flush()
    if status is not EnvStatus.DESTROYED:
        return 1
    if not _code_gone(workload) or not await _workspace_gone(app, env_id, name):
        return 1
    data = app.blueprint.phases.data
    if data is not None:
        database = data.database_prefix + name.replace("-", "_")
        server = data.server or app.settings.database_url
        gone = not await database_exists(server, database)
        banner(f"database {database} " + ("is gone" if gone else "is STILL THERE"))
        if not gone:
            return 1
    banner("done: created, used and destroyed; nothing left behind")
    return 0


# --------------------------------------------------------------------------- the code story


async def _code_preview(app: Ephem, name: str) -> None:
    """What the create will deploy: staging's set resolved now, one override, and the diff."""
    if app.blueprint.phases.code is None:
        return
    text = f"create {name} --match staging --set api=2.8.0-rc1 --dry-run"
    banner(f"/ephem {text}")
    await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=text, source="shell"))
    await app.notifier.flush()


async def _code_links(app: Ephem, name: str) -> dict[str, int] | None:
    """The diff against staging now, then each link fetched and its answer shown; the pids of
    the components (to show they are gone after destroy). None when a link did not answer."""
    if app.blueprint.phases.code is None:
        return {}
    banner(f"/ephem diff {name}")
    await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=f"diff {name}"))
    await app.notifier.flush()
    async with app.store.transaction() as s:
        env = await repo.find_live_environment(s, name)
        code = dict(env.outputs.get("code") or {}) if env is not None else {}
    links: dict[str, str] = dict(code.get("links") or {})
    banner("asking each component (its link)")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for component, url in sorted(links.items()):
            try:
                async with session.get(url) as response:
                    print(f"  {component:8} {url} -> {await response.text()}", flush=True)
            except aiohttp.ClientError as exc:
                print(f"  {component:8} {url} did not answer ({type(exc).__name__})")
                return None
    components = code.get("components") or {}
    return {c: int(f["pid"]) for c, f in components.items() if "pid" in f}


def _code_gone(pids: dict[str, int]) -> bool:
    """After destroy: no component process is left."""
    if not pids:
        return True
    left = sorted(c for c, pid in pids.items() if detached.group_alive(pid))
    banner("component processes " + (f"STILL RUNNING: {', '.join(left)}" if left else
                                      f"all stopped ({', '.join(sorted(pids))})"))
    return not left
