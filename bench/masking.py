"""How many values a second each column masker handles on one core.

    python bench/masking.py            # a table: transformer, unique values/s, repeated values/s
    python bench/masking.py -n 500000  # more values per run

`unique` streams distinct values (every call misses the masker's cache: the worst case);
`repeated` streams values drawn from 10 000 distinct ones (a realistic column: cities, names,
the same customer's email on many orders). The reference line is Faker seeded per value, the
obvious implementation the maskers avoid. The target for hash, email and first_name is at least
200 000 unique values a second.

A second table times the keyed transformers themselves, without any cache, in Python and
compiled (`pipelines/data/_fastmask.c`), side by side: the cost of one cache miss.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import date

from faker import Faker

from pipelines.data import masking
from pipelines.data.masking import make_masker
from pipelines.data.rules import ColumnRule

KEY = b"bench-masking-key-0123456789abcdef"

CASES: list[tuple[ColumnRule, Callable[[int], str]]] = [
    (ColumnRule("hash"), lambda i: f"user-{i}@corp.example"),
    (ColumnRule("email"), lambda i: f"user-{i}@corp.example"),
    (ColumnRule("first_name"), lambda i: f"Name{i}"),
    (ColumnRule("full_name"), lambda i: f"Name{i} Surname{i}"),
    (ColumnRule("address"), lambda i: f"{i} Main Street"),
    (ColumnRule("phone", {"keep_prefix": 1}), lambda i: f"+1 (555) {i % 1000:03d}-{i:04d}"),
    (ColumnRule("date_shift", {"days": 60}),
     lambda i: f"{date.fromordinal(712_000 + i % 20_000)} {i // 20_000 % 24:02d}:00:00+00"),
    (ColumnRule("number_noise", {"ratio": 0.1}), lambda i: f"{i}.{i % 100:02d}"),
    (ColumnRule("template", {"format": "ORD-{hash:8}"}), lambda i: f"order-{i}"),
    (ColumnRule("regex", {"pattern": r"\d+", "replace": "#"}), lambda i: f"{i} Main Street"),
    (ColumnRule("json", {"paths": {"$.contact.email": "email"}}),
     lambda i: f'{{"contact": {{"email": "u{i}@corp.example", "tier": 3}}}}'),
]


def rate(rule: ColumnRule, values: list[str]) -> float:
    masker = make_masker(rule, key=KEY)
    start = time.perf_counter()
    for v in values:
        masker(v)
    return len(values) / (time.perf_counter() - start)


def per_value(transform: Callable[[str], str | None], values: list[str]) -> float:
    """Microseconds per value, the best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for v in values:
            transform(v)
        best = min(best, time.perf_counter() - start)
    return best / len(values) * 1e6


def compiled_table(n: int) -> None:
    print(f"\nper value, no cache (SHA-256: {getattr(masking._fastmask, 'SHA256', '-')})")
    print(f"{'transformer':<14}{'python µs':>11}{'C µs':>9}{'ratio':>8}")
    cases = [*CASES, (ColumnRule("last_name"), lambda i: f"Name{i}"),
             (ColumnRule("phone"), lambda i: f"+44 20 {7000 + i % 3000} {i % 10_000:04d}"),
             (ColumnRule("template", {"format": "{hash:64}-{hash:16}-{digits:40}"}),
              lambda i: f"order-{i}")]
    for rule, value in cases:
        name = rule.transformer
        if name not in masking._COMPILED_MAKERS:
            continue
        values = [value(i) for i in range(n)]
        python = masking._PYTHON_BUILDERS[name](rule.params, KEY)
        slow = per_value(python, values)
        label = {"template": f"template:{rule.params.get('format', '').count('{')}f",
                 "phone": f"phone:kp{rule.params.get('keep_prefix', '-')}"}.get(name, name)
        if not masking.COMPILED:
            print(f"{label:<14}{slow:>11.2f}{'-':>9}{'-':>8}")
            continue
        fast = per_value(masking._BUILDERS[name](rule.params, KEY), values)
        print(f"{label:<14}{slow:>11.2f}{fast:>9.2f}{slow / fast:>7.1f}x")


def faker_seeded(n: int) -> float:
    fake = Faker("en_US")
    start = time.perf_counter()
    for i in range(n):
        fake.seed_instance(i)
        fake.first_name()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="values per run")
    n = parser.parse_args().n
    rng = random.Random(1)
    print(f"{'transformer':<14}{'unique/s':>12}{'repeated/s':>12}")
    for rule, value in CASES:
        make_masker(rule, key=KEY)(value(0))  # word lists load once per process
        unique = [value(i) for i in range(n)]
        repeated = [value(rng.randrange(10_000)) for _ in range(n)]
        print(f"{rule.transformer:<14}{rate(rule, unique):>12,.0f}{rate(rule, repeated):>12,.0f}")
    print(f"{'faker/value':<14}{faker_seeded(min(n, 20_000)):>12,.0f}{'':>12}")
    compiled_table(min(n, 100_000))


if __name__ == "__main__":
    main()
