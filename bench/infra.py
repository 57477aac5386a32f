"""What Ephem's infra phase costs on top of Terraform itself, for one environment and for twenty.

    python bench/infra.py                  # PostgreSQL on 127.0.0.1:5432, the example module
    python bench/infra.py --url postgresql://…/postgres --seconds 1 --repeat 5 --many 20

On the example module (`bot/examples/infra`: ten `terraform_data` resources, each provisioning
for `--seconds`), with state in the pg backend of a fresh database, it measures in one run:

- one environment: Ephem's infra phase (`InfraPhase.apply`: working directory, init, workspace,
  `apply -json` streamed to the card, the outputs read from the state) in a bot that has
  been running (its tools' supervisor zygote started, one environment applied before the
  measured ones) against the same steps run by hand
  (`init`, `workspace new`, `apply -auto-approve`) — median of `--repeat`, runs alternating;
- `--many` environments at once: one bot process applying them all concurrently against as many
  hand-run sequences started at once — median of `--repeat`, runs alternating;
- the bot's peak RSS (the Ephem arm runs in a process of its own that reports `ru_maxrss`).

Goals: Ephem adds under 10 % for one environment, stays within 10 % for twenty, and its peak
RSS stays under 300 MB. Everything it makes is in a database `bench_infra_<random>`, dropped at
the end, and a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot import proc
from bot.config import Blueprint, TerraformBackend, TerraformConfig
from bot.domain import DataMode, DataRequest, ReleaseSet
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.base import PhaseContext
from pipelines.infra.phase import InfraPhase
from pipelines.infra.terraform import TerraformProvider, backend_url, find_binary

MODULE = ROOT / "bot" / "examples" / "infra"
SCHEMA = "ephem_tf"


def variables(name: str, seconds: float) -> dict[str, object]:
    return {"env_name": name, "owner": "U_BENCH", "api_version": "2.8.0",
            "provisioning_seconds": seconds}


# --------------------------------------------------------------------------- by hand


def by_hand(binary: str, state_url: str, work: Path, name: str, seconds: float) -> float:
    """init, workspace (made), apply: what a person runs for one environment."""
    started = time.monotonic()
    wd = work / f"hand-{name}"
    shutil.copytree(MODULE, wd)
    (wd / "backend.tf").write_text('terraform {\n  backend "pg" {}\n}\n')
    (wd / "terraform.tfvars.json").write_text(json.dumps(variables(name, seconds)))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "PG_CONN_STR": backend_url(state_url, application_name="by-hand"),
           "PG_SCHEMA_NAME": SCHEMA, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1",
           "TF_CLI_CONFIG_FILE": "/dev/null"}
    subprocess.run([binary, "init", "-input=false"], cwd=wd, env=env, check=True,
                   capture_output=True)
    for _ in range(300):  # the pg backend creates one workspace at a time; the rest fail: retry
        made = subprocess.run([binary, "workspace", "new", f"hand-{name}"], cwd=wd, env=env,
                              capture_output=True, check=False)
        if made.returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(made.stderr.decode())
    applied = subprocess.run([binary, "apply", "-auto-approve", "-input=false",
                              "-lock-timeout=120s", "-parallelism=10"],
                             cwd=wd, env=env, capture_output=True, check=False)
    if applied.returncode != 0:
        raise RuntimeError(applied.stdout.decode()[-2000:] + applied.stderr.decode()[-2000:])
    return time.monotonic() - started


# ------------------------------------------------------------ Ephem (its own process)


async def ephem_worker(state_url: str, work: Path, names: list[str], seconds: float) -> dict[
        str, object]:
    config = TerraformConfig(
        module=MODULE, workdir=work, backend=TerraformBackend(schema_name=SCHEMA),
        variables={**variables("{env.name}", seconds)}, timeout=timedelta(minutes=10),
        parallelism=10)
    phase = InfraPhase(terraform=TerraformProvider(config, state_url=state_url))
    updates = 0

    async def emit(_: str) -> None:
        nonlocal updates
        updates += 1

    def ctx(i: int, name: str) -> PhaseContext:
        return PhaseContext(env_id=10_000 + i, name=name, owner_id="U_BENCH",
                            release_set=ReleaseSet({"api": "2.8.0"}),
                            data=DataRequest(DataMode.NONE), blueprint=Blueprint(), outputs={},
                            emit=emit)

    # A bot has been running when a request comes: its tools' zygote started, its first
    # connection made, the state table known. One environment applied first, not measured.
    await proc.prepare()
    await phase.apply(ctx(len(names), f"warm-{names[0]}"))
    started = time.monotonic()
    await asyncio.gather(*(phase.apply(ctx(i, n)) for i, n in enumerate(names)))
    took = time.monotonic() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": took, "rss_mb": rss, "card_updates": updates}


def run_ephem(state_url: str, work: Path, names: list[str], seconds: float) -> dict[str, float]:
    spec = json.dumps({"state_url": state_url, "work": str(work), "names": names,
                       "seconds": seconds})
    done = subprocess.run([sys.executable, __file__, "--worker", spec], check=True,
                          capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the run


async def make_database(url: str) -> str:
    name = f"bench_infra_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()
    return name


async def drop_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def ratio(ephem: float, hand: float) -> str:
    return f"{ephem / hand:.2f}x ({(ephem / hand - 1) * 100:+.1f} %)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--seconds", type=float, default=0.5, help="provisioning time per resource")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--many", type=int, default=20)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(asyncio.run(ephem_worker(spec["state_url"], Path(spec["work"]),
                                                  spec["names"], spec["seconds"]))))
        return
    binary = find_binary(None)
    if binary is None:
        sys.exit("no terraform or tofu on PATH")
    database = asyncio.run(make_database(args.url))
    state_url = with_database(args.url, database)
    work = Path(tempfile.mkdtemp(prefix="bench-infra-"))
    try:
        # A first apply of each kind, not measured: schema creation, caches warmed.
        by_hand(binary, state_url, work, "warm-hand", args.seconds)
        run_ephem(state_url, work, ["warm-ephem"], args.seconds)
        hand_one, ephem_one, rss = [], [], []
        for i in range(args.repeat):
            first, second = ("hand", "ephem") if i % 2 == 0 else ("ephem", "hand")
            for arm in (first, second):
                if arm == "hand":
                    hand_one.append(by_hand(binary, state_url, work, f"one-{i}", args.seconds))
                else:
                    got = run_ephem(state_url, work, [f"one-{i}"], args.seconds)
                    ephem_one.append(got["seconds"])
                    rss.append(got["rss_mb"])
        hand_runs, ephem_runs, updates = [], [], 0.0
        for r in range(args.repeat):
            names = [f"many{r}-{i}" for i in range(args.many)]
            for arm in (("hand", "ephem") if r % 2 == 0 else ("ephem", "hand")):
                if arm == "hand":
                    started = time.monotonic()
                    with ThreadPoolExecutor(max_workers=args.many) as pool:
                        list(pool.map(lambda n: by_hand(binary, state_url, work, f"h{n}",
                                                        args.seconds), names))
                    hand_runs.append(time.monotonic() - started)
                else:
                    many = run_ephem(state_url, work, names, args.seconds)
                    ephem_runs.append(many["seconds"])
                    rss.append(many["rss_mb"])
                    updates = many["card_updates"]
        hand_many, ephem_many = statistics.median(hand_runs), statistics.median(ephem_runs)
    finally:
        asyncio.run(drop_database(args.url, database))
        shutil.rmtree(work, ignore_errors=True)

    h1, e1 = statistics.median(hand_one), statistics.median(ephem_one)
    print(f"terraform: {binary}; module: {MODULE.relative_to(ROOT)} (10 resources, "
          f"{args.seconds:g} s each); {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    print(f"{'':34}{'by hand':>12}{'Ephem':>12}   ratio (goal)")
    print(f"{'one environment (median of ' + str(args.repeat) + ')':34}{h1:>11.2f}s{e1:>11.2f}s"
          f"   {ratio(e1, h1)} (< 1.10)")
    print(f"{str(args.many) + ' at once (median of ' + str(args.repeat) + ')':34}"
          f"{hand_many:>11.2f}s{ephem_many:>11.2f}s   {ratio(ephem_many, hand_many)} (< 1.10)")
    print(f"{'bot peak RSS':34}{'':>12}{max(rss):>10.0f}MB   (goal < 300 MB)")
    print(f"card updates for {args.many} environments: {updates:.0f}")


if __name__ == "__main__":
    main()
