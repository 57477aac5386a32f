"""Column maskers: one function per column rule, from PostgreSQL's text form of a value to the
text form of its masked replacement.

Why: a snapshot copies production rows with `COPY … TO STDOUT (FORMAT text)` and writes them
back with `COPY … FROM STDIN`, so a masker sees exactly the text PostgreSQL prints for a value
(after COPY unescaping; `DateStyle` ISO: `2024-01-31`, `2024-01-31 12:00:00+00`, `123.45`, JSON
as text) and must return text the same column type accepts. None is SQL NULL and stays NULL
(except under `null`, which always gives NULL).

Every keyed transformer is an HMAC-SHA256 of `transformer name + NUL + value` under the masking
key (for `phone`, the value's digits; for `date_shift`, its date part; so formatting does not
matter). The same value gives the same output wherever it appears, so the same email masked in
two tables is the same fake email and joins keep working; a different key gives unrelated
output; a different transformer gives a different output for the same value. Table and
column names are deliberately not part of the input. Fake names, streets and addresses are
picked from lists taken from Faker once per locale and indexed by the HMAC (seeding Faker per
value is about 20 times slower: bench/masking.py). Each masker caches its recent results in a
bounded LRU, since real columns repeat values.

The keyed transformers (hash, email, the names, address, template, phone, date_shift) also
exist compiled, in `_fastmask.c`, byte for byte the same: a build spends most of its masking
time on values it has not seen yet, and a compiled transformer is several times cheaper per
value (bench/masking.py). When the extension was built, `_BUILDERS` gives the compiled ones,
each holding the Python transformer as its fallback for the values it leaves to Python (a
date that is refused, say, so the same MaskingError is raised); without it, everything runs in
Python. `COMPILED` says which.

The key is never logged or put in an error; `MaskingError` names the transformer, never the
value (which is production data).

Neighbours: `rules.py` defines and validates the rules; the snapshot builder calls
`make_masker` once per masked column and streams values through it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from functools import cache, lru_cache, partial
from json.encoder import encode_basestring
from typing import Any

from pipelines.data.rules import (
    PASS_THROUGH,
    WILDCARD,
    ColumnRule,
    JsonPath,
    check_rule,
    parse_json_path,
    parse_template,
)

try:
    from pipelines.data import _fastmask
except ImportError:  # not built (no C compiler at install time): the same output, in Python
    _fastmask = None  # type: ignore[assignment]

Masker = Callable[[str | None], str | None]
Transform = Callable[[str], str | None]
Builder = Callable[[Mapping[str, Any], bytes], Transform]

COMPILED: bool = _fastmask is not None  # the keyed transformers run compiled (`_fastmask`)


def is_compiled(transform: object) -> bool:
    """Whether `transform` is a compiled keyed transformer."""
    return _fastmask is not None and isinstance(transform, _fastmask.Transform)


def sha256_kind() -> str:
    """Which SHA-256 the compiled transformers use ("sha-ni", "portable"), or "python"."""
    return _fastmask.SHA256 if _fastmask is not None else "python"

REDACTED = "[redacted]"
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")  # RFC 2606: nobody's mailbox
DEFAULT_LOCALE = "en_US"
DEFAULT_CACHE_SIZE = 1 << 16
SHARED_CACHE = 1 << 16  # values per rule cached by `SharedMaskers` before it starts over


class MaskingError(ValueError):
    """A value cannot be masked into a valid value of its kind (a date_shift of text that is no
    date, say). The message names the transformer and what was expected, never the value."""


# --------------------------------------------------------------------------- keyed hashing


class _Keyed:
    """HMAC-SHA256(key, purpose NUL value) with the key's pads and the purpose hashed once.

    Copying two prepared SHA-256 states costs about a third of `hmac.digest` per call."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, purpose: str) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._inner.update(purpose.encode() + b"\0")
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, value: str) -> bytes:
        inner = self._inner.copy()
        inner.update(value.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _more(digest: bytes, counter: int) -> bytes:
    return hashlib.sha256(digest + counter.to_bytes(4, "big")).digest()


def _hex(digest: bytes, count: int) -> str:
    """`count` hex characters: the digest's, then an expansion of it."""
    out, counter = digest.hex(), 0
    while len(out) < count:
        counter += 1
        out += _more(digest, counter).hex()
    return out[:count]


# Bytes below 250 map evenly onto 0-9; the six above are dropped (no modulo bias).
_DIGIT_OF = bytes((48 + b % 10) if b < 250 else 0 for b in range(256))
_OVER = bytes(range(250, 256))


def _digits(digest: bytes, count: int) -> str:
    """`count` uniformly distributed decimal digits derived from the digest."""
    out, counter = digest.translate(_DIGIT_OF, _OVER), 0
    while len(out) < count:
        counter += 1
        out += _more(digest, counter).translate(_DIGIT_OF, _OVER)
    return out[:count].decode("ascii")


# --------------------------------------------------------------------------- Faker word lists


@cache
def _faker(locale: str) -> Any:
    from faker import Faker

    return Faker(locale)


def _faker_list(locale: str, attrs: tuple[str, ...], method: str) -> tuple[str, ...]:
    """A locale's word list: the provider's own table when it has a real one, else a sorted
    sample of what the provider method produces (some locales compose names from parts).

    The person lists are read from the locale's person provider module when it has one: what
    `Faker(locale)` finds first, without loading its other providers (0.1 s against 0.45 s,
    paid by every snapshot build's lint)."""
    if attrs:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except (ImportError, AttributeError, ValueError):
            provider = None
        for attr in attrs:
            found = getattr(provider, attr, None)
            if found is not None and len(found) >= 20:
                return tuple(dict.fromkeys(str(w) for w in found))
    fake = _faker(locale)
    for attr in attrs:
        for provider in fake.factories[0].get_providers():
            found = getattr(provider, attr, None)
            if found is not None and len(found) >= 20:
                return tuple(dict.fromkeys(str(w) for w in found))
    fake.seed_instance(0)
    generate = getattr(fake, method)
    return tuple(sorted({str(generate()) for _ in range(3000)}))


@cache
def first_names(locale: str = DEFAULT_LOCALE) -> tuple[str, ...]:
    """Faker's first names for a locale (also what `detect` compares values with)."""
    names = _faker_list(locale, ("first_names",), "first_name")
    if len(names) < 20:
        names = tuple(dict.fromkeys(
            _faker_list(locale, ("first_names_female",), "first_name_female")
            + _faker_list(locale, ("first_names_male",), "first_name_male")))
    return names


@cache
def last_names(locale: str = DEFAULT_LOCALE) -> tuple[str, ...]:
    return _faker_list(locale, ("last_names",), "last_name")


@cache
def street_names(locale: str = DEFAULT_LOCALE) -> tuple[str, ...]:
    return _faker_list(locale, (), "street_name")


_ASCII_WORD = re.compile(r"[a-z]+")


@cache
def _email_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    def plain(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.lower() for n in names if _ASCII_WORD.fullmatch(n.lower())))

    return plain(first_names()), plain(last_names())


