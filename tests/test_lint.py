"""Default-deny inside columns: the lint refuses rule sets that exist but let personal data
through — a JSON rule missing a path, a regex that misses a format, `keep` on card numbers or
on free text — and accepts the complete set, on a real source database shaped like the outside
check's (a JSON contact on every order, personal data in a fifth of the free text, Luhn-valid
card numbers, digit-only phone numbers, a cardholder column).

The source is made once for the module (named with the session's `db_prefix`) and dropped at
the end; nothing here builds a snapshot.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from faker import Faker

from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data.detect import LintReport, lint
from pipelines.data.patterns import luhn_ok
from pipelines.data.rules import parse_rules

CUSTOMERS = 200

SCHEMA = """
CREATE TABLE customers (
    id integer PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text NOT NULL,
    phone text,
    notes text,
    bdate date
);
CREATE TABLE orders (
    id integer PRIMARY KEY,
    customer_email text NOT NULL REFERENCES customers (email),
    meta jsonb NOT NULL,
    note text
);
CREATE TABLE payments (
    id integer PRIMARY KEY,
    pan text NOT NULL,
    cardholder text NOT NULL
);
"""

EMAIL_OR_PHONE = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\+?\(?\d[\d ()-]{7,}\d"
EMAIL_ONLY = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
COMPLETE: dict[str, Any] = {"tables": {
    "customers": {
        "email": "email", "full_name": "full_name", "phone": "phone",
        "notes": {"regex": {"pattern": EMAIL_OR_PHONE, "replace": "[contact]"}},
        "bdate": {"date_shift": {"days": 90}},
    },
    "orders": {
        "customer_email": "email",
        "meta": {"json": {"paths": {"$.contact.email": "email", "$.contact.phone": "phone",
                                    "$.contact.name": "full_name"}}},
        "note": {"regex": {"pattern": EMAIL_OR_PHONE, "replace": "[contact]"}},
    },
    "payments": {"pan": {"template": {"format": "4000{digits:12}"}}, "cardholder": "full_name"},
}}


def _card(rnd: random.Random) -> str:
    payload = "4" + "".join(str(rnd.randrange(10)) for _ in range(14))
    return next(payload + d for d in "0123456789" if luhn_ok(payload + d))


async def _fill(conn: asyncpg.Connection) -> None:
    fake = Faker("en_GB")
    fake.seed_instance(11)
    rnd = random.Random(11)
    await conn.execute(SCHEMA)
    customers = []
    for i in range(1, CUSTOMERS + 1):
        email = f"{fake.user_name()}{i}@{fake.free_email_domain()}"
        # Half the phones are written as digits only, with the trunk prefix.
        phone = f"07{rnd.randrange(10**8, 10**9)}" if i % 2 else f"+44 20 7946 {i:04d}"
        notes = (f"Prefers a call on {phone}" if i % 5 == 0 else
                 rnd.choice(["VIP since 2019", "Pays by invoice", "No marketing"]))
        customers.append((i, email, fake.name(), phone, notes,
                          fake.date_of_birth(minimum_age=18, maximum_age=85)))
    await conn.copy_records_to_table("customers", records=customers)
    orders = []
    for o in range(1, 2 * CUSTOMERS + 1):
        _, email, name, phone, _, _ = customers[(o - 1) // 2]
        meta = {"contact": {"email": email, "phone": phone, "name": name},
                "channel": rnd.choice(["web", "app"]), "items": [{"sku": f"S{o % 7}"}]}
        note = (f"Call {phone} before delivery" if o % 5 == 0 else
                f"Receipt to {email}" if o % 5 == 1 and o % 2 == 0 else
                rnd.choice(["Leave at the door", "Ring twice"]))
        orders.append((o, email, json.dumps(meta), note))
    await conn.copy_records_to_table("orders", records=orders)
    await conn.copy_records_to_table(
        "payments", records=[(p, _card(rnd), customers[p - 1][2])
                             for p in range(1, CUSTOMERS + 1)])
    await conn.execute("ANALYZE")


@pytest.fixture(scope="module")
async def source(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    name = f"{db_prefix}lint_source"
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    try:
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


async def _lint(source: str, change: dict[str, dict[str, object]] | None = None) -> LintReport:
    raw = copy.deepcopy(COMPLETE)
    for table, columns in (change or {}).items():
        raw["tables"][table].update(columns)
    return await lint(source, parse_rules(raw, source="masking.yaml"), sample=200)


async def _personal_values(source: str) -> list[str]:
    conn = await asyncpg.connect(asyncpg_dsn(source))
    try:
        rows = await conn.fetch("SELECT email, phone FROM customers "
                                "UNION ALL SELECT pan, cardholder FROM payments")
        return [v for r in rows for v in r]
    finally:
        await conn.close()


async def test_the_complete_rules_pass_and_the_detector_sees_every_column(source: str) -> None:
    report = await _lint(source)
    assert report.ok, report.render()
    flagged = {(f.table, f.column) for f in report.findings}
    assert {("payments", "cardholder"), ("payments", "pan"), ("customers", "phone"),
            ("customers", "bdate"), ("orders", "meta"), ("orders", "note")} <= flagged
    bdate = next(f for f in report.findings if f.column == "bdate")
    assert "looks like dates of birth" in bdate.reason  # by its name and its values' range
    meta = next(f for f in report.findings if f.column == "meta")
    assert {p.path for p in meta.paths} == {"$.contact.email", "$.contact.phone",
                                            "$.contact.name"}


async def test_a_json_rule_without_a_path_that_holds_phones_is_refused(source: str) -> None:
    report = await _lint(source, {"orders": {"meta": {"json": {"paths": {
        "$.contact.email": "email", "$.contact.name": "full_name"}}}}})
    assert not report.ok
    assert [(f.column, f.path) for f in report.missing] == [("meta", "$.contact.phone")]
    text = report.render()
    assert "1 JSON path(s) look personal and no rule reaches them:" in text
    assert "orders.meta at $.contact.phone — looks like phone numbers" in text
    # What the rule leaves at that path is named too, with the shape of an example.
    assert any(u.path == "$.contact.phone" and u.kind == "phone" for u in report.unmasked)
    # A wildcard reaches it as well; `keep` at the path needs to say what it lets through.
    wild = await _lint(source, {"orders": {"meta": {"json": {"paths": {
        "$.contact.email": "email", "$.contact.name": "full_name", "$.*.phone": "phone"}}}}})
    assert wild.ok, wild.render()
    kept = await _lint(source, {"orders": {"meta": {"json": {"paths": {
        "$.contact.email": "email", "$.contact.name": "full_name", "$.contact.phone": "keep"}}}}})
    assert not kept.ok and kept.missing == []
    assert ('write `"$.contact.phone": {keep: {allow: [phone]}}` to let them through'
            in kept.render())
    allowed = await _lint(source, {"orders": {"meta": {"json": {"paths": {
        "$.contact.email": "email", "$.contact.name": "full_name",
        "$.contact.phone": {"keep": {"allow": ["phone"]}}}}}}})
    assert allowed.ok, allowed.render()


async def test_a_regex_that_removes_emails_but_not_phones_is_refused(source: str) -> None:
    report = await _lint(source, {"orders": {"note": {"regex": {
        "pattern": EMAIL_ONLY, "replace": "[email]"}}}})
    assert not report.ok and report.missing == []
    (left,) = report.unmasked
    assert (left.table, left.column, left.kind) == ("orders", "note", "phone")
    text = report.render()
    assert "orders.note (regex `[\\w.+-]+@[\\w-]+(?:\\.[\\w-]+)+`): after masking," in text
    assert "still hold phone numbers that no transformer wrote, such as `" in text
    assert re.search(r"such as `(\+## ## #### ####|#{11})`", text)
    assert not any(v in text for v in await _personal_values(source))


async def test_keep_of_card_numbers_or_of_free_text_with_contacts_is_refused(
        source: str) -> None:
    report = await _lint(source, {"payments": {"pan": "keep"},
                                  "customers": {"notes": "keep"}})
    assert not report.ok and report.missing == []
    found = {(u.column, u.kind) for u in report.unmasked}
    assert found == {("pan", "card"), ("notes", "phone")}
    text = report.render()
    assert "payments.pan (keep): after masking" in text
    assert "keep it knowingly: `pan: {keep: {allow: [card]}}`" in text
    assert "such as `################`" in text
    assert not any(v in text for v in await _personal_values(source))
    # Written out with what it lets through, the same keep is an acknowledgement.
    knowingly = await _lint(source, {"payments": {"pan": {"keep": {"allow": ["card"]}}},
                                     "customers": {"notes": {"keep": {"allow": "phone"}}}})
    assert knowingly.ok, knowingly.render()


async def test_a_template_with_a_real_number_written_into_it_is_refused(source: str) -> None:
    report = await _lint(source, {"payments": {"pan": {"template": {
        "format": "4111 1111 1111 1111 #{digits:4}"}}}})
    assert [(u.column, u.kind) for u in report.unmasked] == [("pan", "card")]
    assert "take them out of the template" in report.render()
