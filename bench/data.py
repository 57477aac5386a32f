"""The data phase against its baselines, on one generated source, in one run.

    python bench/data.py                      # ~1 GB source (about 640k customers)
    python bench/data.py --customers 60000    # a quick run (~100 MB)
    python bench/data.py --profile masking-heavy [--sizes 180,1024] [--repeat 3]

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

`--profile masking-heavy` is shaped like the outside check of the data phase rather than like
friendly data: a jsonb contact (e-mail, phone, name) on every order, e-mails and phone numbers in
a fifth of the free-text rows, a unique e-mail that orders reference as a foreign key, customers
referring customers in cycles, Luhn-valid card numbers, phones written four ways (one digits
only). At each size it prints the build against plain `pg_dump | psql` (the ratio; goal: at most
1.5x) and the time of each part of the build, as the median of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def drop_snapshots(admin: str, name: str) -> None:
    """Drop the golden databases of snapshot `name` (and their pools) that earlier builds
    of this run left."""
    from pipelines.data import golden
    from pipelines.data.clone import WarmPool

    conn = await asyncpg.connect(asyncpg_dsn(admin))
    try:
        for info in await golden.snapshots(conn, prefix=PREFIX, name=name):
            await golden.drop(conn, info.database)
    finally:
        await conn.close()
    await WarmPool(admin, prefix=PREFIX).drain()


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


async def build_in_child(source: str, rules: Path, name: str,
                         admin: str) -> tuple[float, int, dict[str, Any]]:
    """(seconds, peak RSS in bytes, info) of one `ephem snapshot build`, the command a user
    runs (its start-up and imports included), in its own process."""
    blueprint = rules.with_name(f"blueprint-{name}.yaml")
    blueprint.write_text(yaml.safe_dump({"phases": {"data": {
        "server": admin, "database_prefix": PREFIX, "default_snapshot": name,
        "snapshots": {name: {"source": source, "rules": str(rules), "pool": 0, "workers": 2,
                             "keep": 1}}}}}))
    env = {**os.environ, "EPHEM_CONFIG": str(blueprint), "EPHEM_MASKING_KEY": KEY}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "snapshot", "build", name],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"build {name} failed:\n{out}")
    info = await latest(admin, name)
    return seconds, usage.ru_maxrss * 1024, {"database": info.database, "rows": info.rows,
                                             "bytes": info.bytes, "steps": dict(info.steps)}


async def latest(admin: str, name: str) -> Any:
    from pipelines.data.golden import latest_snapshot

    info = await latest_snapshot(admin, prefix=PREFIX, name=name)
    if info is None:
        raise SystemExit(f"build {name} made no snapshot")
    return info


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


# --------------------------------------------------------------------------- masking-heavy

HEAVY_SCHEMA = """
CREATE TABLE customers (
    id bigint PRIMARY KEY, email text NOT NULL UNIQUE, full_name text NOT NULL, phone text,
    birth_date date, referred_by bigint, notes text, created_at timestamptz NOT NULL);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_email text NOT NULL, placed_at timestamptz NOT NULL,
    status text NOT NULL, total numeric(12, 2) NOT NULL, meta jsonb NOT NULL, note text);
CREATE TABLE payments (
    id bigint PRIMARY KEY, order_id bigint NOT NULL, pan text NOT NULL, cardholder text NOT NULL,
    amount numeric(12, 2) NOT NULL);