# --------------------------------------------------------------------------- transformers


def _redact(params: Mapping[str, Any], key: bytes) -> Transform:
    text = str(params.get("text", REDACTED))
    return lambda _value: text


def _hash(params: Mapping[str, Any], key: bytes) -> Transform:
    keyed, length = _Keyed(key, "hash"), int(params.get("length", 64))
    return lambda value: keyed.digest(value).hex()[:length]


def _email(params: Mapping[str, Any], key: bytes) -> Transform:
    keyed = _Keyed(key, "email")
    first, last = _email_words()
    nf, nl = len(first), len(last)
    domains = _email_domains(params)
    nd = len(domains)

    def email(value: str) -> str:
        n = int.from_bytes(keyed.digest(value)[:16], "big")  # 128 bits: plenty, and faster
        n, f = divmod(n, nf)
        n, la = divmod(n, nl)
        # 12 digits: ~10^18 addresses, so even 10 million distinct emails practically never
        # collide (a unique index on the masked column must keep holding).
        n, number = divmod(n, 1_000_000_000_000)
        return f"{first[f]}.{last[la]}+{number:012d}@{domains[n % nd]}"

    return email


def _name_picker(kind: str) -> Callable[[Mapping[str, Any], bytes], Transform]:
    def build(params: Mapping[str, Any], key: bytes) -> Transform:
        keyed = _Keyed(key, kind)
        locale = str(params.get("locale", DEFAULT_LOCALE))
        first, last = first_names(locale), last_names(locale)
        nf, nl = len(first), len(last)

        def pick_first(value: str) -> str:
            return first[int.from_bytes(keyed.digest(value), "big") % nf]

        def pick_last(value: str) -> str:
            return last[int.from_bytes(keyed.digest(value), "big") % nl]

        def pick_full(value: str) -> str:
            n = int.from_bytes(keyed.digest(value), "big")
            return f"{first[n % nf]} {last[(n // nf) % nl]}"

        return {"first_name": pick_first, "last_name": pick_last, "full_name": pick_full}[kind]

    return build


def _address(params: Mapping[str, Any], key: bytes) -> Transform:
    keyed = _Keyed(key, "address")
    streets = street_names(str(params.get("locale", DEFAULT_LOCALE)))
    ns = len(streets)

    def address(value: str) -> str:
        n = int.from_bytes(keyed.digest(value), "big")
        return f"{1 + (n // ns) % 9999} {streets[n % ns]}"

    return address


_DIGIT_RUN = re.compile(r"[0-9]+")

# ITU-T E.164 country calling codes: 1 and 7 are one digit, these are two, every other is three.
# The set is prefix-free, so a number's first digits say how long its code is.
_TWO_DIGIT_CODES = frozenset({
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
    "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
    "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
})
MIN_CHANGED_DIGITS = 4  # fewer and a masked number is too easily guessed back


def country_code_length(digits: str) -> int:
    """How many leading digits of an international number are its country calling code."""
    if digits[:1] in ("1", "7"):
        return 1
    return 2 if digits[:2] in _TWO_DIGIT_CODES else 3


