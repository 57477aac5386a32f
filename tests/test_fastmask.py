"""The compiled transformers (`pipelines/data/_fastmask.c`) against the Python ones: the same
output for every input, byte for byte, and the Python transformer (or its error) for the values
the C code leaves to it.

Each comparison calls the C transform without a fallback, so a value it refuses shows as None
and is counted: a test that let C refuse everything would compare Python with itself."""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import random
import shutil
import string
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from pipelines.data import masking
from pipelines.data.masking import MaskingError, first_names, last_names, street_names
from pipelines.data.rules import parse_template

try:
    from pipelines.data import _fastmask
except ImportError:  # pragma: no cover - reported by test_built_where_a_compiler_is
    _fastmask = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_fastmask is None, reason="pipelines.data._fastmask is not built")

KEYS = [b"k", b"bench-masking-key-0123456789abcdef", bytes(range(64)), bytes(range(65)),
        b"\x00" * 3, os.urandom(200)]
N = 20_000


def test_built_where_a_compiler_is() -> None:
    """An install on a machine with a C compiler builds the extension (it is optional, so a
    broken build would otherwise go unnoticed, only slower)."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert masking.COMPILED, "a C compiler is here but pipelines.data._fastmask is not built"
    assert masking.COMPILED is (_fastmask is not None)


# --------------------------------------------------------------------------- values


def _text(rng: random.Random, alphabet: str, low: int = 0, high: int = 40) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


_LATIN1 = "".join(map(chr, range(0xA0, 0x100)))
_BMP = "äöüßéñçøåæœ€ЖЩяשׁعربي中文日本語한국어\u2003\u00a0\u3000\u0662\u0660\u0664\u0669"
_ASTRAL = "😀🎉𝔘𝔫𝔦𐍈🀄"
_SURROGATES = "\ud800\udbff\udc00\udfff"


def random_values(seed: int, n: int = N) -> list[str]:
    """Text of every kind: ASCII, Latin-1, BMP, astral, lone surrogates, empty, long."""
    rng = random.Random(seed)
    ascii_all = "".join(map(chr, range(128)))
    out = ["", " ", "\x00", "a", "é", "😀", "\ud800", "a\udc00b", "x" * 5000, "é" * 3000,
           "😀" * 1000, "\ud83d\ude00"]
    alphabets = [string.printable, ascii_all, string.ascii_letters + _LATIN1,
                 string.ascii_letters + _BMP, string.ascii_letters + _BMP + _ASTRAL,
                 string.ascii_letters + _SURROGATES + _BMP]
    while len(out) < n:
        high = rng.choice((5, 40, 200, 2000)) if rng.random() < 0.05 else 40
        out.append(_text(rng, rng.choice(alphabets), 0, high))
    return out


def phone_values(seed: int, n: int = N) -> list[str]:
    """Phone numbers written every way people write them, and things that are not."""
    rng = random.Random(seed)
    out = ["+44 20 7946 0958", "+1-202-555-0143", "07000000001", "(415) 555-0123",
           "0044 20 7946 0958", "020 7946 0958", "+447700900123", "0044 7700 900123",
           "+7 495 123-45-67", "+86 10 1234 5678", "+353 1 234 5678", "1-800-555-0199",
           "+1 (555) 123-4567", "555-0123", "12", "1", "0", "00", "+", "", "no digits",
           "ext. 12", "  +44 1632 960 000", "\u2003+44 1632 960000", "\n+1 202 555 0143",
           "+\u0664\u0664 20 7946 0958", "tel: +33 1 23 45 67 89 ", "0033123456789",
           "001 202 555 0143",
           "(0) 20 7946 0958", "+44 (0) 20 7946 0958", "2025550143", "1202555014",
           "+1 2025550143", "0000000000", "00000000000", "+0 123 456 7890", "ä+44 20 7946 0958",
           "☎ 020 7946 0958", "😀 +1 202 555 0143", "\ud800 020 7946 0958", "9" * 60]
    seps = [" ", "-", ".", "/", " - ", "", "\t", "\u00a0", "·"]
    while len(out) < n:
        lead = rng.choice(["+", "00", "0", "", "", " +", "(", "+(", "\u2003+"])
        groups = [str(rng.randrange(10 ** (k := rng.randint(1, 5)))).zfill(k)
                  for _ in range(rng.randint(1, 5))]
        sep = rng.choice(seps)
        text = lead + sep.join(groups)
        if rng.random() < 0.2:
            text = text.replace(sep, rng.choice(seps), 1) + rng.choice(["", " ext 12", "ä", "😀"])
        out.append(text)
    return out


ARABIC_DATE = "\u0662\u0660\u0662\u0664-01-31"  # 2024-01-31 in Arabic-Indic digits


def date_values(seed: int, n: int = N) -> list[str]:
    """Dates and timestamps in PostgreSQL's ISO style, their edges, and what is not a date."""
    rng = random.Random(seed)
    out = ["2024-01-31", "2024-01-31 12:00:00+00", "2024-02-29", "2023-02-29", "2024-02-30",
           "infinity", "-infinity", "Infinity", "infinity ", "0001-01-01", "0001-01-02",
           "9999-12-31", "9999-12-30", "0000-01-01", "10000-01-01", "2024-01-31 BC",
           "0044-03-15 BC", "2024-01-31T08:30", "2024-01-31\n", "2024-01-31\nx", "2024-1-31",
           "24-01-31", "2024-01-31x", "2024-13-01", "2024-00-10", "2024-01-00", "",
           "02024-01-31", "0000002024-06-15 10:00", "9" * 80 + "-01-01", ARABIC_DATE,
           "2024-\u0660\u0661-31", "2024-01-3\u0661", "2024-01-31 ä", "2024-01-31 😀",
           "2024-01-31 \ud800",
           "1900-02-28", "2000-02-29", "2100-02-29", "1582-10-10", "2024-01-31 12:00:00-07:30"]
    suffixes = ["", "", " 12:00:00+00", " 00:00:00", "T23:59:59.999", "\n", " BC", "x",
                " 12:00:00 BC", "\nx", " ", "T", "+00", " é", "-01"]
    while len(out) < n:
        r = rng.random()
        if r < 0.05:
            year = rng.choice([1, 2, 3, 9997, 9998, 9999])
        elif r < 0.08:
            year = rng.choice([0, 10000, 12345])
        else:
            year = rng.randint(1, 9999)
        width = 4 if rng.random() < 0.9 else rng.randint(1, 7)
        month = rng.randint(1, 12) if rng.random() < 0.95 else rng.randint(0, 13)
        day = rng.randint(1, 28) if rng.random() < 0.8 else rng.randint(0, 32)
        out.append(f"{year:0{width}d}-{month:02d}-{day:02d}{rng.choice(suffixes)}")
    return out


