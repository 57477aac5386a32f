"""What personal data looks like inside a value: e-mail addresses, phone numbers, payment card
numbers, IBANs and national ID numbers, found whole or inside free text.

Why: three checks look for the same things and must agree on what they are — the detector
judging a source column (`detect`), the post-mask check looking at what a rule leaves behind
(`unmasked`), and the leak check choosing which parts of a free-text value to look for in the
snapshot (`leaks`). Each pattern is narrow on purpose and checked where a checksum exists (Luhn
for cards, ISO 7064 for IBANs, the SSA's rules for US social security numbers), so an order
number or a date is not mistaken for a card or a phone number.

`shape` turns a match into its shape (`+## ## #### ####`, `xxx.xxx@xxxx.xxx`) for error messages,
which must show what was found without showing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}")
CARD = re.compile(r"\d(?:[ -]?\d){12,18}")
CARD_IN_TEXT = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d.])")
IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
IBAN_IN_TEXT = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
PHONE = re.compile(r"\+?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"
                   r"(?: ?(?:x|ext\.?) ?\d{1,5})?")
# A national number with its trunk prefix (07000 000001 written as 07000000001), or an
# international one with 00: digits only, which an order number rarely is with a leading 0.
DIGITS_PHONE = re.compile(r"0[1-9]\d{8,10}|00[1-9]\d{8,12}")
PHONE_IN_TEXT = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(?\d{1,4}\)?[ .-]?){2,5}\d{2,4}"
                           r"|\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4})(?!\w)"
                           r"|(?<![\w.+-])(?:0[1-9]\d{8,10}|00[1-9]\d{8,12})(?![\w.-])")
# US social security numbers (area 000, 666 and 900-999, group 00 and serial 0000 are never
# issued) and UK national insurance numbers.
SSN = re.compile(r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}")
NINO = re.compile(r"(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                  r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]")
NATIONAL_ID_IN_TEXT = re.compile(r"(?<![\w-])(?:" + SSN.pattern + r"|" + NINO.pattern
                                 + r")(?![\w-])")
DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}.*|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)")

# The kinds `find` reports, by the names a rules file uses (`keep: {allow: [...]}`).
EMAIL_KIND, PHONE_KIND, CARD_KIND, IBAN_KIND, NATIONAL_ID_KIND = (
    "email", "phone", "card", "iban", "national_id")
CARD_CANDIDATE = "card_candidate"  # 13 to 19 digits failing Luhn: a card number only by shape
LABELS = {EMAIL_KIND: "e-mail addresses", PHONE_KIND: "phone numbers",
          CARD_KIND: "payment card numbers", IBAN_KIND: "IBANs",
          NATIONAL_ID_KIND: "national ID numbers"}


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


def is_phone(value: str) -> bool:
    """A whole value that is a phone number (not a date, a decimal or an IP address)."""
    if DIGITS_PHONE.fullmatch(value):
        return True
    if not PHONE.fullmatch(value) or DATE_LIKE.fullmatch(value) or IPV4.fullmatch(value):
        return False
    digits = sum(ch.isdigit() for ch in value)
    if not 7 <= digits <= 15:
        return False
    separators = [ch for ch in value if ch in " .-()"]
    if value.startswith("+") or "(" in value:
        return True
    return bool(separators) and separators != ["."]  # one dot: a decimal number


def is_national_id(value: str) -> bool:
    return bool(SSN.fullmatch(value) or NINO.fullmatch(value))


@dataclass(frozen=True)
class Found:
    """One piece of personal data inside a text: its kind and where it is."""

    kind: str
    start: int
    end: int


def find(text: str) -> Iterator[Found]:
    """Personal data inside `text`. Card-like digit runs that fail Luhn are reported too
    (`CARD_CANDIDATE`): callers weigh how many pass, since one in ten random numbers does."""
    if "@" in text:
        for m in EMAIL.finditer(text):
            yield Found(EMAIL_KIND, m.start(), m.end())
    if not any(ch.isdigit() for ch in text):
        return
    for m in IBAN_IN_TEXT.finditer(text):
        if iban_ok(m.group()):
            yield Found(IBAN_KIND, m.start(), m.end())
    cards = [(m.start(), m.end()) for m in CARD_IN_TEXT.finditer(text)]
    for start, end in cards:
        yield Found(CARD_KIND if luhn_ok(re.sub(r"[ -]", "", text[start:end]))
                    else CARD_CANDIDATE, start, end)
    for m in NATIONAL_ID_IN_TEXT.finditer(text):
        yield Found(NATIONAL_ID_KIND, m.start(), m.end())
    for m in PHONE_IN_TEXT.finditer(text):
        inside_card = any(s <= m.start() and m.end() <= e for s, e in cards)
        if not inside_card and not SSN.fullmatch(m.group()):
            yield Found(PHONE_KIND, m.start(), m.end())


_SHAPE = str.maketrans({**dict.fromkeys("0123456789", "#"),
                        **{c: "x" for c in "abcdefghijklmnopqrstuvwxyz"},
                        **{c: "X" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}})


def shape(text: str, *, limit: int = 40) -> str:
    """`+44 20 7946 0958` → `+## ## #### ####`: what a value looks like, not what it is.
    Letters outside ASCII become `x` too; the result is cut at `limit` characters."""
    out = "".join(ch if not ch.isalpha() else ("X" if ch.isupper() else "x")
                  for ch in text.translate(_SHAPE))
    return out if len(out) <= limit else out[:limit - 1] + "…"