@dataclass(frozen=True)
class PhoneParts:
    """Where a phone number's parts are, counted in digits: the first `lead` are the country
    code (with a `00` international prefix) or the trunk prefix `0`; the next `area` digits are
    the area code (or the operator's prefix); the rest is the subscriber number."""

    lead: int
    area: int
    nanp: bool  # North American numbering: the subscriber number starts with 2-9


def phone_parts(value: str, *, keep_prefix: int | None = None) -> PhoneParts:
    """Read a phone number's structure from how it is written (pure).

    `+44 20 7946 0958`: country code 44, area code 20. `020 7946 0958`: trunk prefix 0, area
    code 20. `(415) 555-0123`: area code 415. A number written without groups (`07000000001`,
    `+447700900123`) keeps the first two digits of the national number (three in North
    America). `keep_prefix` replaces that guess with a fixed count of national digits."""
    runs = _DIGIT_RUN.findall(value)
    return PhoneParts(*_phone_parts(value, runs, "".join(runs), keep_prefix))


def _phone_parts(value: str, runs: list[str], digits: str, keep_prefix: int | None
                 ) -> tuple[int, int, bool]:
    """`phone_parts` from the number's digit groups: (lead, area, nanp)."""
    if value.lstrip().startswith("+"):
        lead = country_code_length(digits)
    elif digits.startswith("00") and len(digits) > 9:
        lead = 2 + country_code_length(digits[2:])
    elif digits.startswith("0"):
        lead = 1
    else:
        lead = 0
    if keep_prefix is not None:
        return lead, keep_prefix, False
    nanp = (lead == 1 and digits[:1] == "1" and not digits.startswith("0")) or (
        lead == 0 and len(digits) == 10 and digits[0] not in "01")
    # The area code is the rest of the group the national number starts in, or the next group
    # when the country code or trunk prefix is a group of its own.
    end = 0
    for run in runs:
        end += len(run)
        if end > lead:
            break
    if end >= len(digits):  # no groups after the prefix: a guess
        return lead, 3 if nanp else 2, nanp
    return lead, end - lead, nanp


def _phone(params: Mapping[str, Any], key: bytes) -> Transform:
    """A number that stays valid: the country code, trunk prefix, area code and every non-digit
    stay as written, and only the subscriber digits change (at least the last four). The HMAC
    is of the national number's digits, so `+44 20 7946 0958`, `0044 20 7946 0958` and
    `020 7946 0958` get the same new subscriber number."""
    keyed = _Keyed(key, "phone")
    keep_prefix = params.get("keep_prefix")

    def phone(value: str) -> str:
        runs = _DIGIT_RUN.findall(value)
        if not runs:
            return value
        digits = "".join(runs)
        count = len(digits)
        lead, area, nanp = _phone_parts(value, runs, digits, keep_prefix)
        kept = min(lead + area, max(0, count - MIN_CHANGED_DIGITS))
        fresh = _digits(keyed.digest(digits[lead:]), count - kept)
        if nanp and kept == lead + area and area == 3:
            fresh = "23456789"[int(fresh[0]) % 8] + fresh[1:]  # an exchange code is 2-9
        new = digits[:kept] + fresh
        between = _DIGIT_RUN.split(value)  # the text around the digit groups
        out = [between[0]]
        used = 0
        for run, after in zip(runs, between[1:], strict=True):
            width = len(run)
            out.append(new[used:used + width])
            out.append(after)
            used += width
        return "".join(out)

    return phone


_DATE = re.compile(r"(\d{4,})-(\d\d)-(\d\d)(?=$|[ T])")
_INFINITE = ("infinity", "-infinity")


def _date_shift(params: Mapping[str, Any], key: bytes) -> Transform:
    """Shift by 1..`days` days, earlier or later, chosen by the HMAC of the date part (so a date
    and the timestamps on that day move together). The time and zone are kept as written."""
    keyed, days = _Keyed(key, "date_shift"), int(params["days"])

    def shift(value: str) -> str:
        m = _DATE.match(value)
        if m is None or value.endswith(" BC"):
            if value in _INFINITE:
                return value
            raise MaskingError("date_shift: expected a date or timestamp in ISO format "
                               "(YYYY-MM-DD…, PostgreSQL's DateStyle ISO)")
        n = int.from_bytes(keyed.digest(m.group(0))[:8], "big")
        delta = (1 + (n >> 1) % days) * (-1 if n & 1 else 1)
        try:
            moved = date.fromordinal(
                date(int(m.group(1)), int(m.group(2)), int(m.group(3))).toordinal() + delta)
        except (ValueError, OverflowError):
            raise MaskingError("date_shift: the date is outside the years 1 to 9999") from None
        return f"{moved.year:04d}-{moved.month:02d}-{moved.day:02d}{value[m.end():]}"

    return shift


_DEC = Context(prec=1000)  # products of numeric values: exact
_FACTOR = Context(prec=20)  # the noise factor: 20 digits are plenty
_TWO_64 = Decimal(2**64)
_NON_FINITE = {"nan", "infinity", "-infinity", "inf", "-inf", "+infinity", "+inf"}