# --------------------------------------------------------------------------- comparing


def _outcome(transform: Callable[[str], str | None], value: str) -> tuple[str, Any]:
    try:
        return "ok", transform(value)
    except MaskingError as exc:
        return "error", str(exc)


def compare(name: str, params: dict[str, Any], key: bytes, values: Iterable[str],
            raw: Callable[[str], str | None], refused_ok: list[str] | None = None
            ) -> tuple[int, int]:
    """Check the compiled transformer (with its fallback) against the Python one on every
    value, and the bare C transform where it answers; (values C handled, values). The values
    C refused though Python masks them are added to `refused_ok`."""
    python = masking._PYTHON_BUILDERS[name](params, key)
    compiled = masking._BUILDERS[name](params, key)
    assert type(compiled).__name__ == "Transform", "the compiled transformer is not in use"
    handled = total = 0
    for value in values:
        total += 1
        expected = _outcome(python, value)
        assert _outcome(compiled, value) == expected, (name, params, key, value)
        out = raw(value)
        if out is not None:
            handled += 1
            assert expected == ("ok", out), (name, params, key, value)
        elif expected[0] == "ok" and refused_ok is not None:
            refused_ok.append(value)
    return handled, total


@needs_c
@pytest.mark.parametrize("portable", [False, True], ids=["default", "portable"])
def test_sha256_matches_hashlib(portable: bool) -> None:
    """Both compressions (SHA-NI where the CPU has it, and the portable one) are SHA-256."""
    rng = random.Random(7)
    for n in [*range(300), 1000, 4095, 4096, 65_537]:
        data = rng.randbytes(n)
        assert _fastmask.sha256(data, portable) == hashlib.sha256(data).digest(), n


