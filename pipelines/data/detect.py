"""Default-deny PII detection: which source columns look personal, and which of those the rules
file says nothing about.

Why: masking rules are written by people, and a column nobody thought of (a `notes` field with
customers' emails in it, a `meta` JSON with a phone number) leaks as it is. Before a snapshot is
built, every column of the source is judged by its name and, for text and JSON (and dates and
numbers whose name hints at something personal), by a sample of its values; every flagged
column must have a rule — `keep` written out counts, since that is how a person says "I looked,
this is fine". Inside a JSON column the same holds per path: every path whose values look
personal must be reached by one of the column's `json` rules (`keep` at a path written out
counts too). `lint` then masks the sampled values of every rule that passes text through or
writes only part of it and refuses what is left (`unmasked`): a rule is not enough if the data
comes out as it went in. It also reports rules naming tables or columns the source does not
have (a typo there would otherwise silently mask nothing).

By value it recognises e-mail addresses, phone numbers (also digits only, as `07000000001`),
payment card numbers (Luhn), IBANs, US social security and UK national insurance numbers,
postal codes, IP addresses, street addresses, people's names (a known first name, or surnames
when there are many different ones) and dates of birth (dates over decades of people's lives,
in a column whose name says it is a date); `patterns` holds what the checks share.

The source is only read: the session is `default_transaction_read_only`, samples are small
(`ORDER BY random()` on small tables, `TABLESAMPLE SYSTEM` on large ones) and values are cut at
4 kB. Values are never logged or put in a finding; findings say what was seen and how often.

Neighbours: `rules.py` (what a rule is), `masking.py` (Faker's names), `unmasked.py` (the
post-mask check), the snapshot builder and `ephem snapshot` commands, which refuse to build while
`LintReport.ok` is false."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import asyncpg

from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident
from pipelines.data import patterns, pgconn, unmasked
from pipelines.data.masking import first_names, last_names
from pipelines.data.rules import Rules, json_rules_at, parse_json_path, split_table, table_key
from pipelines.data.unmasked import Unmasked

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT_MS = 60_000
SMALL_TABLE_ROWS = 50_000  # below this, ORDER BY random() over the whole table is cheap
MAX_VALUE_CHARS = 4096


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Finding:
    """A column (or a path inside a JSON column) that looks like it holds personal data.
    `table` is bare for `public`.

    `suggestion` lists the transformers that fit (for `LintReport.render`); `paths` are the
    JSON paths whose own values look personal (each a Finding with `path` set)."""

    table: str
    column: str
    reason: str
    suggestion: str = field(default="", compare=False)
    path: str = ""
    paths: tuple[Finding, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" + (f" at {self.path}" if self.path else "")
        return f"{where} — {self.reason}"


# --------------------------------------------------------------------------- column kinds

# What a column's type allows it to hold, which decides how it is judged.
STRING, JSON, ARRAY, NUMERIC, DATETIME, BOOL, ENUM, NETWORK, MAC, UUID, BINARY, OTHER = (
    "string", "json", "array", "numeric", "datetime", "bool", "enum", "network", "mac", "uuid",
    "binary", "other")
SAMPLED_KINDS = frozenset({STRING, JSON, ARRAY})


@dataclass(frozen=True)
class SourceColumn:
    schema: str
    table: str
    name: str
    type: str
    kind: str
    rows: float  # the planner's estimate
    readable: bool

    @property
    def table_key(self) -> str:
        return table_key(f"{self.schema}.{self.table}")


def column_kind(*, typname: str, category: str, typtype: str, elem_category: str | None) -> str:
    """Sort a PostgreSQL type (domains resolved to their base) into a kind."""
    if typname in ("json", "jsonb"):
        return JSON
    if typtype == "e":
        return ENUM
    if typname in ("macaddr", "macaddr8"):
        return MAC
    if typname == "uuid":
        return UUID
    if typname == "bytea":
        return BINARY
    if typname in ("xml", "tsvector"):
        return STRING
    return {
        "S": STRING, "N": NUMERIC, "D": DATETIME, "B": BOOL, "I": NETWORK,
        "A": ARRAY if elem_category == "S" else OTHER,
    }.get(category, OTHER)


# --------------------------------------------------------------------------- names

# category → (label, suggestion)
_CATEGORIES: dict[str, tuple[str, str]] = {
    "email": ("email addresses", "email, hash, redact, null, or keep"),
    "phone": ("phone numbers", "phone, hash, redact, null, or keep"),
    "name": ("person names", "first_name, last_name, full_name, hash, redact, null, or keep"),
    "address": ("postal addresses", "address, redact, null, or keep"),
    "postal_code": ("postal codes", "regex, redact, null, or keep"),
    "national_id": ("national ID or passport numbers", "hash, template, redact, null, or keep"),
    "bank": ("bank account numbers (IBAN)", "hash, template, redact, null, or keep"),
    "card": ("payment card numbers", "hash, template, redact, null, or keep"),
    "birth": ("dates of birth", "date_shift, null, or keep"),
    "ip": ("IP addresses", "hash, redact, null, or keep"),
    "mac": ("device (MAC) addresses", "null or keep"),
    "secret": ("passwords, tokens or secrets", "hash, redact, null, or keep"),
    "free_text": ("free text", "redact, regex, null, or keep"),
    "geo": ("locations", "number_noise, null, or keep"),
    "sensitive": ("sensitive personal attributes", "redact, null, or keep"),
}

_NAME_PATTERNS: list[tuple[str, str]] = [
    ("email", r"e_?mails?(_?address(es)?)?|mail|mail_?address"),
    ("ip", r"ip|ip_?addr(ess)?|ipv[46]|remote_?addr|client_?ip"),
    ("mac", r"mac_?addr(ess)?"),
    ("phone", r"phone(_?(number|no|num))?|phones|mobile(_?(number|phone))?|cell(_?phone)?"
              r"|tel|telephone|fax|msisdn"),
    ("name", r"(first|last|full|middle|maiden|given|family|sur|fore|nick|display|legal|real"
             r"|contact|customer|client|person|owner|employee|patient|member|holder"
             r"|cardholder|recipient|sender|billing|shipping|user|account)_?names?"
             r"|f_?name|l_?name|login|(card_?|account_?)?holder"),
    ("address", r"(street|home|postal|mailing|billing|shipping|delivery)?_?addr(ess)?(_?line)?"
                r"_?\d?|street|city|town|zip(_?code)?|postal(_?code)?|post_?code"
                r"|house_?(number|no)|apartment|apt"),
    ("national_id", r"ssn|social_security(_number)?|national_?id|tax_?id|tin|nino|sin"
                    r"|passport(_?(number|no))?|driver_?s?_?licen[cs]e(_?(number|no))?"
                    r"|id_?card(_?number)?|personal_?id"),
    ("bank", r"iban|bic|swift|account_?(number|no)|acct_?(number|no)?|routing_?number"
             r"|sort_?code|bank_?account"),
    ("card", r"(credit_?|debit_?)?card(_?(number|no|num))?|cc(_?(number|num|no))?|pan"
             r"|cvv|cvc|card_?last_?4|last_?4"),
    ("birth", r"dob|birth(_?date|_?day|_?place)?|birthday|date_?of_?birth|born(_?on)?"
              r"|geburtsdatum|geburtstag|fecha_(de_)?nacimiento|date_(de_)?naissance"
              r"|data_(di_)?nascita|nascimento"),
    ("secret", r"password(_?hash)?|passwd|pwd|pass_?hash|(access|refresh|api|auth|reset"
               r"|session|bearer)?_?tokens?|secrets?|secret_?key|api_?key|private_?key"
               r"|access_?key|salt|otp|totp(_?secret)?|credentials?"),
    ("free_text", r"notes?|comments?|descriptions?|desc|remarks?|memo|message|msg|body|bio"
                  r"|about|feedback|details|instructions|free_?text|text"),
    ("geo", r"lat|latitude|lng|lon|long|longitude|geo(_?location)?|location|coordinates"
            r"|coords|gps"),
    ("sensitive", r"gender|sex|ethnicity|race|religion|salary|income|health|diagnosis"
                  r"|medical|disability"),
]
_NAME_RES = [(cat, re.compile(rf"(?:^|_)(?:{pat})(?:_|$)")) for cat, pat in _NAME_PATTERNS]

# A token that turns a PII-sounding name into data *about* it (`email_verified_at`, `card_type`,
# `address_id`): such columns hold flags, counts, kinds or keys, not the thing itself.
_QUALIFIERS = frozenset({
    "id", "ids", "uuid", "count", "cnt", "verified", "confirmed", "enabled", "disabled", "type",
    "kind", "status", "state", "sent", "opened", "at", "on", "format", "template", "provider",
    "domain", "opt", "optin", "opted", "consent", "bounced", "flag", "is", "has", "length",
    "len", "expires", "expiry", "expired", "changed", "updated", "created", "policy", "strength",
    "required", "hint", "version", "visible", "public", "preference", "preferences",
    "language", "locale", "timezone", "currency", "brand", "network", "country",
})

# Kinds a category can be judged from by name alone.
_NAME_KINDS: dict[str, frozenset[str]] = {
    "birth": frozenset({STRING, DATETIME, NUMERIC, OTHER}),
    "phone": frozenset({STRING, NUMERIC, ARRAY, JSON, OTHER}),
    "address": frozenset({STRING, NUMERIC, ARRAY, JSON, OTHER}),
    "national_id": frozenset({STRING, NUMERIC, BINARY, OTHER}),
    "bank": frozenset({STRING, NUMERIC, BINARY, OTHER}),
    "card": frozenset({STRING, NUMERIC, BINARY, OTHER}),
    "geo": frozenset({STRING, NUMERIC, JSON, OTHER}),
    "sensitive": frozenset({STRING, NUMERIC, OTHER}),
    "secret": frozenset({STRING, BINARY, UUID, JSON, OTHER}),
    "ip": frozenset({STRING, OTHER}),
    "mac": frozenset({STRING, OTHER}),
}
_DEFAULT_NAME_KINDS = frozenset({STRING, JSON, ARRAY, OTHER})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _normalise(name: str) -> str:
    return _NON_ALNUM.sub("_", _CAMEL.sub("_", name).lower()).strip("_")


def judge_name(column: str, kind: str) -> list[str]:
    """PII categories a column's name suggests for a column of this kind (pure)."""
    if kind in (BOOL, ENUM):
        return []
    norm = _normalise(column)
    found: list[str] = []
    for category, pattern in _NAME_RES:
        if kind not in _NAME_KINDS.get(category, _DEFAULT_NAME_KINDS):
            continue
        m = pattern.search(norm)
        if m is None:
            continue
        rest = (norm[:m.start()] + "_" + norm[m.end():]).split("_")
        if _QUALIFIERS.intersection(rest):
            continue
        if category == "address" and any(c in found for c in ("email", "ip", "mac")):
            continue
        if category == "card" and "name" in found:  # card_holder: the holder's name
            continue
        found.append(category)
    return found