def _number_noise(params: Mapping[str, Any], key: bytes) -> Transform:
    """Multiply by a factor in [1 - ratio, 1 + ratio] drawn from the HMAC; keep the number of
    decimal places (integers stay integers) and stay within the ratio after rounding."""
    keyed = _Keyed(key, "number_noise")
    ratio = Decimal(repr(float(params["ratio"])))
    low_factor, high_factor = 1 - ratio, 1 + ratio

    def noise(value: str) -> str:
        text = value.strip()
        if text.lower() in _NON_FINITE:
            return value
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise MaskingError("number_noise: expected a number") from None
        u = _FACTOR.divide(Decimal(int.from_bytes(keyed.digest(text)[:8], "big")), _TWO_64)
        factor = _FACTOR.add(1, _FACTOR.multiply(ratio, _FACTOR.subtract(2 * u, 1)))
        if "e" in text or "E" in text:
            return repr(float(_DEC.multiply(number, factor)))
        places = len(text) - text.index(".") - 1 if "." in text else 0
        step = Decimal(1).scaleb(-places)
        noisy = _DEC.multiply(number, factor).quantize(step, ROUND_HALF_EVEN, _DEC)
        bounds = sorted((_DEC.multiply(number, low_factor), _DEC.multiply(number, high_factor)))
        noisy = max(noisy, bounds[0].quantize(step, ROUND_CEILING, _DEC))
        noisy = min(noisy, bounds[1].quantize(step, ROUND_FLOOR, _DEC))
        return format(noisy, "f")

    return noise


def _regex(params: Mapping[str, Any], key: bytes) -> Transform:
    pattern, replace = re.compile(str(params["pattern"])), str(params.get("replace", ""))
    return partial(pattern.sub, replace)  # C all the way down (`SharedMaskers`)


def _template(params: Mapping[str, Any], key: bytes) -> Transform:
    keyed, parts = _Keyed(key, "template"), parse_template(str(params["format"]))
    hex_width = sum(w for _, f, w in parts if f == "hash")
    digit_width = sum(w for _, f, w in parts if f == "digits")

    def fill(value: str) -> str:
        digest = keyed.digest(value)
        hexes, digits = _hex(digest, hex_width), _digits(digest, digit_width)
        out: list[str] = []
        h = d = 0
        for literal, name, width in parts:
            out.append(literal)
            if name == "hash":
                out.append(hexes[h:h + width])
                h += width
            elif name == "digits":
                out.append(digits[d:d + width])
                d += width
        return "".join(out)

    return fill


# --------------------------------------------------------------------------- json


def _dumps(node: object) -> str:
    """JSON text in jsonb's output style, with numbers exactly as they were read."""
    if isinstance(node, str):
        return json.dumps(node, ensure_ascii=False)
    if node is None:
        return "null"
    if node is True:
        return "true"
    if node is False:
        return "false"
    if isinstance(node, int | Decimal):
        return str(node)
    if isinstance(node, dict):
        return "{" + ", ".join(f"{_dumps(k)}: {_dumps(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(_dumps(v) for v in node) + "]"
    raise TypeError(type(node).__name__)


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _mask_leaf(node: object, masker: Masker) -> object:
    """Mask one JSON value through a text masker, keeping its JSON type where the result
    allows it (a noised number stays a number, a masked string stays a string)."""
    if node is None:
        return masker(None)
    if isinstance(node, str):
        return masker(node)
    if isinstance(node, bool):
        text = "true" if node else "false"
    elif isinstance(node, int | Decimal):
        text = str(node)
    else:
        text = _dumps(node)
    out = masker(text)
    if out is None or out == text:
        return None if out is None else node
    if isinstance(node, bool) and out in ("true", "false"):
        return out == "true"
    if isinstance(node, int | Decimal) and not isinstance(node, bool) and \
            _JSON_NUMBER.fullmatch(out):
        return int(out) if out.lstrip("-").isdigit() else Decimal(out)
    return out


def _apply(node: object, path: JsonPath, masker: Masker) -> object:
    if not path:
        return _mask_leaf(node, masker)
    head, rest = path[0], path[1:]
    if head is WILDCARD:
        if isinstance(node, list):
            return [_apply(v, rest, masker) for v in node]
        if isinstance(node, dict):
            return {k: _apply(v, rest, masker) for k, v in node.items()}
    elif isinstance(head, int):
        if isinstance(node, list) and head < len(node):
            node[head] = _apply(node[head], rest, masker)
    elif isinstance(node, dict) and head in node:
        node[head] = _apply(node[head], rest, masker)
    return node


_Plan = list[tuple[int, list["Masker"], bool]]  # (part index, maskers, generated), see _plan
# A plan as the compiled row loop reads it (`_JsonMasker.c_plan`).
CPlanStep = tuple[int, dict[bytes, bytes | None] | None, Callable[[bytes], bytes | None], bool,
                  Callable[[str], str | None] | None]
CPlanEntry = tuple[tuple[int, ...], tuple[bytes, ...], tuple[CPlanStep, ...] | None]

