"""What an environment costs: so far, and per day, from the blueprint's unit prices.

Why one module: the status card, `/ephem list`, `/ephem status`, the reminders, the budget
check on create and the App Home all show or use the same figures, so they are computed in one
function (`estimate`) and formatted by one (`describe`). Pure: no I/O, the caller passes the
environment row and the time.

What is priced (`cost` in the blueprint):
- compute: what the environment's namespace may request — the ResourceQuota's `requests.cpu`
  and `requests.memory` (else `cpu` and `memory`) from `phases.infra.kubernetes.quota` — at
  `cpu_hour` per CPU-hour and `gib_hour` per GiB-hour, for as long as the environment lives;
- the database: its size as the scheduler last measured it (`pg_database_size`), at
  `db_gb_day` per GB-day. Its cost so far assumes that size over the whole life (the size is
  measured, not its history).

Neighbours: `bot.config.Cost` (the prices), `bot.scheduler` (measures database sizes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.config import Blueprint
from bot.store.models import Environment

_DAY = timedelta(days=1)
_GB = 1e9
_GIB = float(1 << 30)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3, "Ti": 1024.0**4}


def quantity(text: str) -> float | None:
    """A Kubernetes quantity (`500m`, `2`, `4Gi`, `512M`) as a number; None if unreadable."""
    m = _QUANTITY.match(text.strip())
    if m is None or m.group(2) not in _SUFFIX:
        return None
    return float(m.group(1)) * _SUFFIX[m.group(2)]


@dataclass(frozen=True)
class Resources:
    """What one environment may use: CPUs and GiB of memory."""

    cpu: float = 0.0
    memory_gib: float = 0.0


def requested(blueprint: Blueprint) -> Resources:
    """The requests an environment's namespace allows (its ResourceQuota), or nothing."""
    infra = blueprint.phases.infra
    quota = infra.kubernetes.quota if infra is not None and infra.kubernetes is not None else {}
    cpu = quantity(quota.get("requests.cpu") or quota.get("cpu") or "0") or 0.0
    memory = quantity(quota.get("requests.memory") or quota.get("memory") or "0") or 0.0
    return Resources(cpu=cpu, memory_gib=memory / _GIB)


@dataclass(frozen=True)
class Estimate:
    so_far: float
    per_day: float
    currency: str = "$"


def per_day(blueprint: Blueprint, *, db_bytes: int | None = None) -> float:
    """What one environment costs a day, with a database of `db_bytes` (None: none measured)."""
    prices = blueprint.cost
    res = requested(blueprint)
    compute = (res.cpu * prices.cpu_hour + res.memory_gib * prices.gib_hour) * 24
    return compute + (db_bytes or 0) / _GB * prices.db_gb_day


def lived(env: Environment, now: datetime, *, since: datetime | None = None) -> timedelta:
    """How long the environment has lived up to `now` (or its destruction), counted from
    `since` when it is later than its creation (a month's start, for a budget)."""
    start = max(env.created_at, since) if since is not None else env.created_at
    end = min(env.destroyed_at or now, now)
    return max(end - start, timedelta(0))


def estimate(env: Environment, blueprint: Blueprint, now: datetime) -> Estimate | None:
    """The environment's cost so far and per day; None when the blueprint sets no prices."""
    if not blueprint.cost.priced:
        return None
    daily = per_day(blueprint, db_bytes=env.db_bytes)
    return Estimate(so_far=daily * (lived(env, now) / _DAY), per_day=daily,
                    currency=blueprint.cost.currency)


def spent(envs: Iterable[Environment], blueprint: Blueprint, now: datetime, *,
          since: datetime) -> float:
    """What `envs` cost between `since` and `now` (a channel's month, for its budget)."""
    return sum(per_day(blueprint, db_bytes=e.db_bytes) * (lived(e, now, since=since) / _DAY)
               for e in envs)


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def money(amount: float, currency: str = "$") -> str:
    """`$1.20`; amounts under a cent as `<$0.01` (not `$0.00`, which reads as free)."""
    if 0 < amount < 0.005:
        return f"<{currency}0.01"
    return f"{currency}{amount:,.2f}"


def describe(found: Estimate | None) -> str | None:
    """`$1.20 so far · $0.96/day`, or None without prices."""
    if found is None:
        return None
    return (f"{money(found.so_far, found.currency)} so far · "
            f"{money(found.per_day, found.currency)}/day")
