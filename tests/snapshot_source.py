"""A small "production" database for the subset and snapshot tests, and rules for it.

Shapes that make subsetting and schema copying hard on purpose: a foreign-key cycle
(customers.favourite_order_id → orders, orders.customer_id → customers), a self-reference
(employees.manager_id), a composite key and a composite foreign key (order_items → products),
unique and check constraints, an enum, a domain, a generated column, identity and serial
columns, an index, a view, a function and a trigger, a table nothing references, and a
migration history (`schema_migrations`, Rails-style) that a subset must copy whole.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from faker import Faker

from bot.pg import asyncpg_dsn, quote_ident, with_database

CUSTOMERS = 200
PRODUCTS = 30
ORDERS = 600
EMPLOYEES = 40

SCHEMA = """
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    email text NOT NULL,
    full_name text NOT NULL,
    contact text,
    favourite_order_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_email_key UNIQUE (email),
    CONSTRAINT customers_email_check CHECK (email LIKE '%@%')
);
CREATE TABLE products (
    sku text NOT NULL,
    region text NOT NULL,
    title text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents >= 0),
    PRIMARY KEY (sku, region)
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status order_status NOT NULL DEFAULT 'new',
    ship_email text,
    total_cents bigint NOT NULL DEFAULT 0,
    total numeric GENERATED ALWAYS AS (total_cents / 100.0) STORED,
    UNIQUE (customer_id, id)
);
ALTER TABLE customers ADD CONSTRAINT customers_favourite_order_fk
    FOREIGN KEY (favourite_order_id) REFERENCES orders (id);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders (id),
    line integer NOT NULL,
    sku text NOT NULL,
    region text NOT NULL,
    quantity positive_int NOT NULL,
    PRIMARY KEY (order_id, line),
    CONSTRAINT order_items_product_fk FOREIGN KEY (sku, region) REFERENCES products (sku, region)
);
CREATE TABLE employees (
    id integer PRIMARY KEY,
    manager_id integer REFERENCES employees (id),
    badge text NOT NULL UNIQUE
);
CREATE TABLE audit_log (id serial PRIMARY KEY, event text NOT NULL);
CREATE TABLE schema_migrations (version text PRIMARY KEY);
INSERT INTO schema_migrations VALUES ('20240101'), ('20240202'), ('20240303');
CREATE INDEX orders_status_idx ON orders (status);
CREATE VIEW paid_orders AS SELECT id, customer_id FROM orders WHERE status = 'paid';
CREATE FUNCTION touch_total() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.total_cents := coalesce(NEW.total_cents, 0); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION touch_total();
"""

RULES = """
subset:
  roots: {ROOTS}
  children: {CHILDREN}
tables:
  customers:
    id: keep
    email: email
    full_name: full_name
    contact: {CONTACT}
    favourite_order_id: keep
    created_at: keep
  orders:
    ship_email: email
  products:
    title: keep
  employees:
    badge: keep
  audit_log:
    event: keep
"""


def rules_text(*, roots: str = "{}", children: str = "[]", contact: str = "email") -> str:
    return (RULES.replace("{ROOTS}", roots).replace("{CHILDREN}", children)
            .replace("{CONTACT}", contact))


def write_rules(path: Path, **kwargs: str) -> Path:
    path.write_text(rules_text(**kwargs), encoding="utf-8")
    return path


async def create_source(admin_url: str, name: str) -> str:
    """Create and fill the source database `name`; its URL."""
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(SCHEMA)
        await _fill(conn)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return url


async def _fill(conn: asyncpg.Connection) -> None:
    fake = Faker("en_US")
    Faker.seed(1234)
    emails = [f"{fake.user_name()}{i}@{fake.free_email_domain()}" for i in range(CUSTOMERS)]
    # Every third customer's contact is their email (a copy the leak check must catch when
    # `contact` is kept); the others have a phone number.
    await conn.copy_records_to_table("customers", columns=["email", "full_name", "contact"],
                                     records=[(e, fake.name(),
                                               e if i % 3 == 0 else fake.phone_number())
                                              for i, e in enumerate(emails)])
    await conn.copy_records_to_table(
        "products", columns=["sku", "region", "title", "price_cents"],
        records=[(f"SKU-{i:03d}", region, f"Widget {i} ({region})", 100 + i * 7)
                 for i in range(PRODUCTS // 2) for region in ("eu", "us")])
    await conn.execute(
        f"""INSERT INTO orders (customer_id, status, ship_email, total_cents)
            SELECT c.id, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]::order_status,
                   CASE WHEN g % 2 = 0 THEN c.email END, g * 13
            FROM generate_series(1, {ORDERS}) g
            JOIN customers c ON c.id = 1 + (g * 7) % {CUSTOMERS}""")
    await conn.execute(
        f"""INSERT INTO order_items (order_id, line, sku, region, quantity)
            SELECT o.id, l, 'SKU-' || lpad(((o.id * 3 + l) % {PRODUCTS // 2})::text, 3, '0'),
                   CASE WHEN l % 2 = 0 THEN 'eu' ELSE 'us' END, 1 + (o.id + l) % 5
            FROM orders o, generate_series(1, 1 + o.id::int % 4) l""")
    # The cycle: a customer's favourite order is often another customer's.
    await conn.execute(
        f"""UPDATE customers c SET favourite_order_id = o.id FROM orders o
            WHERE c.id % 5 = 0 AND o.id = 1 + (c.id * 11) % {ORDERS}""")
    await conn.execute(
        f"""INSERT INTO employees (id, manager_id, badge)
            SELECT g, CASE WHEN g > 1 THEN g / 2 END, 'B-' || g
            FROM generate_series(1, {EMPLOYEES}) g""")
    await conn.execute("INSERT INTO audit_log (event) SELECT 'event ' || g "
                       "FROM generate_series(1, 50) g")
