"""Default-deny PII detection: which source columns look personal, and which of those the rules
file says nothing about.

Why: masking rules are written by people, and a column nobody thought of (a `notes` field with
customers' emails in it, a `meta` JSON with a phone number) leaks as it is. Before a snapshot is
built, every column of the source is judged by its name and, for text and JSON, by a sample of
its values; every flagged column must have a rule — `keep` written out counts, since that is how
a person says "I looked, this is fine". `lint` also reports rules naming tables or columns the
source does not have (a typo there would otherwise silently mask nothing).

The source is only read: the session is `default_transaction_read_only`, samples are small
(`ORDER BY random()` on small tables, `TABLESAMPLE SYSTEM` on large ones) and values are cut at
4 kB. Values are never logged or put in a finding; findings say what was seen and how often.

Neighbours: `rules.py` (what a rule is), `masking.py` (Faker's first names), the snapshot builder
and `ephem snapshot` commands, which refuse to build while `LintReport.ok` is false.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import asyncpg

from bot.errors import PermanentError, TemporaryError
from bot.pg import asyncpg_dsn, quote_ident
from pipelines.data import pgconn
from pipelines.data.masking import first_names
from pipelines.data.rules import Rules, split_table, table_key

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT_MS = 60_000
SMALL_TABLE_ROWS = 50_000  # below this, ORDER BY random() over the whole table is cheap
MAX_VALUE_CHARS = 4096


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Finding:
    """A column that looks like it holds personal data. `table` is bare for `public`.

    `suggestion` lists the transformers that fit (for `LintReport.render`)."""

    table: str
    column: str
    reason: str
    suggestion: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.table}.{self.column} — {self.reason}"


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
             r"|f_?name|l_?name|login"),
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
    ("birth", r"dob|birth(_?date|_?day|_?place)?|birthday|date_?of_?birth|born(_?on)?"),
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
        found.append(category)
    return found


# --------------------------------------------------------------------------- values

_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}")
_CARD_IN_TEXT = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d.])")
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_IBAN_IN_TEXT = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_PHONE = re.compile(r"\+?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"
                    r"(?: ?(?:x|ext\.?) ?\d{1,5})?")
_PHONE_IN_TEXT = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(?\d{1,4}\)?[ .-]?){2,5}\d{2,4}"
                            r"|\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4})(?!\w)")
_DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}.*|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['\u2019.-][^\W\d_]+)*\.?")  # Anne-Marie, O'Neil, J.

_POSTAL_CODE = re.compile(r"\d{5}-\d{4}|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}")  # US ZIP+4, UK
_HOUSE_NUMBER = re.compile(r"\d{1,6}[A-Za-z]?,?")
_STREET_ENDINGS = ("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "laan",
                   "straat", "gatan", "vägen")

_NAME_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR",
                 "sv_SE", "pl_PL")


@cache
def _first_name_set() -> frozenset[str]:
    return frozenset(n.lower() for loc in _NAME_LOCALES for n in first_names(loc) if len(n) > 1)


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


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _is_phone(value: str) -> bool:
    if not _PHONE.fullmatch(value) or _DATE_LIKE.fullmatch(value) or _IPV4.fullmatch(value):
        return False
    digits = sum(ch.isdigit() for ch in value)
    if not 7 <= digits <= 15:
        return False
    separators = [ch for ch in value if ch in " .-()"]
    if value.startswith("+") or "(" in value:
        return True
    return bool(separators) and separators != ["."]  # one dot: a decimal number


def _is_ip(value: str) -> bool:
    if _IPV4.fullmatch(value):
        return True
    if ":" in value and _IPV6_CHARS.fullmatch(value):
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return False
        return True
    return False


def _first_name_of(value: str) -> str | None:
    """The first name a value starts with, when it reads like a person's name."""
    tokens = value.split()
    if not 1 <= len(tokens) <= 4 or not all(_NAME_WORD.fullmatch(t) for t in tokens):
        return None
    first = tokens[0].lower()
    return first if first in _first_name_set() else None