CREATE FUNCTION pg_temp.luhn(payload text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT payload || ((10 - sum(CASE WHEN (length(payload) - i) % 2 = 0
                                   THEN (d * 2) / 10 + (d * 2) % 10 ELSE d END) % 10) % 10)::text
  FROM (SELECT i, substr(payload, i, 1)::int AS d FROM generate_series(1, length(payload)) i) s
$$;
"""
HEAVY_CUSTOMERS = """
INSERT INTO customers
SELECT i, lower(f) || '.' || lower(l) || i || '@' || (ARRAY['gmail.com', 'yahoo.co.uk',
         'outlook.com', 'web.de', 'proton.me', 'icloud.com'])[1 + i % 6],
       f || ' ' || l,
       CASE i % 4 WHEN 0 THEN '+44 20 7946 ' || lpad((i % 10000)::text, 4, '0')
                  WHEN 1 THEN '+1-202-555-' || lpad((i % 10000)::text, 4, '0')
                  WHEN 2 THEN '07' || lpad((i * 7919 % 1000000000)::text, 9, '0')
                  ELSE '(415) 555-' || lpad((i % 10000)::text, 4, '0') END,
       date '1940-01-01' + ((i * 7919) % 25000)::int,
       CASE WHEN i % 10 = 0 OR (i - 1) / 3 * 3 + 3 > $3::int THEN NULL
            ELSE (i - 1) / 3 * 3 + 1 + i % 3 END,
       CASE WHEN i % 5 = 0 THEN (ARRAY['Prefers a call on ', 'Second number: ',
                                       'Ask for the manager, '])[1 + i % 3]
                                || '+44 7700 ' || lpad((i % 1000000)::text, 6, '0')
            WHEN i % 10 = 6 THEN 'Also reachable at ' || lower(l) || '.' || i || '@work.example.org'
            ELSE (ARRAY['VIP since 2019', 'No marketing, please', 'Pays by invoice',
                        'Likes the blue range', 'Moved from the old shop',
                        'Asked about bulk prices'])[1 + i % 6] END,
       timestamptz '2019-01-01' + (i % 2000) * interval '1 day'
FROM (SELECT i::bigint AS i, ($1::text[])[1 + i % 500] AS f,
             ($2::text[])[1 + (i / 500) % 500] AS l
      FROM generate_series(1, $3::int) i) s
"""
HEAVY_ORDERS = """
INSERT INTO orders
SELECT o, c.email,
       timestamptz '2023-01-01' + (o % 900) * interval '1 day' + (o % 86400) * interval '1 s',
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + o % 4], (o % 90000) / 100.0 + 1,
       jsonb_strip_nulls(jsonb_build_object(
         'contact', jsonb_build_object('email', c.email, 'phone', c.phone, 'name', c.full_name),
         'channel', (ARRAY['web', 'app', 'phone', 'store'])[1 + o % 4],
         'ip', '198.51.' || (o % 250) || '.' || (o * 7 % 250),
         'items', CASE WHEN o % 3 = 0
                       THEN jsonb_build_array(jsonb_build_object('sku', 'SKU-' || o % 997,
                                                                 'qty', 1 + o % 3))
                       ELSE jsonb_build_array(jsonb_build_object('sku', 'SKU-' || o % 997,
                                                                 'qty', 1 + o % 3),
                                              jsonb_build_object('sku', 'SKU-' || o % 991,
                                                                 'qty', 1)) END,
         'gift', CASE WHEN o % 7 = 0 THEN true END,
         'coupon', CASE WHEN o % 11 = 0 THEN 'SPRING' || o % 100 END)),
       CASE WHEN o % 5 = 0 THEN 'Call ' || c.phone || ' before delivery'
            WHEN o % 10 = 6 THEN 'Send the receipt to ' || c.email
            ELSE (ARRAY['Leave at the door', 'Ring twice', 'Gift wrap please',
                        'Deliver after 5pm', 'Fragile', 'Side entrance'])[1 + o % 6] END
FROM generate_series(1, $1::int * 3) o JOIN customers c ON c.id = 1 + (o - 1) / 3
"""
HEAVY_PAYMENTS = """
INSERT INTO payments
SELECT p, p * 2, pg_temp.luhn('4' || lpad(((p::bigint * 2654435761) % 100000000000000)::text,
                                          14, '0')),
       c.full_name, (p % 50000) / 100.0 + 1
FROM generate_series(1, $1::int * 3 / 2) p JOIN orders o ON o.id = p * 2
JOIN customers c ON c.email = o.customer_email
"""
HEAVY_KEYS = """
ALTER TABLE customers ADD FOREIGN KEY (referred_by) REFERENCES customers (id);
ALTER TABLE orders ADD FOREIGN KEY (customer_email) REFERENCES customers (email)
    ON UPDATE CASCADE;
