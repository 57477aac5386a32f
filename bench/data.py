"""The data phase against its baselines, on one generated source, in one run.

    python bench/data.py                      # ~1 GB source (about 640k customers)
    python bench/data.py --customers 60000    # a quick run (~100 MB)

Needs PostgreSQL on 127.0.0.1:5432 (or EPHEM_TEST_DATABASE_URL), the `pg_dump`, `psql` and
`pg_restore` binaries of that server's version (or newer) on PATH, and `pganonymize`
(`pip install -e '.[bench]'`). Everything it makes is named `ephem_bench_*` and dropped at the
end. Prints, side by side with the baselines measured in the same run:

- snapshot build (100 % and a 10 % subset, the example shop's rules) vs `pganonymize` applied
  to a copy (copy time included) and vs plain `pg_dump | psql` with no masking at all;
- clone of the golden database vs `pg_dump -Fc | pg_restore` of it;
- peak RSS of the build process (each build runs in a child process, measured by wait4);
- time from request to a ready database with the warm pool, at two source sizes (a job through
  the real command handler, executor, runner and data phase).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.cli.sample_data import SHOP, make_production
from bot.config import SnapshotConfig
from bot.pg import asyncpg_dsn, quote_ident, with_database

PREFIX = "ephem_bench_"
LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"
KEY = "bench-masking-key"


def admin_url() -> str:
    return os.environ.get("EPHEM_TEST_DATABASE_URL") or LOCAL


async def sql(url: str, statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


async def drop_all(admin: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin))
    try:
        for row in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                    PREFIX + "%"):
            await conn.execute(f"ALTER DATABASE {quote_ident(row[0])} IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE {quote_ident(row[0])} WITH (FORCE)")
        for row in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                                    PREFIX + "%"):
            await conn.execute(f"DROP ROLE {quote_ident(row[0])}")
    finally:
        await conn.close()


def timed(args: list[str], **kw: Any) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, **kw)
    return time.perf_counter() - started


def libpq(url: str) -> dict[str, str]:
    from pipelines.data.migrations import command_environment

    return {**os.environ, **command_environment(url)}


# --------------------------------------------------------------------------- builds


def rules_file(tmp: Path, fraction: str | None) -> Path:
    raw = yaml.safe_load((SHOP / "masking.yaml").read_text())
    if fraction is None:
        raw.pop("subset", None)
    else:
        raw["subset"]["roots"] = {"customers": fraction}
    path = tmp / f"rules-{fraction or 'all'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BUILD_CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from bot.config import SnapshotConfig
from pipelines.data.snapshot import build_snapshot
cfg = SnapshotConfig(source=sys.argv[1], rules=Path(sys.argv[2]), pool=0, workers=2, keep=5)
info = asyncio.run(build_snapshot(name=sys.argv[3], config=cfg, target_admin_url=sys.argv[4],
                                  prefix=sys.argv[5], key=sys.argv[6].encode()))
print(json.dumps({"database": info.database, "rows": info.rows, "bytes": info.bytes}))
"""


def build_in_child(source: str, rules: Path, name: str,
                   admin: str) -> tuple[float, int, dict[str, Any]]:
    """(seconds, peak RSS in bytes, info) of one build in its own process."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", BUILD_CHILD, source, str(rules), name, admin,
                             PREFIX, KEY], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"build {name} failed")
    return seconds, usage.ru_maxrss * 1024, json.loads(out.strip().splitlines()[-1])


PGANONYMIZE_PROVIDERS = {
    "email": {"name": "fake.unique.email"}, "first_name": {"name": "fake.first_name"},
    "last_name": {"name": "fake.last_name"}, "phone": {"name": "fake.phone_number"},
    "address": {"name": "fake.street_address"}, "redact": {"name": "set", "value": "[redacted]"},
    "hash": {"name": "md5"}, "date_shift": {"name": "fake.date_of_birth"},
    "number_noise": {"name": "fake.pydecimal", "kwargs": {"left_digits": 3,
                                                          "right_digits": 2,
                                                          "positive": True}},
}
# No pganonymize provider writes jsonb through its COPY path (pgcopy wants bytes there), so
# the json rule (support_tickets.meta) has no counterpart: the baseline does slightly less.


def pganonymize_schema(tmp: Path) -> Path:
    """The same rules, in pganonymize's terms (closest provider per transformer)."""
    raw = yaml.safe_load((SHOP / "masking.yaml").read_text())
    tables = []
    for table, columns in raw["tables"].items():
        fields = []
        for column, rule in columns.items():
            name = rule if isinstance(rule, str) else next(iter(rule))
            if name in PGANONYMIZE_PROVIDERS:
                fields.append({column: {"provider": PGANONYMIZE_PROVIDERS[name]}})
        if fields:
            tables.append({table: {"primary_key": "id", "fields": fields}})
    path = tmp / "pganonymize.yaml"
    path.write_text(yaml.safe_dump({"tables": tables}))
    return path