# A JSON document as text: its strings (split out by `_JSON_STRING`) and its *shape* — the rest,
# with every string replaced by `_STRING`, every number, true, false and null by `_SCALAR`, and
# no whitespace. Documents in one column mostly share a few shapes and differ only in their
# strings and numbers; so where the rules' paths land is worked out once per shape and set of
# keys, and a document is masked by replacing a few of its strings, without parsing or
# writing it whole.
_JSON_STRING = re.compile(r'("[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*")', re.DOTALL)
_STRING, _SCALAR = "\x01", "0"
_SCALAR_CHARS = str.maketrans({**dict.fromkeys("0123456789-+.eEtrufalsn", _SCALAR),
                               **dict.fromkeys(" \t\n\r")})
_SCALARS = re.compile(_SCALAR + "+")
_MAX_DEPTH = 64
SHAPE_CACHE = 4096


@dataclass(frozen=True)
class _Slot:
    """A value in a shape: where it is (keys as the index of their string), what it is, and
    for a string value, the index of its string."""

    path: tuple[tuple[bool, int], ...]  # (is_key, string index or array index)
    kind: str  # "string", "scalar", "object" or "array"
    string: int = -1


def _walk_shape(shape: str) -> tuple[list[_Slot], list[int]] | None:
    """The values of a shape and the indices of its strings that are keys; None when the
    shape is not one JSON value."""
    slots: list[_Slot] = []
    keys: list[int] = []
    strings = 0

    def value(i: int, path: tuple[tuple[bool, int], ...]) -> int:
        nonlocal strings
        if len(path) > _MAX_DEPTH or i >= len(shape):
            raise ValueError
        c = shape[i]
        if c == _STRING:
            slots.append(_Slot(path, "string", strings))
            strings += 1
            return i + 1
        if c == _SCALAR:
            slots.append(_Slot(path, "scalar"))
            return i + 1
        if c == "{":
            slots.append(_Slot(path, "object"))
            i += 1
            if shape[i:i + 1] == "}":
                return i + 1
            while True:
                if shape[i:i + 2] != _STRING + ":":
                    raise ValueError
                keys.append(strings)
                at = strings
                strings += 1
                i = value(i + 2, (*path, (True, at)))
                if shape[i:i + 1] == "}":
                    return i + 1
                if shape[i:i + 1] != ",":
                    raise ValueError
                i += 1
        if c == "[":
            slots.append(_Slot(path, "array"))
            i += 1
            if shape[i:i + 1] == "]":
                return i + 1
            index = 0
            while True:
                i = value(i, (*path, (False, index)))
                index += 1
                if shape[i:i + 1] == "]":
                    return i + 1
                if shape[i:i + 1] != ",":
                    raise ValueError
                i += 1
        raise ValueError

    try:
        if value(0, ()) != len(shape):
            return None
    except (ValueError, RecursionError):
        return None
    return slots, keys


def _picker(indices: list[int]) -> Callable[[list[str]], tuple[str, ...]]:
    """A function from a split document to the strings at `indices`, as a tuple (C speed)."""
    if not indices:
        return lambda parts: ()
    if len(indices) == 1:
        index = indices[0]
        return lambda parts: (parts[index],)
    return operator.itemgetter(*indices)


def _matches(rule: JsonPath, path: tuple[str | int, ...]) -> bool:
    return len(rule) == len(path) and all(
        r is WILDCARD or (type(r) is type(p) and r == p) for r, p in zip(rule, path, strict=True))


