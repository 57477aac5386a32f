"""The PII detector on a real database: what it flags, what it leaves alone, and how `lint`
holds a rules file against the source.

The source database is made once for the module, named with the session's `db_prefix`, and
dropped at the end.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from faker import Faker

from bot.errors import TemporaryError
from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data.detect import (
    Finding,
    _connect,
    detect,
    judge_name,
    judge_values,
    lint,
    missing_rules,
)
from pipelines.data.rules import parse_rules

ROWS = 300

SCHEMA = """
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN contact_text AS text;
CREATE TABLE customers (
    id serial PRIMARY KEY,
    email text,                 -- by name and by value
    contact contact_text,       -- emails under an innocent name (and a domain type)
    first_name text,            -- by name and by value
    who text,                   -- full names under an innocent name
    phone varchar(40),          -- by name and by value
    reach text,                 -- phone numbers under an innocent name
    payment_ref text,           -- card numbers
    acct text,                  -- IBANs
    extra text,                 -- free text, one in ten with an email in it
    meta jsonb,                 -- {"contact": {"email": …}}
    last_seen_from inet,        -- the type says IP address
    birthday date,              -- the name says date of birth
    -- innocuous
    created_at timestamptz NOT NULL DEFAULT now(),
    active boolean NOT NULL DEFAULT true,
    email_verified boolean NOT NULL DEFAULT false,
    status order_status NOT NULL DEFAULT 'new',
    sku text,
    title text,
    version text,
    colour text,
    price numeric(10, 2),
    quantity integer,
    login_count integer,
    tags text[],
    settings jsonb,
    never_set text
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id integer REFERENCES customers (id),
    total numeric(12, 2),
    shipped_on date,
    buyer_email text            -- a big table: sampled with TABLESAMPLE
);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id serial PRIMARY KEY, holder_email text, amount numeric);
"""

FLAGGED = {
    ("customers", "email"), ("customers", "contact"), ("customers", "first_name"),
    ("customers", "who"), ("customers", "phone"), ("customers", "reach"),
    ("customers", "payment_ref"), ("customers", "acct"), ("customers", "extra"),
    ("customers", "meta"), ("customers", "last_seen_from"), ("customers", "birthday"),
    ("orders", "buyer_email"),
}


async def _fill(conn: asyncpg.Connection) -> None:
    fake = Faker("en_US")
    fake.seed_instance(42)
    rnd = random.Random(42)
    await conn.execute(SCHEMA)
    rows = []
    for i in range(ROWS):
        email = fake.unique.email()
        rows.append((
            email, fake.unique.email(), fake.first_name(), fake.name(),
            f"+1 ({rnd.randint(200, 999)}) {rnd.randint(200, 999)}-{rnd.randint(0, 9999):04d}",
            fake.numerify("###-###-####"), fake.credit_card_number(card_type="visa16"),
            fake.iban(),
            fake.sentence() + (f" Reach me at {fake.email()}." if i % 10 == 0 else ""),
            f'{{"contact": {{"email": "{email}"}}, "tier": {i % 3}}}',
            fake.ipv4(), fake.date_of_birth(),
            f"SKU-{i:06d}", f"{rnd.choice(['Blue', 'Large', 'Steel'])} "
                            f"{rnd.choice(['Widget', 'Gadget', 'Lamp'])}",
            f"{i % 4}.{i % 7}.{i % 11}", rnd.choice(["Amber", "Ruby", "Green", "Grey"]),
            rnd.randint(100, 99999) / 100, rnd.randint(1, 20), rnd.randint(0, 500),
            ["sale", "new"] if i % 2 else ["clearance"],
            '{"theme": "dark", "page_size": 50}',
        ))
    await conn.executemany(
        "INSERT INTO customers (email, contact, first_name, who, phone, reach, payment_ref, acct,"
        " extra, meta, last_seen_from, birthday, sku, title, version, colour, price, quantity,"
        " login_count, tags, settings) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb,"
        " $11::inet, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21::jsonb)", rows)
    # Enough rows that the planner's estimate sends sampling through TABLESAMPLE.
    await conn.execute(
        "INSERT INTO orders (customer_id, total, shipped_on, buyer_email) "
        "SELECT 1 + g % $1, (g % 1000) / 7.0, date '2024-01-01' + g % 365, "
        "       'buyer' || g || '@shop.example' "
        "FROM generate_series(1, 60000) g", ROWS)
    await conn.execute("INSERT INTO billing.invoices (holder_email, amount) "
                       "SELECT 'holder' || g || '@corp.example', g FROM generate_series(1, 50) g")
    await conn.execute("ANALYZE")


@pytest.fixture(scope="module")
async def source(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    name = f"{db_prefix}detect_source"
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
        await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
        url = with_database(pg_admin_url, name)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await _fill(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await admin.close()


def _cols(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.table, f.column) for f in findings}


def _by_col(findings: list[Finding]) -> dict[tuple[str, str], Finding]:
    return {(f.table, f.column): f for f in findings}


# A rule for every flagged column: some mask, some say `keep` ("looked at, it is fine").
CUSTOMER_RULES: dict[str, object] = {
    "id": "keep", "email": "email", "contact": "email", "first_name": "first_name",
    "who": "full_name", "phone": "phone", "reach": "phone", "payment_ref": "hash",
    "acct": "redact", "extra": "redact", "last_seen_from": "null",
    "birthday": {"date_shift": {"days": 30}},
    "meta": {"json": {"paths": {"$.contact.email": "email"}}},
}
FULL_RULES = {
    "subset": {"roots": {"customers": "10%"}, "children": ["orders"]},
    # buyer_email's values are e-mail addresses: keeping them must say so.
    "tables": {"customers": CUSTOMER_RULES,
               "orders": {"buyer_email": {"keep": {"allow": ["email"]}}},
               "billing.invoices": {"holder_email": "email"}},
}


async def test_detect_flags_personal_columns_and_leaves_innocuous_ones(source: str) -> None:
    findings = await detect(source, sample=200)
    assert _cols(findings) == FLAGGED
    by = _by_col(findings)
    assert "looks like email addresses (sampled 200 values, 200 matched)" in by[
        ("customers", "contact")].reason
    assert "person names" in by[("customers", "who")].reason
    assert "phone numbers" in by[("customers", "reach")].reason
    assert "payment card numbers" in by[("customers", "payment_ref")].reason
    assert "IBAN" in by[("customers", "acct")].reason
    assert "free text containing email addresses" in by[("customers", "extra")].reason
    assert "JSON holds email addresses at $.contact.email" in by[("customers", "meta")].reason
    assert "IP addresses" in by[("customers", "last_seen_from")].reason
    assert "name suggests dates of birth" in by[("customers", "birthday")].reason
    # The big table was sampled, not read whole: at most `sample` values.
    assert "looks like email addresses (sampled 200 values" in by[
        ("orders", "buyer_email")].reason
    assert not any("@" in f.reason for f in findings)  # findings describe, never quote, data


async def test_detect_looks_only_in_the_schemas_asked_for(source: str) -> None:
    assert ("billing.invoices", "holder_email") not in _cols(await detect(source, sample=20))
    both = await detect(source, sample=20, schemas=("public", "billing"))
    assert ("billing.invoices", "holder_email") in _cols(both)


async def test_detect_with_no_sample_judges_by_name_and_type_only(source: str) -> None:
    cols = _cols(await detect(source, sample=0))
    assert {("customers", "email"), ("customers", "phone"), ("customers", "last_seen_from"),
            ("customers", "birthday"), ("orders", "buyer_email")} <= cols
    assert ("customers", "contact") not in cols and ("customers", "who") not in cols


async def test_the_detector_session_is_read_only(source: str) -> None:
    async with _connect(source) as conn:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("UPDATE customers SET email = NULL")


async def test_an_unreachable_source_is_temporary_and_hides_the_password() -> None:
    with pytest.raises(TemporaryError) as err:
        await detect("postgresql://ephem:hunter2@127.0.0.1:1/prod")
    assert "hunter2" not in str(err.value) and "127.0.0.1:1" in str(err.value)


async def test_missing_rules_passes_when_every_flagged_column_has_a_rule(source: str) -> None:
    findings = await detect(source, sample=100)
    rules = parse_rules(FULL_RULES, source="rules.yaml")
    assert missing_rules(findings, rules) == []
    partial = {k: v for k, v in CUSTOMER_RULES.items() if k not in ("reach", "meta")}
    fewer = parse_rules({"tables": {"customers": partial, "orders": {"buyer_email": "keep"}}},
                        source="rules.yaml")
    assert _cols(missing_rules(findings, fewer)) == {("customers", "reach"),
                                                     ("customers", "meta")}


async def test_lint_is_ok_with_full_rules(source: str) -> None:
    report = await lint(source, parse_rules(FULL_RULES, source="rules.yaml"), sample=100)
    assert report.ok and report.missing == [] and report.unknown == []
    # Every schema is linted, not only those the rules name: billing's emails are found.
    assert _cols(report.findings) == FLAGGED | {("billing.invoices", "holder_email")}
    assert report.render().startswith("ok: all 14 column(s)")


async def test_lint_reports_missing_rules_and_names_the_source_lacks(source: str) -> None:
    rules = parse_rules({
        "subset": {"roots": {"ghosts": "5%"}, "children": ["orders", "phantoms"]},
        "tables": {
            "customers": {"email": "email", "colour": "keep", "favourite_colour": "keep"},
            "billing.invoices": {"holder_email": "email", "iban": "redact"},
            "nowhere": {"x": "keep"},
        },
    }, source="rules.yaml")
    report = await lint(source, rules, sample=200)
    assert not report.ok
    assert set(report.unknown) == {
        "tables.customers.favourite_colour: no column 'favourite_colour' in customers",
        "tables.billing.invoices.iban: no column 'iban' in billing.invoices",
        "tables.nowhere: no table public.nowhere in the source",
        "subset.roots.ghosts: no table public.ghosts in the source",
        "subset.children: no table public.phantoms in the source",
    }
    # Every schema is linted; here the rule covers billing too.
    assert ("billing.invoices", "holder_email") in _cols(report.findings)
    assert _cols(report.missing) == FLAGGED - {("customers", "email")}
    text = report.render()
    assert ("customers.contact — looks like email addresses (sampled 200 values, 200 matched); "
            "add a rule (email, hash, redact, null, or keep)") in text
    assert re.search(r"customers\.extra — free text containing email addresses \(sampled 200 "
                     r"values, \d+ matched\); add a rule \(redact, regex, null, or keep\)", text)
    assert "customers.last_seen_from — an inet column: IP addresses; add a rule (null or keep)" \
        in text  # hash or redact would not be valid inet values
    assert "12 column(s) look personal and have no rule:" in text
    assert "5 rule(s) name what the source does not have:" in text
    assert "  customers.email —" not in text  # it has a rule


# --------------------------------------------------------------------------- pure judges


@pytest.mark.parametrize(("column", "kind", "expected"), [
    ("email", "string", ["email"]),
    ("customerEmail", "string", ["email"]),
    ("email_verified", "bool", []),
    ("email_status", "string", []),
    ("address_id", "numeric", []),
    ("billing_address_line1", "string", ["address"]),
    ("ip_address", "string", ["ip"]),
    ("zip", "numeric", ["address"]),
    ("national_id", "string", ["national_id"]),
    ("card_type", "string", []),
    ("password_hash", "string", ["secret"]),
    ("api_token", "uuid", ["secret"]),
    ("created_at", "datetime", []),
    ("date_of_birth", "datetime", ["birth"]),
    ("notes", "string", ["free_text"]),
    ("status", "enum", []),
    ("name", "string", []),  # products have names too: judged by its values
])
def test_judge_name(column: str, kind: str, expected: list[str]) -> None:
    assert judge_name(column, kind) == expected


def test_judge_values_ignores_look_alikes() -> None:
    assert judge_values(["2024-01-31", "2023-12-01"] * 50) == []  # dates are not phones
    assert judge_values([f"{i}.{i % 9}" for i in range(100)]) == []  # nor decimals
    # 16-digit ids: one in ten passes Luhn by chance, which is not a card column
    rnd = random.Random(7)
    assert judge_values([str(rnd.randrange(10**15, 10**16)) for _ in range(200)]) == []
    assert judge_values(["Amber", "Ruby", "Rose"] * 60) == []  # colours, not people
    assert judge_values(["April", "May", "June", "March", "July", "Other"] * 30) == []
