"""`ephem demo`: one environment created and destroyed end to end, on the embedded defaults.

What a newcomer sees first, so it shows the real thing: the same handlers, executor, runner and
phases as `ephem serve`, with the Slack thread rendered in the terminal. It checks its own
result — the delivered credentials open the environment's database, and after destroy the
database is gone — and exits non-zero if anything did not happen.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import asyncpg
from pydantic import SecretStr

from bot.app import Ephem, build
from bot.bootstrap import state_database
from bot.config import Settings, load_blueprint
from bot.domain import EnvStatus
from bot.pg import asyncpg_dsn
from bot.ports import Invocation
from bot.slack.writer import ConsoleWriter
from bot.store import repo

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


async def run_demo(settings: Settings, *, keep: bool = False) -> int:
    blueprint = load_blueprint(settings.config)
    banner("starting" + ("" if settings.database_url else " a private PostgreSQL (embedded)"))
    async with state_database(settings) as url:
        key = settings.secret_key if settings.secret_key.get_secret_value() else \
            SecretStr(secrets.token_hex(16))  # the demo's environments live for one run
        cfg = settings.model_copy(update={"database_url": url, "workers": 2, "secret_key": key,
                                          "poll_seconds": 0.2, "lease_seconds": 15.0})
        transcript = Transcript()
        app = build(cfg, blueprint, writer=ConsoleWriter(transcript))
        await app.start(scheduler=False)
        try:
            return await _scenario(app, transcript, keep=keep)
        finally:
            await app.stop()


async def _scenario(app: Ephem, transcript: Transcript, *, keep: bool) -> int:
    name = f"demo-{secrets.token_hex(2)}"
    text = f"create {name} --match staging --set api=2.8.0-rc1 --ttl 2h --reason ephem demo"
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
    creds = [u for u in transcript.urls() if urlsplit(u).password]
    if app.blueprint.phases.data is not None:
        if not creds:
            print("the environment's credentials never reached its owner")
            return 1
        banner("using the credentials delivered to the owner")
        print(await check_database(creds[-1]), flush=True)
    if keep:
        banner(f"kept {name}; destroy it with `ephem shell` → destroy {name}")
        return 0

    banner(f"/ephem destroy {name}")
    await app.invoke(Invocation(user_id=USER, channel_id=CHANNEL, text=f"destroy {name}"))
    status = await wait_for(app, name, (EnvStatus.DESTROYED, EnvStatus.FAILED))
    await app.notifier.flush()
    if status is not EnvStatus.DESTROYED:
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