class _JsonMasker:
    """Masks the values at the rules' paths inside JSON text; see `_JSON_STRING` for how.

    Text without a backslash (jsonb's output, unless a string holds a quote, a backslash or a
    control character) is cut at its quotes instead: every quote there delimits a string, so
    `str.split('"')` is the split, at a fraction of the regex's cost, and the document's
    structure itself (its text outside strings) is looked up before its shape is worked out.

    What it cannot do by replacing strings — a rule on a number, true, false, null, object or
    array — and text that is not JSON, it leaves to `_slow`, which parses and writes the
    document (text that is not JSON at all becomes the JSON string "[redacted]")."""

    def __init__(self, paths: list[tuple[JsonPath, Masker]],
                 generated: Sequence[bool] = (),
                 direct: Callable[[Masker], Transform | None] | None = None) -> None:
        self._paths = paths
        # A masker's compiled transformer, for the compiled row loop (`SharedMaskers.direct`).
        self._direct = direct or (lambda masker: None)
        # Per path: whether its rule writes the value (for the leak search, which leaves
        # what the rules wrote out; `keep` and `regex` write what they leave).
        self._generated = {id(m): g for (_, m), g in zip(paths, generated, strict=False)}
        self._shapes: dict[str, tuple[list[_Slot], list[int], Callable[[list[str]], Any]]
                           | None] = {}
        # structure → (shape, its key picker, the keys last seen, their plan)
        self._structures: dict[str, tuple[str, Callable[[list[str]], Any], tuple[str, ...],
                                          _Plan | None]] = {}
        self._plans: dict[tuple[str, tuple[str, ...], bool], _Plan | None] = {}
        # For the compiled row loop (`_rowmask`): its structure → plan entries (`c_plan`), and
        # one cache per chain of maskers, string contents → masked contents, JSON-escaped.
        self.structures: dict[bytes, CPlanEntry | None] = {}
        self._leaves: dict[tuple[int, ...], tuple[dict[bytes, bytes | None],
                                                  Callable[[bytes], bytes | None]]] = {}

    def _known(self, structure: str) -> tuple[str, list[_Slot], list[int],
                                               Callable[[list[str]], Any]] | None:
        shape = _SCALARS.sub(_SCALAR, structure.translate(_SCALAR_CHARS))
        if shape not in self._shapes:
            if len(self._shapes) >= SHAPE_CACHE:
                self._shapes.clear()
                self._plans.clear()
            found = _walk_shape(shape)
            self._shapes[shape] = None if found is None else (
                found[0], found[1], _picker([2 * k + 1 for k in found[1]]))
        known = self._shapes[shape]
        return None if known is None else (shape, *known)

    def _planned(self, shape: str, slots: list[_Slot], key_strings: list[int],
                 keys: tuple[str, ...], *, quoted: bool) -> _Plan | None:
        at = (shape, keys, quoted)
        if at not in self._plans:
            names = [json.loads(k) for k in keys] if quoted else list(keys)
            self._plans[at] = self._plan(slots, key_strings, names)
        return self._plans[at]

    def __call__(self, value: str) -> str:
        if "\\" not in value and value.isprintable():
            masked = self._quick(value)
            if masked is not None:
                return '"'.join(masked[0])
        return self._escaped(value)

    def with_searched(self, value: str) -> tuple[str, str]:
        """The masked document, and the same without the strings the rules generated (what
        the leak search looks at: a fake name picked from the same list as a real one is no
        leak, and a rule's output owes nothing to the input)."""
        if "\\" not in value and value.isprintable():
            masked = self._quick(value)
            if masked is not None:
                parts, plan = masked
                text = '"'.join(parts)
                for index, _, generated in plan:
                    if generated:
                        parts[index] = ""
                return text, '"'.join(parts)
        text = self._escaped(value)
        try:
            doc = json.loads(text, parse_float=Decimal)
        except ValueError:
            return text, text
        for path, masker in self._paths:
            if self._generated.get(id(masker), True):
                doc = _apply(doc, path, _blank)
        return text, _dumps(doc)

    def _quick(self, value: str) -> tuple[list[str], _Plan] | None:
        """`__call__` for text without backslashes or control characters, where the parts
        between quotes alternate between structure and string contents: the parts, masked,
        and the plan; None when the text needs the regex path."""
        parts = value.split('"')
        if not len(parts) & 1:
            return None
        structure = _STRING.join(parts[0::2])
        # Documents of one structure mostly have the same keys too: the plan of the last
        # keys seen with this structure, when they match, saves hashing them.
        recent = self._structures.get(structure)
        if recent is not None and recent[1](parts) == recent[2]:
            plan = recent[3]
        else:
            known = self._known(structure)
            if known is None:
                return None
            shape, slots, key_strings, pick_keys = known
            keys = pick_keys(parts)
            plan = self._planned(shape, slots, key_strings, keys, quoted=False)
            if len(self._structures) >= SHAPE_CACHE:
                self._structures.clear()
            self._structures[structure] = (shape, pick_keys, keys, plan)
        if plan is None:
            return None
        for index, maskers, _ in plan:
            text: str | None = parts[index]
            for masker in maskers:
                text = masker(text)
            if text is None:  # `null` in place of a string: the quotes must go too
                return None
            parts[index] = encode_basestring(text)[1:-1]
        return parts, plan

    def c_plan(self, parts: list[bytes]) -> CPlanEntry | None:
        """For the compiled row loop: the plan of a document cut at its quotes (see
        `_rowmask.c`): (indices of its keys, the keys, [(part index, cache, miss, generated)]
        or None when the document needs the Python path); None when the structure is not one
        JSON value. The same plan `_quick` follows, so the output is the same."""
        texts = [part.decode("utf-8") for part in parts]
        known = self._known(_STRING.join(texts[0::2]))
        if known is None:
            return None
        shape, slots, key_strings, pick_keys = known
        keys = pick_keys(texts)
        plan = self._planned(shape, slots, key_strings, keys, quoted=False)
        indices = tuple(2 * k + 1 for k in key_strings)
        steps = None if plan is None else tuple(
            self._step(index, maskers, generated)
            for index, maskers, generated in sorted(plan, key=operator.itemgetter(0)))
        return indices, tuple(key.encode("utf-8") for key in keys), steps

    def _step(self, index: int, maskers: list[Masker], generated: bool) -> CPlanStep:
        """A plan step for the compiled loop. A path whose one masker has a compiled
        transformer gets no cache of its own: the transformer costs about what a lookup in a
        big cache does, and the loop keeps the strings it met a moment ago anyway."""
        direct = self._direct(maskers[0]) if len(maskers) == 1 else None
        cache, miss = self._leaf(maskers)
        return index, None if is_compiled(direct) else cache, miss, generated, direct

    def _leaf(self, maskers: list[Masker]) -> tuple[dict[bytes, bytes | None],
                                                     Callable[[bytes], bytes | None]]:
        """The cache and miss function of a chain of maskers at a JSON path: string contents
        (no escapes) → masked contents, JSON-escaped; None when a masker writes null."""
        ident = tuple(id(m) for m in maskers)
        found = self._leaves.get(ident)
        if found is None:
            def miss(part: bytes) -> bytes | None:
                text: str | None = part.decode("utf-8")
                for masker in maskers:
                    text = masker(text)
                return None if text is None else encode_basestring(text)[1:-1].encode("utf-8")

            found = self._leaves[ident] = ({}, miss)
        return found

    def _escaped(self, value: str) -> str:
        """The regex path of `__call__`, for any text."""
        parts = _JSON_STRING.split(value)
        known = self._known(_STRING.join(parts[0::2]))
        if known is None:
            return self._slow(value)
        shape, slots, key_strings, pick_keys = known
        plan = self._planned(shape, slots, key_strings, pick_keys(parts), quoted=True)
        if plan is None:
            return self._slow(value)
        for index, maskers, _ in plan:
            raw = parts[index]
            text: str | None = json.loads(raw) if "\\" in raw else raw[1:-1]
            for masker in maskers:
                text = masker(text)
            parts[index] = "null" if text is None else encode_basestring(text)
        return "".join(parts)

    def _plan(self, slots: list[_Slot], key_strings: list[int], names: list[str]
              ) -> _Plan | None:
        """(index in the split parts, maskers in rule order) of each string a rule reaches;
        None when a rule reaches anything but a string (that needs parsing)."""
        by_index = dict(zip(key_strings, names, strict=True))
        plan = []
        for slot in slots:
            path = tuple(by_index[n] if is_key else n for is_key, n in slot.path)
            maskers = [m for rule, m in self._paths if _matches(rule, path)]
            if not maskers:
                continue
            if slot.kind != "string":
                return None
            plan.append((2 * slot.string + 1, maskers,
                         any(self._generated.get(id(m), True) for m in maskers)))
        return plan

    def _slow(self, value: str) -> str:
        try:
            doc = json.loads(value, parse_float=Decimal)
        except ValueError:
            return json.dumps(REDACTED)
        for path, masker in self._paths:
            doc = _apply(doc, path, masker)
        return _dumps(doc)


