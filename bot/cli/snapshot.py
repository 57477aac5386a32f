"""`ephem snapshot build|lint|list`: masked snapshots from the terminal.

`lint` only runs the default-deny detector against the source and prints what needs a rule;
`build` lints, builds the golden database (progress on the terminal), fills the warm pool and
prints what it made; `list` shows the built snapshots on the target server.
"""

from __future__ import annotations

import time

from bot.config import Blueprint, DataPhaseConfig, Settings, SnapshotConfig, masking_key
from bot.errors import ConfigError, UserError
from bot.pg import asyncpg_dsn
from pipelines.data.clone import WarmPool
from pipelines.data.detect import lint
from pipelines.data.golden import list_snapshots
from pipelines.data.rules import load_rules
from pipelines.data.snapshot import BuildProgress, build_snapshot


def _data(settings: Settings, blueprint: Blueprint) -> tuple[DataPhaseConfig, str]:
    data = blueprint.phases.data
    if data is None or not data.snapshots:
        raise ConfigError("the blueprint configures no snapshots (phases.data.snapshots)")
    server = data.server or settings.database_url
    if not server:
        raise ConfigError("set phases.data.server in the blueprint or EPHEM_DATABASE_URL: "
                          "snapshots are built on that server")
    return data, server


def _config(data: DataPhaseConfig, name: str | None) -> tuple[str, SnapshotConfig]:
    chosen = name or data.default_snapshot
    if chosen is None or chosen not in data.snapshots:
        known = ", ".join(data.snapshots)
        raise UserError(f"no snapshot `{chosen}` in the blueprint (known: {known})")
    return chosen, data.snapshots[chosen]


async def lint_snapshot(settings: Settings, blueprint: Blueprint, name: str | None) -> int:
    data, _ = _data(settings, blueprint)
    chosen, cfg = _config(data, name)
    report = await lint(asyncpg_dsn(cfg.source), load_rules(cfg.rules))
    print(report.render())
    print(f"snapshot {chosen}: " + ("ready to build" if report.ok else "needs rules first"))
    return 0 if report.ok else 1


async def build(settings: Settings, blueprint: Blueprint, name: str | None) -> int:
    data, server = _data(settings, blueprint)
    chosen, cfg = _config(data, name)
    key = masking_key(settings)
    if not key:
        raise ConfigError("set EPHEM_MASKING_KEY (or EPHEM_SECRET_KEY): masking is keyed")

    async def progress(p: BuildProgress) -> None:
        eta = f", about {p.eta_seconds:.0f}s left" if p.eta_seconds is not None else ""
        print(f"  {p.tables_done}/{p.tables_total} tables ({p.table}), {p.rows} rows, "
              f"{p.rows_per_second:,.0f} rows/s{eta}", flush=True)

    print(f"building snapshot {chosen} from {cfg.rules.name} …", flush=True)
    info = await build_snapshot(name=chosen, config=cfg, target_admin_url=server,
                                prefix=data.database_prefix, key=key, progress=progress)
    print(f"built {info.database}: {info.tables} tables, {info.rows} rows, "
          f"{info.bytes / 1e6:.1f} MB in {info.seconds:.1f}s")
    print("  " + ", ".join(f"{step} {seconds:.2f}s" for step, seconds in info.steps.items()))
    if cfg.pool > 0:
        started = time.monotonic()
        made = await WarmPool(server, prefix=data.database_prefix).fill(info.database, cfg.pool)
        print(f"warm pool: {made} clone(s) ready in {time.monotonic() - started:.1f}s")
    return 0


async def show(settings: Settings, blueprint: Blueprint) -> int:
    data, server = _data(settings, blueprint)
    found = await list_snapshots(server, prefix=data.database_prefix)
    if not found:
        print("no snapshots built yet")
    for info in found:
        print(f"{info.name:16} {info.database:48} {info.built_at:%Y-%m-%d %H:%M} "
              f"{info.rows:>10} rows {info.bytes / 1e6:8.1f} MB")
    return 0
