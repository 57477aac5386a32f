"""What environments cost (`bot.cost`), and the blueprint keys of the lifecycle: prices, quotas,
reminders, reconciliation — valid ones read, wrong ones refused naming the key path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot import cost
from bot.config import parse_blueprint
from bot.domain import DataMode, EnvStatus
from bot.errors import ConfigError
from bot.store.models import Environment

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _env(*, lived: timedelta, db_bytes: int | None = None,
         destroyed: timedelta | None = None) -> Environment:
    return Environment(name="c-1", owner_id="U1", channel_id="C1", status=EnvStatus.READY,
                       data_mode=DataMode.SEED, created_at=NOW - lived,
                       expires_at=NOW + timedelta(days=1), db_bytes=db_bytes,
                       destroyed_at=NOW - destroyed if destroyed is not None else None)


@pytest.mark.parametrize(("text", "value"), [
    ("2", 2.0), ("500m", 0.5), ("4Gi", 4 * 2.0**30), ("512Mi", 512 * 2.0**20),
    ("1G", 1e9), ("1.5", 1.5), ("lots", None), ("3Zi", None), ("", None),
])
def test_kubernetes_quantities(text: str, value: float | None) -> None:
    assert cost.quantity(text) == value


def test_compute_is_priced_on_the_namespace_quota_and_the_database_on_its_size() -> None:
    blueprint = parse_blueprint({
        "phases": {"infra": {"kubernetes": {"quota": {"requests.cpu": "2",
                                                      "requests.memory": "4Gi"}}}},
        "cost": {"cpu_hour": 0.05, "gib_hour": 0.01, "db_gb_day": 0.5, "currency": "€"},
    })
    assert cost.requested(blueprint) == cost.Resources(cpu=2.0, memory_gib=4.0)
    # (2 * 0.05 + 4 * 0.01) * 24 = 3.36 a day of compute; 10 GB * 0.5 = 5 a day of database.
    found = cost.estimate(_env(lived=timedelta(hours=12), db_bytes=10 * 10**9), blueprint, NOW)
    assert found is not None
    assert found.per_day == pytest.approx(8.36)
    assert found.so_far == pytest.approx(4.18)
    assert cost.describe(found) == "€4.18 so far · €8.36/day"

    # A destroyed environment stopped costing when it went.
    gone = cost.estimate(_env(lived=timedelta(days=2), destroyed=timedelta(days=1)),
                         blueprint, NOW)
    assert gone is not None and gone.so_far == pytest.approx(3.36)
    # A budget counts only this month's share.
    month = cost.month_start(NOW)
    old = _env(lived=NOW - month + timedelta(days=10))
    assert cost.spent([old], blueprint, NOW, since=month) == pytest.approx(
        3.36 * (NOW - month) / timedelta(days=1))


def test_no_prices_no_cost_and_tiny_amounts_are_not_free() -> None:
    assert cost.estimate(_env(lived=timedelta(days=1)), parse_blueprint({}), NOW) is None
    assert cost.describe(None) is None
    assert cost.money(0.001) == "<$0.01"
    assert cost.money(0) == "$0.00"
    assert cost.money(1234.5) == "$1,234.50"


def test_lifecycle_keys_are_read_and_defaults_hold() -> None:
    blueprint = parse_blueprint({
        "defaults": {"remind_before": "2h", "last_remind_before": "20m"},
        "channels": {"operators": "COPS"},
        "quotas": {"per_user": 3, "per_channel": 10},
        "cost": {"monthly_channel_budget": 250},
        "reconcile": {"every": "5m", "grace": "2h"},
    })
    assert blueprint.defaults.last_reminder == timedelta(minutes=20)
    assert blueprint.channels.operators == "COPS"
    assert (blueprint.quotas.per_user, blueprint.quotas.per_channel) == (3, 10)
    assert blueprint.reconcile.grace == timedelta(hours=2)
    # Unset, the last reminder is an hour ahead, or a quarter of `remind_before` when shorter.
    assert parse_blueprint({}).defaults.last_reminder == timedelta(hours=1)
    short = parse_blueprint({"defaults": {"remind_before": "2h"}})
    assert short.defaults.last_reminder == timedelta(minutes=30)


@pytest.mark.parametrize(("raw", "says"), [
    ({"quotas": {"per_user": 0}}, "quotas.per_user: Input should be greater than or equal to 1"),
    ({"quotas": {"per_chanel": 3}}, "quotas.per_chanel: unknown key `per_chanel`; did you mean "
                                    "`per_channel`?"),
    ({"cost": {"cpu_hour": -1}}, "cost.cpu_hour: Input should be greater than or equal to 0"),
    ({"cost": {"monthly_channel_budget": 0}}, "cost.monthly_channel_budget: Input should be "
                                              "greater than 0"),
    ({"defaults": {"remind_before": "1h", "last_remind_before": "2h"}},
     "defaults: `last_remind_before` must be shorter than `remind_before`"),
    ({"reconcile": {"grace": "soon"}}, "reconcile.grace: `soon` is not a duration"),
])
def test_wrong_lifecycle_keys_are_refused_naming_the_key_path(raw: dict[str, object],
                                                              says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_blueprint(raw)
    assert says in str(caught.value), str(caught.value)