def _json(params: Mapping[str, Any], key: bytes,
          nested: Callable[[ColumnRule], Masker] | None = None,
          direct: Callable[[Masker], Transform | None] | None = None) -> _JsonMasker:
    """Mask the values at each path with its nested rule (made by `nested` when given)."""
    make = nested or (lambda rule: make_masker(rule, key=key))
    return _JsonMasker([(parse_json_path(p), make(rule)) for p, rule in params["paths"].items()],
                       [rule.transformer not in PASS_THROUGH for rule in params["paths"].values()],
                       direct)


class SharedMaskers:
    """The maskers of one build's rules under one key, made once per rule: every column and
    JSON path with the same rule shares a masker and its cache, so an e-mail address masked in
    `customers.email` is not hashed again in `orders.customer_email` or inside `orders.meta`.

    Each cache is a plain dict that starts over when full (cheaper per value than an LRU). Meant
    for one build's masking processes, which end with the build; rules seen by a long-lived
    process would otherwise accumulate."""

    def __init__(self, key: bytes, *, cache_size: int = SHARED_CACHE) -> None:
        if not key:
            raise ValueError("the masking key is empty (set EPHEM_MASKING_KEY)")
        self._key, self._size = key, cache_size
        self._maskers: dict[str, Masker] = {}
        self._jsons: dict[str, _JsonMasker] = {}
        self._compiled: dict[int, Transform] = {}  # id of a masker → its compiled transformer

    def masker(self, rule: ColumnRule) -> Masker:
        """The shared masker of `rule` (as `make_masker` makes it, cache aside)."""
        ident = repr(rule)
        found = self._maskers.get(ident)
        if found is None:
            found = self._maskers[ident] = self._make(check_rule(rule))
        return found

    def json_with_search(self, rule: ColumnRule) -> Callable[[str], tuple[str, str]]:
        """For a `json` rule: a function from a document to its masked text and the text the
        leak search looks at (`_JsonMasker.with_searched`)."""
        return self.json(rule).with_searched

    def json(self, rule: ColumnRule) -> _JsonMasker:
        """The shared JSON masker of a `json` rule (what `masker` applies to each document)."""
        ident = repr(rule)
        found = self._jsons.get(ident)
        if found is None:
            checked = check_rule(rule)
            if checked.transformer != "json":
                raise ValueError("a JSON masker needs a json rule")
            found = self._jsons[ident] = _json(checked.params, self._key, self.masker,
                                               self.compiled_of)
        return found

    def direct(self, rule: ColumnRule) -> Transform | None:
        """The compiled transformer behind `masker(rule)`, when it has one: what it gives for
        any text but None (the compiled row loop calls it without the masker around it)."""
        return self.compiled_of(self.masker(rule))

    def compiled_of(self, masker: Masker) -> Transform | None:
        """The compiled transformer behind one of this set's maskers, if any."""
        return self._compiled.get(id(masker))

    def _make(self, rule: ColumnRule) -> Masker:
        if rule.transformer in ("keep", "null", "redact"):
            return make_masker(rule, key=self._key, cache_size=0)
        if rule.transformer == "json":  # documents rarely repeat; their parts are cached
            json_masker = self.json(rule)
            return lambda value: None if value is None else json_masker(value)
        transform = _BUILDERS[rule.transformer](rule.params, self._key)
        cache: dict[str, str | None] = {}
        size = self._size

        def masker(value: str | None) -> str | None:
            if value is None:
                return None
            out = cache.get(value)
            if out is None:  # these transformers never give None: a miss
                if len(cache) >= size:
                    cache.clear()
                out = cache[value] = transform(value)
            return out

        if rule.transformer == "regex" or is_compiled(transform):
            self._compiled[id(masker)] = transform  # no Python frame inside: called directly
        return masker