CREATE INDEX orders_placed_at ON orders (placed_at);
ALTER TABLE payments ADD FOREIGN KEY (order_id) REFERENCES orders (id);
ANALYZE;
"""
CONTACT = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\+?\(?\d[\d ()-]{7,}\d"
HEAVY_RULES = {"tables": {
    "customers": {"email": "email", "full_name": "full_name", "phone": "phone",
                  "birth_date": {"date_shift": {"days": 180}},
                  "notes": {"regex": {"pattern": CONTACT, "replace": "[contact removed]"}}},
    "orders": {"customer_email": "email",
               "meta": {"json": {"paths": {
                   "$.contact.email": "email", "$.contact.phone": "phone",
                   "$.contact.name": "full_name",
                   "$.ip": {"template": {"format": "192.0.2.{digits:2}"}}}}},
               "note": {"regex": {"pattern": CONTACT, "replace": "[contact removed]"}}},
    "payments": {"pan": {"template": {"format": "4000{digits:12}"}},
                 "cardholder": "full_name"},
}}
HEAVY_BYTES_PER_CUSTOMER = 1_700  # measured: 100k customers make 170 MB


async def make_heavy(admin: str, database: str, *, customers: int) -> tuple[str, int]:
    """The masking-heavy source; its URL and size in bytes."""
    from faker import Faker

    from bot.cli.sample_data import create_database

    url = await create_database(admin, database)
    fake = Faker("en_US")
    Faker.seed(3)
    firsts = [fake.first_name() for _ in range(500)]
    lasts = [fake.last_name() for _ in range(500)]
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(HEAVY_SCHEMA)
        await conn.execute(HEAVY_CUSTOMERS, firsts, lasts, customers)
        await conn.execute(HEAVY_ORDERS, customers)
        await conn.execute(HEAVY_PAYMENTS, customers)
        await conn.execute(HEAVY_KEYS)
        return url, int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


async def plain_copy(admin: str, source: str, target: str) -> float:
    """Seconds of `pg_dump | psql` of `source` into a new database `target`."""
    await sql(admin, f"CREATE DATABASE {quote_ident(target)}")
    started = time.perf_counter()
    dump = subprocess.Popen(["pg_dump", "--no-owner", "-d", source], stdout=subprocess.PIPE,
                            env=libpq(admin))
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", with_database(admin, target)],
                   stdin=dump.stdout, stdout=subprocess.DEVNULL, env=libpq(admin), check=True)
    if dump.wait():
        raise SystemExit("pg_dump failed")
    return time.perf_counter() - started


async def heavy(args: argparse.Namespace) -> int:
    import statistics

    admin = admin_url()
    await drop_all(admin)
    rules = Path(tempfile.mkdtemp()) / "heavy.yaml"
    rules.write_text(yaml.safe_dump(HEAVY_RULES))
    lines = []
    try:
        for mb in (int(x) for x in args.sizes.split(",")):
            customers = mb * 1_000_000 // HEAVY_BYTES_PER_CUSTOMER
            t = time.perf_counter()
            source, size = await make_heavy(admin, f"{PREFIX}heavy", customers=customers)
            print(f"masking-heavy source: {size / 1e6:.0f} MB, {customers} customers "
                  f"(made in {time.perf_counter() - t:.0f}s)", flush=True)
            plains, builds, steps = [], [], []
            for run in range(args.repeat):
                plain = f"{PREFIX}plain"
                plains.append(await plain_copy(admin, source, plain))
                await sql(admin, f"DROP DATABASE {quote_ident(plain)} WITH (FORCE)")
                # The last run's snapshot is dropped here, untimed, as the plain copy is above:
                # otherwise the build's retention would drop it, and the build alone would pay
                # for a DROP DATABASE the baseline does not time.
                await drop_snapshots(admin, "heavy")
                seconds, _, info = await build_in_child(source, rules, "heavy", admin)
                builds.append(seconds)
                steps.append(info["steps"])
                print(f"  run {run + 1}: pg_dump | psql {plains[-1]:.1f}s, build "
                      f"{seconds:.1f}s ({seconds / plains[-1]:.2f}x); "
                      + ", ".join(f"{k} {v:.1f}s" for k, v in info["steps"].items()),
                      flush=True)
            plain_s, build_s = statistics.median(plains), statistics.median(builds)
            parts = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
            lines.append(f"{size / 1e6:6.0f} MB  pg_dump|psql {plain_s:6.1f}s  build "
                         f"{build_s:6.1f}s  {build_s / plain_s:5.2f}x   "
                         + "  ".join(f"{k} {v:.1f}s" for k, v in parts.items()))
            await drop_all(admin)
    finally:
        await drop_all(admin)
    print(f"\nmasking-heavy, median of {args.repeat} (goal: build at most 1.5x pg_dump | psql)")
    print("\n".join(lines))
    return 0


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
                seconds, rss, info = await build_in_child(prod.url, rules_file(tmp, fraction),
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
    parser.add_argument("--profile", choices=("shop", "masking-heavy"), default="shop")
    parser.add_argument("--sizes", default="180,1024",
                        help="masking-heavy: source sizes in MB")
    parser.add_argument("--repeat", type=int, default=3, help="masking-heavy: runs per size")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(heavy(arguments) if arguments.profile == "masking-heavy"
                         else main(arguments)))