# A name that says "a date" without saying whose (`bdate`, `d`, `date`): such a column is a date
# of birth when its values also say so (`_Counts.birth_range`).
_DATE_HINT = re.compile(r"(?:^|_)(?:date|dt|day|d|bdate|bday|bd|dte|fecha|datum|data)(?:_|$)")


def date_hint(column: str) -> bool:
    norm = _normalise(column)
    m = _DATE_HINT.search(norm)
    if m is None:
        return False
    return not _QUALIFIERS.intersection((norm[:m.start()] + "_" + norm[m.end():]).split("_"))


# --------------------------------------------------------------------------- values

_NAME_WORD = re.compile(r"[^\W\d_]+(?:['\u2019.-][^\W\d_]+)*\.?")  # Anne-Marie, O'Neil, J.

_POSTAL_CODE = re.compile(r"\d{5}-\d{4}|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}")  # US ZIP+4, UK
_HOUSE_NUMBER = re.compile(r"\d{1,6}[A-Za-z]?,?")
_STREET_ENDINGS = ("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "laan",
                   "straat", "gatan", "vägen")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_ISO_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[ T]00:00:00(?:\.0+)?(?:[+-]\d\d(?::?\d\d)?|Z)?)?")

_NAME_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR",
                 "sv_SE", "pl_PL")
