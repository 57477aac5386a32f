"""How long a per-environment copy of a golden database takes, each way Ephem can make one.

    python bench/clone.py                      # 200 MB golden database on 127.0.0.1:5432
    python bench/clone.py --embedded --mb 200  # the same on the embedded PostgreSQL 18
    python bench/clone.py --sweep 8,64,256     # WAL_LOG vs FILE_COPY by size (the threshold)
    python bench/clone.py --reflink            # PostgreSQL 18 on btrfs: 40 MB vs 1 GB clones

For one generated golden database (a table of orders with two indexes, ANALYZEd, checkpointed,
then marked IS_TEMPLATE / ALLOW_CONNECTIONS false as a snapshot build leaves it) it measures, each
the median of `--repeat` runs: `pg_dump -Fc | pg_restore` into a new database (the baseline),
`clone_database` with WAL_LOG, FILE_COPY and — on PostgreSQL 18 — FILE_COPY with
file_copy_method = clone, the automatic choice, and the warm pool's take (a rename) plus adopt.
Everything it creates starts with `bench_clone_` and is dropped at the end.

`--reflink` (root, loop devices and btrfs-progs needed) puts the embedded PostgreSQL 18's data
directory on a loop-mounted btrfs image, as a production target server on Btrfs, XFS or ZFS
would be, and prints the time of a clone (`clone_database`, method chosen by `clone_method`) of a
40 MB and of a 1 GB golden database. Goal: the 1 GB clone under 1.5x the 40 MB one, and under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.embedded import embedded_postgres
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data import clone as cl
from pipelines.data import pgconn

PREFIX = "bench_clone_"
BYTES_PER_ROW = 163  # heap + two indexes, measured for the table below


async def execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def make_source(url: str, name: str, mb: int) -> int:
    """A database of about `mb` MB; its size in bytes."""
    rows = mb * 1024 * 1024 // BYTES_PER_ROW
    await execute(url, f"CREATE DATABASE {quote_ident(name)}")
    await execute(with_database(url, name), f"""
        CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL,
                             amount numeric(12, 2) NOT NULL, note text NOT NULL,
                             created_at timestamptz NOT NULL);
        INSERT INTO orders
             SELECT i, i % 50000, (i % 100000) / 100.0, md5(i::text) || md5((i * 7)::text),
                    timestamptz '2024-01-01' + i * interval '1 second'
               FROM generate_series(1, {rows}) i;
        CREATE INDEX orders_customer ON orders (customer_id);
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 900;
        ANALYZE;
    """, "CHECKPOINT")
    return int(str(await fetchval(url, "SELECT pg_database_size($1::text)", name)))


async def mark_golden(url: str, name: str) -> None:
    await execute(url, f"ALTER DATABASE {quote_ident(name)} "
                       "WITH IS_TEMPLATE true ALLOW_CONNECTIONS false", "CHECKPOINT")


async def drop(url: str, name: str) -> None:
    await execute(url, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


def tools_for(version: int) -> Path:
    """The directory of pg_dump/pg_restore matching the server's major version."""
    embedded = sorted(ROOT.parent.glob("venv/lib/python3*/site-packages/"
                                       "embedded_postgres/pginstall/bin"))
    on_path = shutil.which("pg_dump")
    candidates = ([Path(on_path).parent] if on_path else []) + embedded
    for directory in candidates:
        out = subprocess.run([str(directory / "pg_dump"), "--version"], capture_output=True,
                             text=True, check=True).stdout
        if int(out.split()[-1].split(".")[0].split("(")[0]) == version:
            return directory
    sys.exit(f"no pg_dump {version} found")


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and an environment with the password (never on argv)."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}@{host}")
    return urlunsplit(parts), env


def dump_restore(url: str, *, source: str, target: str, tools: Path) -> None:
    src, env = libpq(with_database(url, source))
    dst, _ = libpq(with_database(url, target))
    subprocess.run([str(tools / "createdb"), "--maintenance-db", libpq(url)[0], target],
                   env=env, check=True)
    dump = subprocess.Popen([str(tools / "pg_dump"), "-Fc", "-d", src], env=env,
                            stdout=subprocess.PIPE)
    restore = subprocess.run([str(tools / "pg_restore"), "--no-owner", "-d", dst],
                             env=env, stdin=dump.stdout, check=False)
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() or restore.returncode:
        sys.exit("pg_dump | pg_restore failed")


DIRTY = f"{PREFIX}dirty"
dirty_mb = 0  # --dirty: MB of shared buffers dirtied (untimed) before each timed copy