@needs_c
@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"key{len(k)}")
@pytest.mark.parametrize("length", [64, 1, 7, 32])
def test_hash(key: bytes, length: int) -> None:
    raw = _fastmask.hash(key, length)
    handled, total = compare("hash", {"length": length}, key, random_values(length), raw)
    assert handled == total


@needs_c
@pytest.mark.parametrize("key", KEYS[:4], ids=lambda k: f"key{len(k)}")
@pytest.mark.parametrize("params", [{}, {"domain": "corp.test"}, {"domain": "exämple.com"}],
                         ids=["default", "domain", "unicode-domain"])
def test_email(key: bytes, params: dict[str, Any]) -> None:
    first, last = masking._email_words()
    raw = _fastmask.email(key, first, last, masking._email_domains(params))
    handled, total = compare("email", params, key, random_values(len(key)), raw)
    assert handled == total


@needs_c
@pytest.mark.parametrize("kind", ["first_name", "last_name", "full_name"])
@pytest.mark.parametrize("locale", ["en_US", "de_DE", "ja_JP", "ru_RU"])
def test_names(kind: str, locale: str) -> None:
    raw = _fastmask.names(KEYS[1], kind, first_names(locale), last_names(locale))
    handled, total = compare(kind, {"locale": locale}, KEYS[1], random_values(3, N // 4), raw)
    assert handled == total
    handled, total = compare(kind, {}, KEYS[3], random_values(4, N // 4),
                             _fastmask.names(KEYS[3], kind, first_names(), last_names()))
    assert handled == total


@needs_c
@pytest.mark.parametrize("locale", ["en_US", "fr_FR"])
def test_address(locale: str) -> None:
    raw = _fastmask.address(KEYS[0], street_names(locale))
    handled, total = compare("address", {"locale": locale}, KEYS[0], random_values(5), raw)
    assert handled == total


TEMPLATES = ["ORD-{hash:8}", "{digits:4}", "{hash:64}{hash:64}{hash:9}",
             "{digits:64}-{digits:64}-{digits:64}", "a{hash:3}b{digits:5}c{hash:40}d{digits:40}e",
             "é{hash:2}😀{digits:2}中", "{{literal}} {hash:1}", "{digits:33}"]


@needs_c
@pytest.mark.parametrize("fmt", TEMPLATES)
def test_template(fmt: str) -> None:
    key = KEYS[len(fmt) % len(KEYS)]
    raw = _fastmask.template(key, parse_template(fmt))
    handled, total = compare("template", {"format": fmt}, key, random_values(6, N // 2), raw)
    assert handled == total


@needs_c
@pytest.mark.parametrize("keep_prefix", [None, 0, 1, 2, 3, 6])
def test_phone(keep_prefix: int | None) -> None:
    params = {} if keep_prefix is None else {"keep_prefix": keep_prefix}
    raw = _fastmask.phone(KEYS[1], keep_prefix)
    values = phone_values(keep_prefix or 0) + random_values(8, 2000)
    handled, total = compare("phone", params, KEYS[1], values, raw)
    assert handled == total  # a phone number in any text is for C to mask


@needs_c
@pytest.mark.parametrize("days", [1, 30, 365, 36500])
def test_date_shift(days: int) -> None:
    raw = _fastmask.date_shift(KEYS[1], days)
    values = date_values(days) + random_values(9, 2000)
    refused_ok: list[str] = []
    handled, total = compare("date_shift", {"days": days}, KEYS[1], values, raw, refused_ok)
    assert handled > total / 3
    # C leaves to Python only the dates Python refuses, and those written with other digits
    assert refused_ok
    assert all(not value[:10].isascii() for value in refused_ok), refused_ok[:5]


@needs_c
def test_date_shift_edges_left_to_python() -> None:
    """What C refuses, Python decides: the same error for what is no date, the same result
    for a date written with other digits than ASCII (Python's \\d reads them)."""
    raw = _fastmask.date_shift(KEYS[0], 10)
    compiled = masking._BUILDERS["date_shift"]({"days": 10}, KEYS[0])
    python = masking._PYTHON_BUILDERS["date_shift"]({"days": 10}, KEYS[0])
    for bad in ("2024-02-30", "not a date", "0000-01-01", "2024-01-31 BC"):
        assert raw(bad) is None
        with pytest.raises(MaskingError, match="date_shift"):
            compiled(bad)
    assert raw(ARABIC_DATE) is None
    assert compiled(ARABIC_DATE) == python(ARABIC_DATE)
    assert raw("infinity") == "infinity"
    # the first and last days: a shift past either end is refused, as in Python
    for edge in ("0001-01-01", "0001-01-10", "9999-12-31", "9999-12-25"):
        assert _outcome(compiled, edge) == _outcome(python, edge)


@needs_c
def test_fallback_is_called_for_refused_values_only() -> None:
    seen: list[str] = []

    def fallback(value: str) -> str:
        seen.append(value)
        return "from python"

    shift = _fastmask.date_shift(KEYS[0], 10, fallback=fallback)
    assert shift("2024-02-30") == "from python"
    assert shift("2024-02-10") != "from python"
    assert seen == ["2024-02-30"]


@needs_c
def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError):
        _fastmask.hash(KEYS[0], 8)(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _fastmask.hash(KEYS[0], 8)()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="empty"):
        _fastmask.hash(b"", 8)
    with pytest.raises(ValueError):
        _fastmask.hash(KEYS[0], 65)
    with pytest.raises(ValueError):
        _fastmask.names(KEYS[0], "first_name", [], ["x"])
    with pytest.raises(UnicodeEncodeError):
        _fastmask.address(KEYS[0], ["\ud800"])


@needs_c
def test_a_word_list_c_cannot_hold_keeps_python() -> None:
    """A word list the C code refuses leaves that transformer in Python, with the same
    output."""
    build = masking._compiled("email")
    transform = build({"domain": "bad\ud800.test"}, KEYS[0])
    assert type(transform).__name__ != "Transform"
    assert transform("a@b.c") == masking._PYTHON_BUILDERS["email"](
        {"domain": "bad\ud800.test"}, KEYS[0])("a@b.c")


@needs_c
def test_key_never_shown() -> None:
    key = b"super-secret-masking-key"
    for transform in (_fastmask.hash(key, 8), _fastmask.phone(key),
                      masking._BUILDERS["email"]({}, key)):
        assert "super-secret" not in repr(transform)
        assert not [a for a in dir(transform) if not a.startswith("__")]
        with pytest.raises(TypeError):
            pickle.dumps(transform)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_c
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_reference_leaks() -> None:
    """Many calls, each on a fresh string, through every path: memory stays flat."""
    first, last = masking._email_words()
    transforms = [
        (_fastmask.email(KEYS[0], first, last, ("exämple.com",)), "user{}@x.test"),
        (_fastmask.names(KEYS[0], "full_name", first_names("ja_JP"), last_names("ja_JP")),
         "名前{}"),
        (_fastmask.template(KEYS[0], parse_template("é{hash:64}{hash:9}{digits:40}")), "v{}"),
        (_fastmask.phone(KEYS[0]), "+44 20 7946 {}ä"),
        (_fastmask.date_shift(KEYS[0], 30), "2024-01-{}"),
        (_fastmask.date_shift(KEYS[0], 30, fallback=lambda v: v), "2024-02-3{}"),
    ]
    for transform, pattern in transforms:
        for i in range(20_000):  # warm up allocators
            transform(pattern.format(i % 100))
        gc.collect()
        before = _rss()
        for i in range(200_000):
            transform(pattern.format(i % 100))
        gc.collect()
        assert _rss() - before < 2 * 1024 * 1024, pattern


def test_without_the_extension_everything_runs_in_python() -> None:
    """An install without a C compiler has no `_fastmask`: masking works as before, in
    Python, and says so."""
    code = """
import sys
sys.modules["pipelines.data._fastmask"] = None  # what a missing extension looks like
from pipelines.data import masking
from pipelines.data.rules import ColumnRule
assert masking.COMPILED is False
assert masking._BUILDERS["email"] is masking._PYTHON_BUILDERS["email"]
mask = masking.make_masker(ColumnRule("date_shift", {"days": 30}), key=b"k")
print(mask("2024-01-31 12:00:00+00"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    python = masking._PYTHON_BUILDERS["date_shift"]({"days": 30}, b"k")
    assert out == python("2024-01-31 12:00:00+00")


# --------------------------------------------------------------------------- hypothesis


def _hypothesis_tests() -> None:
    """Property tests where hypothesis is installed: it searches for the inputs on which C and
    Python differ (and shrinks them), beyond what the seeded loops above draw."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
    phone_like = st.lists(st.one_of(st.sampled_from("+0123456789 -().\u2003ä"), st.characters()),
                          max_size=30).map("".join)
    date_like = st.builds(
        lambda y, m, d, rest: f"{y}-{m}-{d}{rest}",
        st.integers(1, 9999).map("{:04d}".format) | st.integers(0, 12000).map(str)
        | st.text("0123456789\u0662", min_size=1, max_size=6),
        st.integers(1, 12).map("{:02d}".format) | st.text("0123456789", min_size=1, max_size=3),
        st.integers(1, 31).map("{:02d}".format) | st.text("0123456789", min_size=1, max_size=3),
        st.sampled_from(["", " ", "T", "\n", "\nx", " BC", " 12:00+00", "x", " é"]) | text)
    key = st.binary(min_size=1, max_size=130)
    checks = settings(max_examples=500, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])

    def same(name: str, params: dict[str, Any], k: bytes, value: str,
             raw: Callable[[str], str | None]) -> None:
        compare(name, params, k, [value], raw)

    @checks
    @given(key, text, st.integers(1, 64))
    def hash_(k: bytes, value: str, length: int) -> None:
        same("hash", {"length": length}, k, value, _fastmask.hash(k, length))

    @checks
    @given(key, text)
    def email(k: bytes, value: str) -> None:
        first, last = masking._email_words()
        same("email", {}, k, value, _fastmask.email(k, first, last, masking.EMAIL_DOMAINS))

    @checks
    @given(key, text, st.sampled_from(["first_name", "last_name", "full_name"]))
    def names(k: bytes, value: str, kind: str) -> None:
        same(kind, {}, k, value, _fastmask.names(k, kind, first_names(), last_names()))

    @checks
    @given(key, text)
    def address(k: bytes, value: str) -> None:
        same("address", {}, k, value, _fastmask.address(k, street_names()))

    @checks
    @given(key, text, st.lists(st.tuples(st.text(max_size=5), st.sampled_from(["hash", "digits"]),
                                         st.integers(1, 64)), min_size=1, max_size=5))
    def template(k: bytes, value: str, fields: list[tuple[str, str, int]]) -> None:
        fmt = "".join(f"{lit.replace('{', '{{').replace('}', '}}')}{{{f}:{w}}}"
                      for lit, f, w in fields)
        same("template", {"format": fmt}, k, value, _fastmask.template(k, parse_template(fmt)))

    @checks
    @given(key, phone_like | text, st.none() | st.integers(0, 6))
    def phone(k: bytes, value: str, keep: int | None) -> None:
        params = {} if keep is None else {"keep_prefix": keep}
        same("phone", params, k, value, _fastmask.phone(k, keep))

    @checks
    @given(key, date_like | text, st.integers(1, 36500))
    def date_shift(k: bytes, value: str, days: int) -> None:
        same("date_shift", {"days": days}, k, value, _fastmask.date_shift(k, days))

    for test in (hash_, email, names, address, template, phone, date_shift):
        test()


@needs_c
def test_hypothesis_finds_no_difference() -> None:
    pytest.importorskip("hypothesis")
    _hypothesis_tests()