SURNAMES_NEEDED = 10  # distinct surnames before single words are taken for people's names
BIRTH_YEARS = (12, 110)  # a date of birth is this many years ago


@cache
def _first_name_set() -> frozenset[str]:
    return frozenset(n.lower() for loc in _NAME_LOCALES for n in first_names(loc) if len(n) > 1)


@cache
def _last_name_set() -> frozenset[str]:
    return frozenset(n.lower() for loc in _NAME_LOCALES for n in last_names(loc) if len(n) > 1)


def _name_sets() -> None:
    """Read the name lists into their caches (in a thread, while samples are fetched)."""
    _first_name_set()
    _last_name_set()


@cache
def _street_words() -> frozenset[str]:
    from faker.providers.address.en_US import Provider

    return frozenset({*(w.lower() for w in Provider.street_suffixes),
                      "st", "ave", "rd", "blvd", "ln", "dr", "ct", "pl", "sq", "hwy", "pkwy",
                      "rue", "avenue", "calle", "via", "viale", "piazza", "rua", "chemin"})


def _is_street_address(value: str) -> bool:
    """`368 Stein Cliffs Suite 624`, `12 rue de la Paix`, `Hauptstraße 5`."""
    tokens = value.replace(",", " ").split()
    if not 2 <= len(tokens) <= 10 or not any(_HOUSE_NUMBER.fullmatch(t) for t in tokens):
        return False
    words = [t.lower().rstrip(".") for t in tokens if not t[0].isdigit()]
    return any(w in _street_words() or w.endswith(_STREET_ENDINGS) for w in words)


