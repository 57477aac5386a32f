"""A stand-in "production" database for the example shop, for `ephem demo` and `bench/data.py`.

Why: the data phase is only convincing on data that looks real — names, emails, phone numbers,
addresses, free text that mentions them — and the demo must run on a machine with nothing on
it. `faker_rows` makes a small, realistic database with Faker; `bulk_rows` makes a large one
server-side (generate_series), fast enough to reach a gigabyte for the benchmark.

The schema comes from the example's own migrations, applied only up to `upto` — production
lags behind the environments, which get the newer migrations on top of the snapshot.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bot.config import example_blueprint_path
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data.migrations import discover, migrate

SHOP = example_blueprint_path().parent / "shop"
MIGRATIONS = SHOP / "migrations"
STATUSES = ("new", "paid", "shipped", "cancelled")
# Real city names that contain no first or last name: the masking rules keep `city`, and the
# leak check (rightly) fails a snapshot in which a person's name shows up anywhere — Faker's
# cities ("Lake Jennifer") would trip it.
CITIES = ("Springfield", "Portland", "Denver", "Boston", "Seattle", "Chicago", "Phoenix",
          "Atlanta", "Miami", "Detroit", "Memphis", "Tucson", "Omaha", "Tulsa", "Fresno",
          "Oakland", "Boise", "Reno", "Albany", "Richmond")


@dataclass(frozen=True)
class Production:
    url: str
    database: str
    customers: int
    bytes: int


async def create_database(admin_url: str, database: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {quote_ident(database)}")
    finally:
        await conn.close()
    return with_database(admin_url, database)


async def migrate_upto(url: str, upto: int, locations: Sequence[Path] = (MIGRATIONS,)) -> None:
    found = [m for m in discover(locations)
             if m.version is None or m.version_key <= (upto,)]
    await migrate(url, found, installed_by="shop-production")


async def make_production(admin_url: str, database: str, *, customers: int = 2000,
                          bulk: bool = False, upto: int = 2, seed: int = 7) -> Production:
    """Create `database` on the server behind `admin_url` and fill it."""
    url = await create_database(admin_url, database)
    await migrate_upto(url, upto)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if bulk:
            await bulk_rows(conn, customers=customers)
        else:
            await faker_rows(conn, customers=customers, seed=seed)
        await conn.execute("ANALYZE")
        size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
    return Production(url=url, database=database, customers=customers, bytes=size)


async def faker_rows(conn: asyncpg.Connection, *, customers: int, seed: int = 7) -> None:
    """Realistic rows made with Faker: a few orders per customer, tickets quoting contact data."""
    from faker import Faker

    fake = Faker("en_US")
    Faker.seed(seed)
    rnd = random.Random(seed)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    products = [(i, f"SKU-{i:05d}", fake.catch_phrase(), round(rnd.uniform(2, 300), 2))
                for i in range(1, 201)]
    people = []
    for i in range(1, customers + 1):
        first, last = fake.first_name(), fake.last_name()
        email = f"{first}.{last}{i}@{fake.free_email_domain()}".lower()
        people.append((i, email, first, last, fake.phone_number(), fake.street_address(),
                       rnd.choice(CITIES), fake.date_of_birth(minimum_age=18, maximum_age=90),
                       now - timedelta(days=rnd.randint(0, 1500)), None))
    orders: list[tuple[object, ...]] = []
    items: list[tuple[object, ...]] = []
    tickets: list[tuple[object, ...]] = []
    order_id = 0
    for person in people:
        for _ in range(rnd.randint(0, 5)):
            order_id += 1
            note = rnd.choice([None, None, f"Call {person[4]} before delivery",
                               f"Gift, send receipt to {person[1]}"])
            orders.append((order_id, person[0], now - timedelta(days=rnd.randint(0, 700)),
                           rnd.choice(STATUSES), round(rnd.uniform(5, 900), 2),
                           f"{person[5]}, {person[6]}", note))
            for line in range(1, rnd.randint(1, 4) + 1):
                items.append((order_id, line, rnd.randint(1, len(products)), rnd.randint(1, 5)))
        if rnd.random() < 0.4:
            body = (f"Hi, this is {person[2]} {person[3]}. My order has not arrived; reach me at "
                    f"{person[1]} or {person[4]}.")
            meta = json.dumps({"email": person[1], "ip": fake.ipv4(), "channel": "web"})
            tickets.append((len(tickets) + 1, person[0], now - timedelta(days=rnd.randint(0, 90)),
                            f"Order problem for {person[2]}", body, meta))
    await conn.copy_records_to_table("products", records=products,
                                     columns=["id", "sku", "name", "price"])
    await conn.copy_records_to_table(
        "customers", records=people,
        columns=["id", "email", "first_name", "last_name", "phone", "street", "city",
                 "birthday", "created_at", "favourite_order_id"])
    await conn.copy_records_to_table(
        "orders", records=orders,
        columns=["id", "customer_id", "placed_at", "status", "total", "shipping_address", "note"])
    await conn.copy_records_to_table("order_items", records=items,
                                     columns=["order_id", "line", "product_id", "quantity"])
    await conn.copy_records_to_table(
        "support_tickets", records=tickets,
        columns=["id", "customer_id", "opened_at", "subject", "body", "meta"])
    # The cycle: some customers' favourite order.
    await conn.execute("""
        UPDATE customers c SET favourite_order_id = o.id
        FROM (SELECT DISTINCT ON (customer_id) customer_id, id FROM orders
              ORDER BY customer_id, total DESC) o
        WHERE o.customer_id = c.id AND c.id % 3 = 0""")
    await _reset_sequences(conn)


async def bulk_rows(conn: asyncpg.Connection, *, customers: int) -> None:
    """Rows made server-side: 3 orders, ~7.5 lines and ~0.4 tickets per customer. Roughly
    1 GB (with indexes) per 1.2 million customers."""
    from faker import Faker

    fake = Faker("en_US")
    Faker.seed(11)
    firsts = [fake.first_name() for _ in range(500)]
    lasts = [fake.last_name() for _ in range(500)]
    cities = list(CITIES)
    await conn.execute("""
        INSERT INTO products (id, sku, name, price)
        SELECT i, 'SKU-' || lpad(i::text, 5, '0'), 'Product ' || i, (i % 300) + 0.99
        FROM generate_series(1, 1000) i""")
    await conn.execute("""
        INSERT INTO customers (id, email, first_name, last_name, phone, street, city, birthday,
                               created_at)
        SELECT i,
               lower(($1::text[])[1 + i % 500]) || '.' || lower(($2::text[])[1 + (i / 500) % 500])
                   || i || '@example.com',
               ($1::text[])[1 + i % 500], ($2::text[])[1 + (i / 500) % 500],
               '+1 (' || (200 + i % 700) || ') 555-' || lpad((i % 10000)::text, 4, '0'),
               (i % 9000 + 1) || ' ' || ($2::text[])[1 + i % 500] || ' Street',
               ($3::text[])[1 + i % 20],
               date '1950-01-01' + (i % 18000),
               timestamptz '2022-01-01' + (i % 1400) * interval '1 day'
        FROM generate_series(1, $4::int) i""", firsts, lasts, cities, customers)
    await conn.execute("""
        INSERT INTO orders (id, customer_id, placed_at, status, total, shipping_address, note)
        SELECT o, 1 + (o - 1) / 3, timestamptz '2024-01-01' + (o % 700) * interval '1 day',
               (ARRAY['new','paid','shipped','cancelled'])[1 + o % 4], (o % 900) + 0.5,
               (o % 9000 + 1) || ' Main Street, Springfield',
               CASE WHEN o % 5 = 0 THEN 'Leave at the door, call +1 (555) 010-' ||
                    lpad((o % 10000)::text, 4, '0') END
        FROM generate_series(1, $1::int * 3) o""", customers)
    await conn.execute("""
        INSERT INTO order_items (order_id, line, product_id, quantity)
        SELECT o, l, 1 + (o * 7 + l) % 1000, 1 + (o + l) % 4
        FROM generate_series(1, $1::int * 3) o, generate_series(1, 1 + (o % 4)) l""",
                       customers)
    await conn.execute("""
        INSERT INTO support_tickets (id, customer_id, opened_at, subject, body, meta)
        SELECT t, c.id, timestamptz '2026-01-01' + (t % 300) * interval '1 day',
               'Order problem', 'Please contact me at ' || c.email || ' or ' || c.phone ||
               '. ' || repeat('The parcel did not arrive. ', 4),
               jsonb_build_object('email', c.email, 'ip', '10.0.' || (t % 250) || '.' ||
                                  (t % 200), 'channel', 'web')
        FROM generate_series(1, $1::int * 2 / 5) t JOIN customers c ON c.id = t * 2""",
                       customers)
    await conn.execute("""
        UPDATE customers SET favourite_order_id = id * 3 WHERE id % 3 = 0""")
    await _reset_sequences(conn)


async def _reset_sequences(conn: asyncpg.Connection) -> None:
    for table in ("products", "customers", "orders", "support_tickets"):
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"coalesce((SELECT max(id) FROM {table}), 1))")