# --------------------------------------------------------------------------- request → ready


async def request_to_ready(admin: str, source_url: str, tmp: Path, label: str) -> float:
    """Create an environment with `--data snapshot` through the bot (no Slack) once the pool
    is warm; the time from the command to the environment being ready."""
    from bot.cli.app import build
    from bot.cli.bootstrap import state_database
    from bot.config import load_settings, parse_blueprint
    from bot.domain import EnvStatus
    from bot.ports import Invocation
    from bot.slack.writer import ConsoleWriter
    from bot.store import repo
    from pipelines.data.clone import WarmPool
    from pipelines.data.snapshot import build_snapshot

    state = f"{PREFIX}state_{label}"
    await sql(admin, f"CREATE DATABASE {quote_ident(state)}")
    settings = load_settings(database_url=with_database(admin, state), workers=1,
                             poll_seconds=0.2, secret_key="bench", masking_key=KEY)
    snap = {"source": source_url, "rules": str(SHOP / "masking.yaml"), "pool": 1}
    blueprint = parse_blueprint({"phases": {"data": {
        "server": admin, "database_prefix": PREFIX, "snapshots": {label: snap},
        "default_snapshot": label,
        "migrations": {"locations": [str(SHOP / "migrations")]}}}})
    info = await build_snapshot(name=label, config=SnapshotConfig(**snap), target_admin_url=admin,
                                prefix=PREFIX, key=KEY.encode())
    await WarmPool(admin, prefix=PREFIX).fill(info.database, 1)
    async with state_database(settings) as url:
        app = build(settings.model_copy(update={"database_url": url}), blueprint,
                    writer=ConsoleWriter(lambda _: None))
        await app.start(scheduler=False)
        try:
            started = time.perf_counter()
            await app.invoke(Invocation(user_id="UBENCH", channel_id="CBENCH",
                                        text=f"create {label}-env --data snapshot"))
            while True:
                async with app.store.transaction() as s:
                    env = await repo.find_live_environment(s, f"{label}-env")
                if env is not None and env.status in (EnvStatus.READY, EnvStatus.FAILED):
                    break
                await asyncio.sleep(0.02)
            took = time.perf_counter() - started
            if env.status is not EnvStatus.READY:
                raise SystemExit(f"{label}: environment failed: {env.last_error}")
            return took
        finally:
            await app.stop()