def _blank(value: str | None) -> str:
    return ""


# --------------------------------------------------------------------------- entry point

# The transformers in Python: the reference the compiled ones are tested against, and what runs
# when the extension is missing.
_PYTHON_BUILDERS: Mapping[str, Builder] = {
    "redact": _redact,
    "hash": _hash,
    "email": _email,
    "first_name": _name_picker("first_name"),
    "last_name": _name_picker("last_name"),
    "full_name": _name_picker("full_name"),
    "phone": _phone,
    "address": _address,
    "date_shift": _date_shift,
    "number_noise": _number_noise,
    "regex": _regex,
    "json": _json,
    "template": _template,
}


def _email_domains(params: Mapping[str, Any]) -> tuple[str, ...]:
    return (str(params["domain"]),) if "domain" in params else EMAIL_DOMAINS


def _locale(params: Mapping[str, Any]) -> str:
    return str(params.get("locale", DEFAULT_LOCALE))


def _compiled_names(kind: str) -> Callable[[Mapping[str, Any], bytes, Transform], Transform]:
    def make(params: Mapping[str, Any], key: bytes, slow: Transform) -> Transform:
        locale = _locale(params)
        return _fastmask.names(key, kind, first_names(locale), last_names(locale), fallback=slow)

    return make


# How each compiled transformer is made from a rule's parameters, the key and the Python
# transformer (its fallback). The word lists are the Python transformers' own, in their order.
_COMPILED_MAKERS: Mapping[str, Callable[[Mapping[str, Any], bytes, Transform], Transform]] = {
    "hash": lambda p, key, slow: _fastmask.hash(key, int(p.get("length", 64)), fallback=slow),
    "email": lambda p, key, slow: _fastmask.email(
        key, *_email_words(), _email_domains(p), fallback=slow),
    **{kind: _compiled_names(kind) for kind in ("first_name", "last_name", "full_name")},
    "address": lambda p, key, slow: _fastmask.address(
        key, street_names(_locale(p)), fallback=slow),
    "template": lambda p, key, slow: _fastmask.template(
        key, parse_template(str(p["format"])), fallback=slow),
    "phone": lambda p, key, slow: _fastmask.phone(key, p.get("keep_prefix"), fallback=slow),
    "date_shift": lambda p, key, slow: _fastmask.date_shift(key, int(p["days"]), fallback=slow),
}


def _compiled(name: str) -> Builder:
    """The builder of transformer `name`: compiled, with the Python one as its fallback. A
    word list the C code cannot hold (empty, or text that is not valid Unicode) keeps the whole
    transformer in Python."""
    python, make = _PYTHON_BUILDERS[name], _COMPILED_MAKERS[name]

    def build(params: Mapping[str, Any], key: bytes) -> Transform:
        slow = python(params, key)
        try:
            return make(params, key, slow)
        except ValueError:
            return slow

    return build


_BUILDERS: Mapping[str, Builder] = {
    name: _compiled(name) if COMPILED and name in _COMPILED_MAKERS else build
    for name, build in _PYTHON_BUILDERS.items()
}


def _keep(value: str | None) -> str | None:
    return value


def _null(value: str | None) -> str | None:
    return None


def make_masker(rule: ColumnRule, *, key: bytes,
                cache_size: int = DEFAULT_CACHE_SIZE) -> Masker:
    """A function from a value's text (None for NULL) to its masked text, deterministic under
    `key`. Raises ConfigError for an invalid rule and ValueError for an empty key; the masker
    raises MaskingError for a value its transformer cannot handle."""
    if not key:
        raise ValueError("the masking key is empty (set EPHEM_MASKING_KEY)")
    rule = check_rule(rule)
    if rule.transformer == "keep":
        return _keep
    if rule.transformer == "null":
        return _null
    transform = _BUILDERS[rule.transformer](rule.params, key)
    if rule.transformer != "redact" and cache_size > 0:
        transform = lru_cache(maxsize=cache_size)(transform)

    def masker(value: str | None) -> str | None:
        return None if value is None else transform(value)

    return masker