async def make_dirty(url: str) -> None:
    """A stand-in for a busy server: other databases' dirty buffers, which a FILE_COPY's
    checkpoint must write out first."""
    if dirty_mb:
        await execute(with_database(url, DIRTY), "UPDATE scratch SET v = v + 1")


async def prepare_dirty(url: str) -> None:
    if dirty_mb:
        await drop(url, DIRTY)
        await execute(url, f"CREATE DATABASE {quote_ident(DIRTY)}")
        rows = dirty_mb * 1024 * 1024 // 64
        await execute(with_database(url, DIRTY), "CREATE TABLE scratch (v bigint, pad char(20)) "
                      "WITH (fillfactor = 45)",
                      f"INSERT INTO scratch SELECT i, 'x' FROM generate_series(1, {rows}) i")


async def timed(repeat: int, make: Callable[[str], Awaitable[object]],
                url: str) -> tuple[float, object]:
    """Median seconds of `make(target)` over `repeat` fresh targets, and the last result."""
    seconds, result = [], None
    for _ in range(repeat):
        target = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        await make_dirty(url)
        started = time.monotonic()
        result = await make(target)
        seconds.append(time.monotonic() - started)
        await drop(url, target)
    return statistics.median(seconds), result


async def run(url: str, *, mb: int, repeat: int) -> None:
    version = int(str(await fetchval(url, "SHOW server_version_num"))) // 10000
    golden = f"{PREFIX}golden"
    await drop(url, golden)
    size = await make_source(url, golden, mb)
    print(f"PostgreSQL {version}, golden database {size / 2**20:.0f} MB")
    tools = tools_for(version)

    async def baseline(target: str) -> None:
        await asyncio.to_thread(dump_restore, url, source=golden, target=target, tools=tools)

    rows: list[tuple[str, float]] = []
    base, _ = await timed(repeat, baseline, url)
    rows.append(("pg_dump -Fc | pg_restore", base))
    await mark_golden(url, golden)

    def clone_with(strategy: str | None) -> Callable[[str], Awaitable[object]]:
        async def make(target: str) -> object:
            return await cl.clone_database(url, template=golden, target=target,
                                           strategy=strategy)
        return make

    async def measure(label: str, strategy: str | None) -> None:
        seconds, result = await timed(repeat, clone_with(strategy), url)
        used = result.strategy if isinstance(result, cl.CloneResult) else "?"
        rows.append((f"clone {label} [{used}]", seconds))

    await measure("WAL_LOG", "WAL_LOG")
    if version >= 18:
        # The server marked as refusing clone: FILE_COPY with file_copy_method = copy.
        cl._CLONE_REFUSED.add(pgconn.where(url))
        await measure("FILE_COPY, copy", "FILE_COPY")
        cl._CLONE_REFUSED.clear()
        await measure("FILE_COPY, clone", "FILE_COPY")
    elif version >= 15:
        await measure("FILE_COPY", "FILE_COPY")
    await measure("automatic", None)

    role = f"{PREFIX}role"
    await execute(url, f"DROP ROLE IF EXISTS {quote_ident(role)}",
                  f"CREATE ROLE {quote_ident(role)}")
    pool = cl.WarmPool(url, prefix=PREFIX)
    await pool.fill(golden, repeat)

    async def take_and_adopt(target: str) -> None:
        assert await pool.take(golden, target)
        await cl.adopt(url, database=target, owner=role)

    seconds, _ = await timed(repeat, take_and_adopt, url)
    rows.append(("warm pool: take (rename) + adopt", seconds))

    width = max(len(label) for label, _ in rows)
    for label, seconds in rows:
        print(f"  {label:<{width}}  {seconds:7.2f} s   {base / seconds:6.1f}x")
    await pool.drain(golden)
    await execute(url, f"ALTER DATABASE {quote_ident(golden)} IS_TEMPLATE false")
    await drop(url, golden)
    await execute(url, f"DROP ROLE IF EXISTS {quote_ident(role)}")