# --------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> int:
    admin = admin_url()
    for tool in ("pg_dump", "psql", "pg_restore", "pganonymize"):
        if not shutil.which(tool) and not (Path(sys.executable).parent / tool).exists():
            raise SystemExit(f"{tool} is not on PATH")
    pganon = shutil.which("pganonymize") or str(Path(sys.executable).parent / "pganonymize")
    await drop_all(admin)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            t = time.perf_counter()
            prod = await make_production(admin, f"{PREFIX}prod", customers=args.customers,
                                         bulk=True)
            print(f"source: {prod.bytes / 1e9:.2f} GB, {args.customers} customers "
                  f"(generated in {time.perf_counter() - t:.0f}s)", flush=True)

            # Baseline 1: plain pg_dump | psql, no masking.
            plain = f"{PREFIX}plain"
            await sql(admin, f"CREATE DATABASE {quote_ident(plain)}")
            dump = subprocess.Popen(["pg_dump", "--no-owner", "-d", prod.url],
                                    stdout=subprocess.PIPE, env=libpq(admin))
            t_plain = timed(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                             with_database(admin, plain)], stdin=dump.stdout,
                            stdout=subprocess.DEVNULL, env=libpq(admin))
            dump.wait()
            print(f"pg_dump | psql (no masking): {t_plain:.1f}s", flush=True)

            # Baseline 2: pganonymize on a copy (the copy's time included).
            copy = f"{PREFIX}anon"
            t = time.perf_counter()
            await sql(admin, f"CREATE DATABASE {quote_ident(copy)} TEMPLATE "
                             f"{quote_ident(prod.database)}")
            schema = pganonymize_schema(tmp)
            subprocess.run([pganon, "--schema", str(schema), "--dbname", copy, "--user",
                            "postgres", "--host", "127.0.0.1", "--port", "5432"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t_anon = time.perf_counter() - t
            print(f"pganonymize on a copy: {t_anon:.1f}s", flush=True)

            # Ephem's builds.
            results = {}
            for label, fraction in (("full", None), ("ten", "10%")):
                seconds, rss, info = build_in_child(prod.url, rules_file(tmp, fraction),
                                                    label, admin)
                results[label] = (seconds, rss, info)
                print(f"ephem build {label}: {seconds:.1f}s, peak RSS {rss / 1e6:.0f} MB, "
                      f"{info['rows']} rows", flush=True)
            for label, title in (("full", "build 100 %"), ("ten", "build 10 % subset")):
                s = results[label][0]
                rows.append((title, f"{s:.1f}s",
                             f"pganonymize {t_anon:.1f}s ({t_anon / s:.1f}x faster)",
                             f"pg_dump|psql {t_plain:.1f}s ({s / t_plain:.2f}x of it)"))

            # Clone vs dump/restore of the golden database.
            golden = results["full"][2]["database"]
            t_clone_db = f"{PREFIX}clonecheck"
            from pipelines.data.clone import clone_database

            clone = await clone_database(admin, template=golden, target=t_clone_db)
            restore = f"{PREFIX}restored"
            await sql(admin, f"CREATE DATABASE {quote_ident(restore)}")
            await sql(admin, f"ALTER DATABASE {quote_ident(golden)} ALLOW_CONNECTIONS true")
            dump_file = tmp / "golden.dump"
            t_dr = timed(["pg_dump", "-Fc", "-f", str(dump_file), "-d",
                          with_database(admin, golden)], env=libpq(admin))
            t_dr += timed(["pg_restore", "--no-owner", "-d", with_database(admin, restore),
                           str(dump_file)], env=libpq(admin))
            await sql(admin, f"ALTER DATABASE {quote_ident(golden)} ALLOW_CONNECTIONS false")
            rows.append(("clone golden db", f"{clone.seconds:.2f}s ({clone.strategy})",
                         f"pg_dump|pg_restore {t_dr:.1f}s ({t_dr / clone.seconds:.0f}x faster)",
                         ""))
            rss = max(r[1] for r in results.values())
            rows.append(("peak RSS of a build", f"{rss / 1e6:.0f} MB",
                         f"source {prod.bytes / 1e6:.0f} MB", ""))

            # Request → ready database with the warm pool, at two sizes.
            small = await make_production(admin, f"{PREFIX}small", customers=2000, bulk=True)
            for label, source in (("small", small), ("large", prod)):
                took = await request_to_ready(admin, source.url, tmp, label)
                rows.append((f"request → ready ({source.bytes / 1e6:.0f} MB source)",
                             f"{took:.2f}s", "warm pool", ""))
        finally:
            await drop_all(admin)
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{r[0]:<{width}}  {r[1]:>18}  {r[2]}  {r[3]}" for r in rows))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=640_000)
    sys.exit(asyncio.run(main(parser.parse_args())))