def _is_ip(value: str) -> bool:
    if patterns.IPV4.fullmatch(value):
        return True
    if ":" in value and _IPV6_CHARS.fullmatch(value):
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return False
        return True
    return False


def _person(value: str) -> tuple[str | None, str | None]:
    """(first name, surname) a value is made of, when it reads like a person's name: a first
    name first (`Ann Lee`), a surname alone (`Lee`), or both in another order (`Lee, Ann`)."""
    tokens = value.replace(",", " ").split()
    if not 1 <= len(tokens) <= 4 or not all(_NAME_WORD.fullmatch(t) for t in tokens):
        return None, None
    lower = [t.lower().rstrip(".") for t in tokens]
    firsts, lasts = _first_name_set(), _last_name_set()
    if lower[0] in firsts:
        return lower[0], next((t for t in lower[1:] if t in lasts), None)
    if len(lower) == 1:
        return None, lower[0] if lower[0] in lasts else None
    first = next((t for t in lower if t in firsts), None)
    last = next((t for t in lower if t in lasts), None)
    return (first, last) if first and last else (None, None)


@dataclass
class _Counts:
    """What the sampled values of a column (or of one JSON path) looked like. Counts and the
    words that told, never the values."""

    sampled: int = 0
    distinct: set[str] = field(default_factory=set)
    whole: Counter[str] = field(default_factory=Counter)  # values that are one thing entirely
    inside: Counter[str] = field(default_factory=Counter)  # free text containing it
    card_candidates: int = 0
    card_valid: int = 0
    names: set[str] = field(default_factory=set)
    surnames: set[str] = field(default_factory=set)
    years: list[float] = field(default_factory=list)  # of values that are dates

    def add(self, text: str) -> None:
        self.sampled += 1
        if len(self.distinct) < 10_000:
            self.distinct.add(text)
        category = self._whole(text)
        if category is not None:
            self.whole[category] += 1
            return
        for category in self._inside(text):
            self.inside[category] += 1

    def _whole(self, text: str) -> str | None:
        if "@" in text and patterns.EMAIL.fullmatch(text):
            return "email"
        if patterns.CARD.fullmatch(text):
            self.card_candidates += 1
            if patterns.luhn_ok(text.replace(" ", "").replace("-", "")):
                self.card_valid += 1
                return "card"
        if patterns.IBAN.fullmatch(text) and patterns.iban_ok(text):
            return "bank"
        if patterns.is_national_id(text):
            return "national_id"
        if _POSTAL_CODE.fullmatch(text):
            return "postal_code"
        date = _ISO_DATE.fullmatch(text)
        if date is not None:
            self.years.append(int(date.group(1)) + (int(date.group(2)) - 1) / 12)
            return None
        if patterns.is_phone(text):
            return "phone"
        if _is_ip(text):
            return "ip"
        if _is_street_address(text):
            return "address"
        first, last = _person(text)
        if first is not None or last is not None:
            if first is not None:
                self.names.add(first)
            if last is not None:
                self.surnames.add(last)
            return "name"
        return None

    def _inside(self, text: str) -> set[str]:
        found: set[str] = set()
        for hit in patterns.find(text):
            if hit.kind in (patterns.CARD_KIND, patterns.CARD_CANDIDATE):
                self.card_candidates += 1
                if hit.kind == patterns.CARD_CANDIDATE:
                    continue
                self.card_valid += 1
            found.add(_CATEGORY_OF_KIND[hit.kind])
        return found

    def birth_range(self) -> tuple[int, int] | None:
        """(first, last) year when the values are dates spread over decades of people's lives
        (at least 90 % dates, 80 % of those 12 to 110 years ago, 15 years apart or more)."""
        if not self.years or len(self.years) * 10 < self.sampled * 9:
            return None
        now = datetime.now(UTC).year
        inside = [y for y in self.years if now - BIRTH_YEARS[1] <= y <= now - BIRTH_YEARS[0]]
        if len(inside) * 5 < len(self.years) * 4 or max(inside) - min(inside) < 15:
            return None
        return int(min(inside)), int(max(inside))

    def reasons(self, *, dated: bool = False) -> list[tuple[str, str]]:
        """(category, reason) for what the sample shows, by category thresholds. `dated`: the
        name hints at a date, so dates of birth count."""
        if not self.sampled:
            return []
        out: list[tuple[str, str]] = []
        cards_real = self.card_valid > 0 and self.card_valid * 2 >= self.card_candidates
        fifth = max(1, self.sampled // 5)
        thresholds = {"email": 1, "bank": 1, "card": 1 if cards_real else None,
                      "national_id": fifth, "phone": fifth, "ip": fifth, "address": fifth,
                      "postal_code": fifth, "name": max(1, (self.sampled * 3 + 9) // 10)}
        counts = f"sampled {self.sampled} values, {{n}} matched"
        for category, needed in thresholds.items():
            n = self.whole[category]
            if needed is None or n < needed:
                continue
            if category == "name" and len(self.names) < min(5, len(self.distinct)) and len(
                    self.surnames) < SURNAMES_NEEDED:
                continue  # a handful of repeated words (colours, months), not people
            out.append((category, f"looks like {_CATEGORIES[category][0]} "
                                  f"({counts.format(n=n)})"))
        years = self.birth_range() if dated else None
        if years is not None:
            out.append(("birth", f"looks like dates of birth (sampled {self.sampled} values, "
                                 f"dates from {years[0]} to {years[1]})"))
        whole = {c for c, _ in out}
        for category in ("email", "card", "bank", "national_id", "phone"):
            n = self.inside[category]
            if n and (category != "card" or cards_real) and category not in whole:
                out.append(("free_text", f"free text containing {_CATEGORIES[category][0]} "
                                         f"({counts.format(n=n)})"))
        return out


_CATEGORY_OF_KIND = {patterns.EMAIL_KIND: "email", patterns.PHONE_KIND: "phone",
                     patterns.CARD_KIND: "card", patterns.IBAN_KIND: "bank",
                     patterns.NATIONAL_ID_KIND: "national_id"}


@dataclass
class _Tally:
    """A column's sample: counts for the column, and for a JSON column, per path."""

    column: _Counts = field(default_factory=_Counts)
    paths: dict[str, _Counts] = field(default_factory=dict)

    def add(self, value: str) -> None:
        self.column.add(value.strip())

    def add_json(self, text: str) -> None:
        """A JSON value: judge each string (and number) inside it, at its path; the column's
        counts say how many documents held each kind."""
        try:
            doc = json.loads(text)
        except ValueError:
            self.add(text)
            return
        column = self.column
        column.sampled += 1
        if len(column.distinct) < 10_000:
            column.distinct.add(text)
        held: set[tuple[str, str]] = set()
        for path, leaf in _leaves(doc, "$"):
            counts = self.paths.setdefault(path, _Counts())
            before_whole, before_inside = Counter(counts.whole), Counter(counts.inside)
            counts.add(leaf.strip())
            held.update(("whole", c) for c in counts.whole - before_whole)
            held.update(("inside", c) for c in counts.inside - before_inside)
            column.names |= counts.names
            column.surnames |= counts.surnames
        for where, category in held:
            (column.whole if where == "whole" else column.inside)[category] += 1
        column.card_candidates = sum(c.card_candidates for c in self.paths.values())
        column.card_valid = sum(c.card_valid for c in self.paths.values())

    def reasons(self, *, dated: bool = False) -> list[tuple[str, str]]:
        if not self.paths:
            return self.column.reasons(dated=dated)
        out = []
        flagged = self.flagged_paths()
        for category, reason in self.column.reasons():
            where = [p for p, c, _ in flagged if c == category or (
                category == "free_text" and c == "free_text")]
            if where:
                label = reason.split(" (", 1)
                what = label[0].removeprefix("looks like ")
                more = f" and {len(where) - 3} more" if len(where) > 3 else ""
                counts = f" ({label[1]}" if len(label) > 1 else ""
                out.append((category, f"JSON holds {what} at {', '.join(where[:3])}{more}"
                                      f"{counts}"))
            else:
                out.append((category, reason))
        return out

    def flagged_paths(self) -> list[tuple[str, str, str]]:
        """(path, category, reason) of every path whose own values look personal."""
        return [(path, category, reason) for path, counts in sorted(self.paths.items())
                for category, reason in counts.reasons()]


def _leaves(node: object, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f".{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) else f"[{k!r}]"
            yield from _leaves(v, path + key)
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v, path + "[*]")
    elif isinstance(node, str):
        yield path, node
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, str(node)


def _tally(values: Iterable[str], kind: str) -> _Tally:
    tally = _Tally()
    for value in values:
        if kind == JSON:
            tally.add_json(value)
        else:
            tally.add(value)
    return tally


def judge_values(values: Iterable[str], *, kind: str = STRING,
                 dated: bool = False) -> list[tuple[str, str]]:
    """(category, reason) for what a sample of a column's values shows (pure). `dated`: the
    column's name hints at a date (`date_hint`), so dates of birth are looked for."""
    return _tally(values, kind).reasons(dated=dated)


# --------------------------------------------------------------------------- the database

_COLUMNS_SQL = """
SELECT n.nspname AS schema, c.relname AS table, a.attname AS column,
       format_type(a.atttypid, a.atttypmod) AS type,
       coalesce(bt.typname, t.typname)::text AS typname,
       coalesce(bt.typcategory, t.typcategory)::text AS category,
       coalesce(bt.typtype, t.typtype)::text AS typtype,
       et.typcategory::text AS elem_category,
       c.reltuples::float8 AS rows,
       (pg_relation_size(c.oid) / current_setting('block_size')::int)::float8 AS pages,
       has_column_privilege(c.oid, a.attnum, 'SELECT') AS readable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
LEFT JOIN pg_type et ON et.oid = coalesce(bt.typelem, t.typelem) AND et.oid <> 0
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY($1::text[])
ORDER BY n.nspname, c.relname, a.attnum
"""


async def _columns(conn: Any, schemas: Sequence[str]) -> list[SourceColumn]:
    rows = await conn.fetch(_COLUMNS_SQL, list(schemas))
    out = []
    for r in rows:
        kind = column_kind(typname=r["typname"], category=r["category"], typtype=r["typtype"],
                           elem_category=r["elem_category"])
        estimate = r["rows"] if r["rows"] >= 0 else r["pages"] * 50  # -1: never analysed
        out.append(SourceColumn(schema=r["schema"], table=r["table"], name=r["column"],
                                type=r["type"], kind=kind, rows=estimate,
                                readable=r["readable"]))
    return out


def _sample_sql(col: SourceColumn, percent: float | None) -> str:
    table = f"{quote_ident(col.schema)}.{quote_ident(col.table)}"
    ident = quote_ident(col.name)
    draw = (f"FROM {table} TABLESAMPLE SYSTEM ({percent:.6f}) WHERE {ident} IS NOT NULL"
            if percent is not None else
            f"FROM {table} WHERE {ident} IS NOT NULL ORDER BY random()")
    if col.kind == ARRAY:
        return (f"SELECT left(e::text, {MAX_VALUE_CHARS}) FROM (SELECT {ident} AS v {draw} "
                f"LIMIT $1) s, unnest(s.v) AS e WHERE e IS NOT NULL LIMIT $1")
    return f"SELECT left({ident}::text, {MAX_VALUE_CHARS}) {draw} LIMIT $1"


async def _sample(conn: Any, col: SourceColumn, n: int) -> list[str]:
    if col.rows <= SMALL_TABLE_ROWS:
        rows = await conn.fetch(_sample_sql(col, None), n)
    else:
        percent = min(100.0, max(0.0001, 100.0 * n * 20 / col.rows))
        rows = await conn.fetch(_sample_sql(col, percent), n)
        if len(rows) < n // 2 and percent < 100:  # a sparse column: look at more pages
            rows = await conn.fetch(_sample_sql(col, min(100.0, percent * 20)), n)
    return [r[0] for r in rows]


def _sampled(col: SourceColumn) -> bool:
    """Text and JSON always; dates and numbers when their name hints at something personal
    (a date of birth, a card or phone number kept in a bigint)."""
    if col.kind in SAMPLED_KINDS:
        return True
    if col.kind == DATETIME:
        return date_hint(col.name) or "birth" in judge_name(col.name, col.kind)
    return col.kind == NUMERIC and bool(judge_name(col.name, col.kind))


@dataclass(frozen=True)
class Judged:
    """One source column: what it looks like, and the values sampled (kept for the post-mask
    check of the same lint, never stored or logged)."""

    column: SourceColumn
    finding: Finding | None
    values: list[str]


async def _judge(conn: Any, columns: Sequence[SourceColumn], sample: int) -> list[Judged]:
    # The samples are fetched first, while another thread reads the name lists the tally
    # compares values with (Faker's import alone takes 0.1 s, most of the lint's own CPU);
    # then each column is judged.
    names = asyncio.get_running_loop().run_in_executor(None, _name_sets)
    sampled: list[list[str] | tuple[str, str] | None] = []  # values, why not, or not sampled
    try:
        for col in columns:
            if not _sampled(col) or sample <= 0:
                sampled.append(None)
            elif not col.readable:
                sampled.append(("free_text", "could not be sampled (no SELECT privilege); "
                                             "check it by hand"))
            else:
                try:
                    sampled.append(await _sample(conn, col, sample))
                except asyncpg.PostgresError as exc:
                    log.warning("could not sample %s.%s: %s", col.table_key, col.name,
                                type(exc).__name__)
                    sampled.append(("free_text", f"could not be sampled "
                                                 f"({type(exc).__name__}); check it by hand"))
    finally:
        await names  # not left running: it fills the caches a later call would fill again
    judged: list[Judged] = []
    for col, got in zip(columns, sampled, strict=True):
        reasons: list[tuple[str, str]] = []
        flagged_paths: list[Finding] = []
        values = got if isinstance(got, list) else []
        if col.kind == NETWORK:
            reasons.append(("ip", f"an {col.type} column: IP addresses"))
        elif col.kind == MAC:
            reasons.append(("mac", f"a {col.type} column: device (MAC) addresses"))
        if isinstance(got, tuple):
            reasons.append(got)
        elif got is not None:
            tally = _tally(values, col.kind)
            reasons.extend(tally.reasons(dated=date_hint(col.name)))
            flagged_paths = [
                Finding(table=col.table_key, column=col.name, path=path, reason=reason,
                        suggestion=_CATEGORIES[category][1])
                for path, category, reason in tally.flagged_paths()]
        seen = {c for c, _ in reasons}
        for category in judge_name(col.name, col.kind):
            if category not in seen:
                reasons.append((category, f"name suggests {_CATEGORIES[category][0]}"))
                seen.add(category)
        finding = None
        if reasons:
            finding = Finding(table=col.table_key, column=col.name,
                              reason="; ".join(r for _, r in reasons),
                              suggestion=_suggest(reasons[0][0], col.kind),
                              paths=tuple(flagged_paths))
        judged.append(Judged(column=col, finding=finding, values=values))
    return judged


def _suggest(category: str, kind: str) -> str:
    """Transformers that fit the finding and give values the column's type accepts."""
    if kind == JSON:
        return "json (with paths), redact, null, or keep"
    if kind in (NETWORK, MAC):
        return "null or keep"
    if kind == UUID:
        return "template (in a UUID's shape), null, or keep"
    if kind == DATETIME:
        return "date_shift, null, or keep"
    if kind == NUMERIC:
        return ("phone, null, or keep" if category == "phone"
                else "number_noise, template ({digits:N}), null, or keep")
    return _CATEGORIES[category][1]


@asynccontextmanager
async def _connect(dsn: str) -> AsyncIterator[Any]:
    """A read-only session on the source; failures become Temporary/PermanentError with a
    password-free reason."""
    where = pgconn.location(dsn)
    try:
        conn = await asyncpg.connect(
            asyncpg_dsn(dsn), timeout=CONNECT_TIMEOUT,
            server_settings={"default_transaction_read_only": "on", "DateStyle": "ISO",
                             "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                             "application_name": "ephem-detect"})
    except (OSError, TimeoutError) as exc:
        raise TemporaryError(f"cannot reach the source database at {where} "
                             f"({type(exc).__name__})") from None
    except asyncpg.PostgresError as exc:
        state = str(getattr(exc, "sqlstate", "") or "")
        reason = f"the source database at {where} refused the connection ({type(exc).__name__})"
        if state.startswith(("08", "53", "57")):
            raise TemporaryError(reason) from None
        raise PermanentError(reason) from None
    try:
        yield conn
    finally:
        await pgconn.close(conn)


async def detect(dsn: str, *, sample: int = 200,
                 schemas: Sequence[str] = ("public",)) -> list[Finding]:
    """Every column in `schemas` that looks like personal data, by name and sampled values.

    `sample`: values read per text or JSON column (0: judge by name and type only)."""
    async with _connect(dsn) as conn:
        columns = await _columns(conn, schemas)
        return [j.finding for j in await _judge(conn, columns, sample) if j.finding]


# --------------------------------------------------------------------------- rules vs source


def missing_rules(findings: Sequence[Finding], rules: Rules) -> list[Finding]:
    """The flagged columns the rules say nothing about (`keep` written out is a rule), and
    inside JSON columns masked by path, the flagged paths no nested rule reaches."""
    missing: list[Finding] = []
    for finding in findings:
        rule = rules.rule_for(finding.table, finding.column)
        if rule is None:
            missing.append(finding)
        elif rule.transformer == "json":
            missing.extend(f for f in finding.paths
                           if not json_rules_at(rule, parse_json_path(f.path)))
    return missing


@dataclass(frozen=True)
class LintReport:
    """Detector findings checked against a rules file. `ok` means a build may go ahead."""

    findings: list[Finding]
    missing: list[Finding]
    unknown: list[str]  # "key path: what the source lacks"
    sample: int = 200
    unmasked: list[Unmasked] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unknown and not self.unmasked

    def render(self) -> str:
        lines: list[str] = []
        columns = [f for f in self.missing if not f.path]
        paths = [f for f in self.missing if f.path]
        if columns:
            lines.append(f"{len(columns)} column(s) look personal and have no rule:")
            lines.extend(f"  {f}; add a rule ({f.suggestion or 'redact, null, or keep'})"
                         for f in columns)
        if paths:
            lines.append(f"{len(paths)} JSON path(s) look personal and no rule reaches them:")
            lines.extend(f"  {f}; add the path to the column's json rule "
                         f"({f.suggestion or 'redact, null, or keep'})" for f in paths)
        if self.unmasked:
            lines.append(f"{len(self.unmasked)} rule(s) leave personal data in place:")
            lines.extend(f"  {u}" for u in self.unmasked)
        if self.unknown:
            lines.append(f"{len(self.unknown)} rule(s) name what the source does not have:")
            lines.extend(f"  {u}" for u in self.unknown)
        covered = len(self.findings) - len(columns)
        if self.ok:
            lines.append(f"ok: all {len(self.findings)} column(s) that look personal have a rule")
        elif covered:
            lines.append(f"{covered} other column(s) that look personal have a rule")
        return "\n".join(lines)


def _unknown(rules: Rules, columns: Sequence[SourceColumn]) -> list[str]:
    tables: dict[str, set[str]] = {}
    for col in columns:
        tables.setdefault(col.table_key, set()).add(col.name)
    out: list[str] = []

    def no_table(path: str, table: str) -> None:
        schema, name = split_table(table)
        out.append(f"{path}: no table {schema}.{name} in the source")

    for table, rules_for in rules.tables.items():
        if table not in tables:
            no_table(f"tables.{table}", table)
            continue
        out.extend(f"tables.{table}.{column}: no column {column!r} in {table}"
                   for column in rules_for if column not in tables[table])
    for root in rules.roots:
        if root.table not in tables:
            no_table(f"subset.roots.{root.table}", root.table)
    for child in sorted(rules.children):
        if child not in tables:
            no_table("subset.children", child)
    return out


async def lint(source_dsn: str, rules: Rules, *, sample: int = 200) -> LintReport:
    """Detect on the source (in every schema a snapshot would copy: all but the system's),
    check that each finding has a rule and that each rule names a real table and column, and
    mask the sampled values of every partial or pass-through rule to see what it leaves."""
    async with _connect(source_dsn) as conn:
        schemas = [r[0] for r in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema' ORDER BY nspname")]
        columns = await _columns(conn, schemas)
        judged = await _judge(conn, columns, sample)
        for col in columns:  # pass-through rules on columns the detector did not sample
            rule = rules.rule_for(col.table_key, col.name)
            if rule is not None and rule.transformer in unmasked.CHECKED and sample > 0 \
                    and col.readable and not _sampled(col):
                values = await _sample(conn, col, sample)
                judged.append(Judged(column=col, finding=None, values=values))
    findings = [j.finding for j in judged if j.finding]
    left: list[Unmasked] = []
    for j in judged:
        rule = rules.rule_for(j.column.table_key, j.column.name)
        if rule is not None:
            left.extend(unmasked.check(j.column.table_key, j.column.name, rule, j.values))
    return LintReport(findings=findings, missing=missing_rules(findings, rules),
                      unknown=_unknown(rules, columns), sample=sample, unmasked=left)