async def sweep(url: str, sizes: list[int], *, repeat: int) -> None:
    version = int(str(await fetchval(url, "SHOW server_version_num"))) // 10000
    await prepare_dirty(url)
    print(f"PostgreSQL {version}: WAL_LOG vs FILE_COPY by size (median of {repeat}"
          + (f", {dirty_mb} MB dirtied before each" if dirty_mb else "") + ")")
    for mb in sizes:
        golden = f"{PREFIX}golden"
        await drop(url, golden)
        size = await make_source(url, golden, mb)
        await mark_golden(url, golden)
        cells = []
        # On 18, FILE_COPY twice: file_copy_method = copy (the server marked as refusing
        # clone), then clone.
        runs = [("WAL_LOG", False), ("FILE_COPY", False)] + (
            [("FILE_COPY", True)] if version >= 18 else [])
        for strategy, clone in runs:
            async def make(target: str, strategy: str = strategy,
                           golden: str = golden) -> object:
                return await cl.clone_database(url, template=golden, target=target,
                                               strategy=strategy)
            if version >= 18 and strategy == "FILE_COPY" and not clone:
                cl._CLONE_REFUSED.add(pgconn.where(url))
            seconds, result = await timed(repeat, make, url)
            cl._CLONE_REFUSED.clear()
            used = result.strategy if isinstance(result, cl.CloneResult) else "?"
            cells.append(f"{used} {seconds:6.3f} s")
        print(f"  {size / 2**20:6.0f} MB   " + "   ".join(cells))
        await execute(url, f"ALTER DATABASE {quote_ident(golden)} IS_TEMPLATE false")
        await drop(url, golden)
    await drop(url, DIRTY)


@contextlib.contextmanager
def btrfs_server(gigabytes: int) -> Iterator[str]:
    """The embedded PostgreSQL 18 with its data directory on a loop-mounted btrfs image."""
    import tempfile
    import warnings

    work = Path(tempfile.mkdtemp(prefix="bench-btrfs-"))
    image, mount = work / "fs.img", work / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(gigabytes * 2**30)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer

            (mount / "pgdata").mkdir()
            server = PostgresServer(mount / "pgdata", cleanup_mode="delete")
        try:
            yield str(server.get_uri("postgres"))
        finally:
            server._cleanup()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


async def reflink(url: str, sizes: list[int], *, repeat: int) -> None:
    method = await cl.clone_method(url)
    print(f"clone method: {method}")
    times: dict[int, float] = {}
    for mb in sizes:
        golden = f"{PREFIX}golden_{mb}"
        await drop(url, golden)
        started = time.monotonic()
        size = await make_source(url, golden, mb)
        await mark_golden(url, golden)
        print(f"  golden database {size / 2**20:6.0f} MB made in "
              f"{time.monotonic() - started:.0f} s", flush=True)

        async def make(target: str, golden: str = golden) -> object:
            return await cl.clone_database(url, template=golden, target=target)

        seconds, result = await timed(repeat, make, url)
        used = result.strategy if isinstance(result, cl.CloneResult) else "?"
        times[mb] = seconds
        print(f"  clone of {size / 2**20:6.0f} MB: {seconds:6.3f} s (median of {repeat}, "
              f"{used})", flush=True)
        await execute(url, f"ALTER DATABASE {quote_ident(golden)} IS_TEMPLATE false")
        await drop(url, golden)
    small, large = times[min(times)], times[max(times)]
    met = large < 1.5 * small and large < 1
    print(f"  {max(times)} MB / {min(times)} MB: {large / small:.2f}x "
          f"(goal: under 1.5x, and under 1 s: {'met' if met else 'not met'})")


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    if args.embedded:
        with embedded_postgres() as url:
            yield url
    else:
        yield args.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--embedded", action="store_true",
                        help="use a throw-away embedded PostgreSQL (18) instead of --url")
    parser.add_argument("--mb", type=int, default=200, help="golden database size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sweep", help="comma-separated sizes in MB: WAL_LOG vs FILE_COPY")
    parser.add_argument("--reflink", nargs="?", const="40,1024", metavar="SIZES",
                        help="PostgreSQL 18 on a loop-mounted btrfs image: clone times at "
                             "these sizes in MB (default 40,1024)")
    parser.add_argument("--dirty", type=int, default=0,
                        help="with --sweep: MB of other data updated before each copy")
    args = parser.parse_args()
    global dirty_mb  # noqa: PLW0603 - a setting of this one-shot script
    dirty_mb = args.dirty
    if args.reflink:
        sizes = [int(s) for s in args.reflink.split(",")]
        with btrfs_server(max(4, 3 * max(sizes) // 1024 + 2)) as url:
            asyncio.run(reflink(url, sizes, repeat=args.repeat))
        return
    with server(args) as url:
        if args.sweep:
            asyncio.run(sweep(url, [int(s) for s in args.sweep.split(",")], repeat=args.repeat))
        else:
            asyncio.run(run(url, mb=args.mb, repeat=args.repeat))


if __name__ == "__main__":
    main()