@dataclass
class _Tally:
    """What a column's sampled values looked like. Counts only, never the values."""

    sampled: int = 0
    distinct: set[str] = field(default_factory=set)
    whole: Counter[str] = field(default_factory=Counter)  # values that are one thing entirely
    inside: Counter[str] = field(default_factory=Counter)  # free text containing it
    card_candidates: int = 0
    card_valid: int = 0
    names: set[str] = field(default_factory=set)
    json_paths: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, value: str, *, json_path: str | None = None) -> None:
        text = value.strip()
        if json_path is None:  # a column value (JSON leaves are counted by add_json)
            self.sampled += 1
            if len(self.distinct) < 10_000:
                self.distinct.add(text)
        category = self._whole(text)
        if category is not None:
            if json_path is not None:
                self.json_paths.setdefault(category, Counter())[json_path] += 1
            self.whole[category] += 1
            return
        for category in self._inside(text):
            self.inside[category] += 1

    def _whole(self, text: str) -> str | None:
        if "@" in text and _EMAIL.fullmatch(text):
            return "email"
        if _CARD.fullmatch(text):
            digits = text.replace(" ", "").replace("-", "")
            self.card_candidates += 1
            if luhn_ok(digits):
                self.card_valid += 1
                return "card"
        if _IBAN.fullmatch(text) and iban_ok(text):
            return "bank"
        if _POSTAL_CODE.fullmatch(text):
            return "postal_code"
        if _is_phone(text):
            return "phone"
        if _is_ip(text):
            return "ip"
        if _is_street_address(text):
            return "address"
        first = _first_name_of(text)
        if first is not None:
            self.names.add(first)
            return "name"
        return None

    def _inside(self, text: str) -> set[str]:
        found: set[str] = set()
        if "@" in text and _EMAIL.search(text):
            found.add("email")
        for m in _CARD_IN_TEXT.finditer(text):
            self.card_candidates += 1
            if luhn_ok(m.group().replace(" ", "").replace("-", "")):
                self.card_valid += 1
                found.add("card")
        if any(iban_ok(m.group()) for m in _IBAN_IN_TEXT.finditer(text)):
            found.add("bank")
        if _PHONE_IN_TEXT.search(text):
            found.add("phone")
        return found

    def add_json(self, text: str) -> None:
        """A JSON value: judge each string (and number) inside it at its path."""
        try:
            doc = json.loads(text)
        except ValueError:
            self.add(text)
            return
        self.sampled += 1
        if len(self.distinct) < 10_000:
            self.distinct.add(text)
        for path, leaf in _leaves(doc, "$"):
            self.add(leaf, json_path=path)

    def reasons(self) -> list[tuple[str, str]]:
        """(category, reason) for what the sample shows, by category thresholds."""
        if not self.sampled:
            return []
        out: list[tuple[str, str]] = []
        cards_real = self.card_valid > 0 and self.card_valid * 2 >= self.card_candidates
        fifth = max(1, self.sampled // 5)
        thresholds = {"email": 1, "bank": 1, "card": 1 if cards_real else None,
                      "phone": fifth, "ip": fifth, "address": fifth, "postal_code": fifth,
                      "name": max(1, (self.sampled * 3 + 9) // 10)}
        counts = f"sampled {self.sampled} values, {{n}} matched"
        for category, needed in thresholds.items():
            n = self.whole[category]
            if needed is None or n < needed:
                continue
            if category == "name" and len(self.names) < min(5, len(self.distinct)):
                continue  # a handful of repeated words (colours, months), not people
            label = _CATEGORIES[category][0]
            where = self.json_paths.get(category)
            if where:
                paths = ", ".join(p for p, _ in where.most_common(3))
                out.append((category, f"JSON holds {label} at {paths} "
                                      f"({counts.format(n=n)})"))
            else:
                out.append((category, f"looks like {label} ({counts.format(n=n)})"))
        whole = {c for c, _ in out}
        for category in ("email", "card", "bank", "phone"):
            n = self.inside[category]
            if n and (category != "card" or cards_real) and category not in whole:
                out.append(("free_text", f"free text containing {_CATEGORIES[category][0]} "
                                         f"({counts.format(n=n)})"))
        return out


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


def judge_values(values: Iterable[str], *, kind: str = STRING) -> list[tuple[str, str]]:
    """(category, reason) for what a sample of a column's values shows (pure)."""
    tally = _Tally()
    for value in values:
        if kind == JSON:
            tally.add_json(value)
        else:
            tally.add(value)
    return tally.reasons()


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


async def _judge(conn: Any, columns: Sequence[SourceColumn], sample: int) -> list[Finding]:
    findings: list[Finding] = []
    for col in columns:
        reasons: list[tuple[str, str]] = []
        if col.kind == NETWORK:
            reasons.append(("ip", f"an {col.type} column: IP addresses"))
        elif col.kind == MAC:
            reasons.append(("mac", f"a {col.type} column: device (MAC) addresses"))
        if col.kind in SAMPLED_KINDS and sample > 0:
            if not col.readable:
                reasons.append(("free_text", "could not be sampled (no SELECT privilege); "
                                             "check it by hand"))
            else:
                try:
                    values = await _sample(conn, col, sample)
                except asyncpg.PostgresError as exc:
                    log.warning("could not sample %s.%s: %s", col.table_key, col.name,
                                type(exc).__name__)
                    reasons.append(("free_text", f"could not be sampled "
                                                 f"({type(exc).__name__}); check it by hand"))
                else:
                    reasons.extend(judge_values(values, kind=col.kind))
        seen = {c for c, _ in reasons}
        for category in judge_name(col.name, col.kind):
            if category not in seen:
                reasons.append((category, f"name suggests {_CATEGORIES[category][0]}"))
                seen.add(category)
        if reasons:
            findings.append(Finding(table=col.table_key, column=col.name,
                                    reason="; ".join(r for _, r in reasons),
                                    suggestion=_suggest(reasons[0][0], col.kind)))
    return findings


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
            server_settings={"default_transaction_read_only": "on",
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
        return await _judge(conn, columns, sample)


# --------------------------------------------------------------------------- rules vs source


def missing_rules(findings: Sequence[Finding], rules: Rules) -> list[Finding]:
    """The flagged columns the rules say nothing about (`keep` written out is a rule)."""
    return [f for f in findings if rules.rule_for(f.table, f.column) is None]


@dataclass(frozen=True)
class LintReport:
    """Detector findings checked against a rules file. `ok` means a build may go ahead."""

    findings: list[Finding]
    missing: list[Finding]
    unknown: list[str]  # "key path: what the source lacks"
    sample: int = 200

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unknown

    def render(self) -> str:
        lines: list[str] = []
        if self.missing:
            lines.append(f"{len(self.missing)} column(s) look personal and have no rule:")
            lines.extend(f"  {f}; add a rule ({f.suggestion or 'redact, null, or keep'})"
                         for f in self.missing)
        if self.unknown:
            lines.append(f"{len(self.unknown)} rule(s) name what the source does not have:")
            lines.extend(f"  {u}" for u in self.unknown)
        covered = len(self.findings) - len(self.missing)
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
    """Detect on the source (in every schema a snapshot would copy: all but the system's), then
    check that each finding has a rule and that each rule names a real table and column."""
    async with _connect(source_dsn) as conn:
        schemas = [r[0] for r in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema' ORDER BY nspname")]
        columns = await _columns(conn, schemas)
        findings = await _judge(conn, columns, sample)
    return LintReport(findings=findings, missing=missing_rules(findings, rules),
                      unknown=_unknown(rules, columns), sample=sample)
