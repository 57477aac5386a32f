"""The leak check: no sampled personal value of the source may appear in the snapshot.

Why: masking rules can be wrong in ways no linter sees — the same email also sits, unmasked, in
a `contact` column someone kept; a regex rule misses a format; a JSON rule misses a path. So
before the snapshot is finished, values are sampled from the source (the kept rows, in the
build's snapshot, before the copy starts) of every masked text column and of every column the
detector flagged (whatever its rule, but `keep`: a kept column's values are meant to be there),
and every row is searched for them on its way into the golden database:

- a column whose rule replaces the whole value (`email`, `hash`, `full_name`, …) must not
  return the value unchanged;
- every other copied text, varchar, char, json and jsonb column (no rule, `keep`, `regex`,
  `json`) must contain none of them: neither as its whole value (values of 3 characters or
  more) nor inside it (values of 6 or more). In a json column, the values its rules generated
  are left out of the search (a fake name picked from the same list as a real one is no leak).

What is looked for in a sampled value is the value itself, and the personal data inside it
(`patterns.find`: e-mails, phone numbers, cards, IBANs, national ids), so an e-mail written in a
redacted note is found where it was copied as it is. Values a partial rule leaves unchanged are
not sampled (a note without a phone number in it is not sensitive to its `regex` rule); for
`regex` rules the sensitive parts are the matches and the personal data the detector sees.

How: searching N values with `strpos` costs N scans' worth of comparisons (measured: 200 values
over 1M rows, 26 s; a regex alternation of them, minutes), and reading the golden database back
costs as much as writing it. Instead the copy (`copy.RowMasker`, in the masking processes)
hands each block of masked rows' searched fields to `find`, which compares them at C speed:
whole values by set intersection, and values inside text by an *anchor*: each value's most
distinctive word (one that no other sampled value has, preferring a word in its middle) is
looked up in the block's set of words, and only blocks holding an anchor are searched for the
values it stands for. A value inside text is thus found when it stands apart from its
neighbours at its anchor word — as emails, names, phone numbers and addresses do. The cost is
one pass over the text, whatever the number of values.

Values are never logged or put in an error: a `Leak` names columns and a count."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.pg import quote_ident
from pipelines.data import patterns
from pipelines.data.catalog import Catalog, Table
from pipelines.data.copy import FLAT
from pipelines.data.rules import ColumnRule, Rules

try:  # the compiled lookups (`_rowmask.c`); the same search in Python otherwise
    from pipelines.data import _rowmask
except ImportError:  # pragma: no cover - a build without a C compiler
    _rowmask = None  # type: ignore[assignment]

Masker = Callable[[str | None], str | None]

# Transformers whose output owes nothing to the input's text: their columns are not searched
# (any match there would be a fake value colliding with a real one), only checked for values
# passed through unchanged.
REPLACING = frozenset({"null", "redact", "hash", "email", "first_name", "last_name", "full_name",
                       "phone", "address", "date_shift", "number_noise", "template"})
# Transformers that pick from a finite vocabulary (or round): a real value comes out unchanged
# now and then by chance (a `last_name` masked to the same common name about once in a
# thousand). That is no leak — which values did is keyed and unknowable — so for these only a
# share beyond chance (the rule is not really applied) counts.
BY_CHANCE = frozenset({"first_name", "last_name", "full_name", "address", "number_noise",
                       "phone"})
CHANCE_SHARE = 0.05
MIN_EQUAL = 3
MIN_INSIDE = 6
OVERSAMPLE = 20  # rows read per value wanted (values repeat; short ones are skipped)

_DELIMITERS = ".,;:!?()<>[]{}\"'|=/*\\"
_WORDS = bytes.maketrans(_DELIMITERS.encode(), b" " * len(_DELIMITERS))


@dataclass(frozen=True)
class Leak:
    column: str  # the masked source column the values came from
    found_in: str  # the snapshot column they appear in
    values: int  # how many distinct sampled values

    def __str__(self) -> str:
        return f"{self.values} sampled value(s) of {self.column} appear in {self.found_in}"


def describe(leaks: Iterable[Leak]) -> str:
    return "; ".join(str(leak) for leak in leaks)


def _words(text: bytes) -> list[bytes]:
    return text.translate(_WORDS).split()


def sample_query(table: Table, column: str, *, keep_filter: str | None, limit: int) -> str:
    """Distinct non-null values of one column (of the kept rows, when `keep_filter` — an SQL
    condition on alias `t` — is given)."""
    col = f"t.{quote_ident(column)}::text"
    where = f"{col} IS NOT NULL AND length({col}) >= {MIN_EQUAL}"
    if keep_filter:
        where += f" AND {keep_filter}"
    return (f"SELECT DISTINCT v FROM (SELECT {col} AS v FROM ONLY {table.ident} t "
            f"WHERE {where} LIMIT {limit * OVERSAMPLE}) s LIMIT {limit}")


def sampled_columns(catalog: Catalog, rules: Rules, *,
                    flagged: Iterable[tuple[str, str]] = ()) -> list[tuple[Table, str, ColumnRule]]:
    """The columns whose values are sampled: masked text columns, and every column the
    detector flagged (`flagged`: (table as the rules name it, column)) unless it is kept."""
    wanted = set(flagged)
    out = []
    for table in catalog.tables.values():
        textlike = {c.name for c in table.columns if c.textlike}
        copied = set(table.copy_columns)
        for column in table.copy_columns:
            rule = rules.rule_for(table.display, column)
            if rule is None or rule.transformer == "keep" or column not in copied:
                continue
            if column in textlike or (table.display, column) in wanted:
                out.append((table, column, rule))
    return out


def searched_columns_of(table: Table, rules: Rules) -> list[tuple[Table, str]]:
    """The columns of `table` whose content may carry an input through: its copied text
    columns without a replacing rule (generated columns are computed from copied ones, which
    are searched)."""
    out = []
    textlike = {c.name for c in table.columns if c.textlike}
    for column in table.copy_columns:
        rule = rules.rule_for(table.display, column)
        if column in textlike and (rule is None or rule.transformer not in REPLACING):
            out.append((table, column))
    return out


def needles(rule: ColumnRule, values: Iterable[str], *, masker: Masker) -> tuple[list[str], int]:
    """The sensitive strings in a column's sampled values, and how many values the (replacing)
    rule passed through unchanged. Besides the value (or a regex rule's matches), the personal
    data inside it counts: an e-mail in a note is looked for on its own."""
    found: list[str] = []
    unchanged = 0
    seen = 0
    pattern = re.compile(str(rule.params["pattern"])) if rule.transformer == "regex" else None
    for value in values:
        seen += 1
        inside = [value[f.start:f.end] for f in patterns.find(value)
                  if f.kind != patterns.CARD_CANDIDATE]
        if rule.transformer in REPLACING:
            if masker(value) == value:
                unchanged += 1
            found.append(value)
            found.extend(v for v in inside if v != value)
        elif masker(value) != value or inside:
            if pattern is not None:
                found.extend(m.group(0) for m in pattern.finditer(value))
            elif rule.transformer != "json":
                found.append(value)
            found.extend(inside)
    if rule.transformer in BY_CHANCE and unchanged <= CHANCE_SHARE * seen:
        unchanged = 0
    return list(dict.fromkeys(v for v in found if len(v) >= MIN_EQUAL)), unchanged


@dataclass
class Haystack:
    """The sampled values, ready to be looked for in a stream of COPY text."""

    whole: dict[bytes, set[str]] = field(default_factory=dict)  # value → source columns
    anchors: dict[bytes, list[tuple[bytes, str]]] = field(default_factory=dict)
    # The same, compiled (`_rowmask.Needles`), made on first use in each process.
    _needles: tuple[Any, list[bytes], list[bytes]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def needles(self) -> tuple[Any, list[bytes], list[bytes]] | None:
        """The compiled lookups and the values and anchors their indices stand for; None
        when the compiled module is not built."""
        if self._needles is None and _rowmask is not None:
            whole, anchors = list(self.whole), list(self.anchors)
            self._needles = (_rowmask.Needles(whole, anchors), whole, anchors)
        return self._needles

    def __getstate__(self) -> dict[str, Any]:
        return {"whole": self.whole, "anchors": self.anchors}  # not the compiled lookups

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.whole, self.anchors, self._needles = state["whole"], state["anchors"], None

    @classmethod
    def build(cls, values: Mapping[str, Iterable[str]]) -> Haystack:
        out = cls()
        inside: list[tuple[bytes, str]] = []
        for source, texts in values.items():
            for text in texts:
                flat = text.translate(FLAT).encode()
                out.whole.setdefault(flat, set()).add(source)
                if len(text) >= MIN_INSIDE:
                    inside.append((flat, source))
        usage: dict[bytes, int] = {}
        for flat, _ in inside:
            for word in set(_words(flat)):
                usage[word] = usage.get(word, 0) + 1
        for flat, source in inside:
            words = _words(flat)
            if not words:
                continue
            middle = [w for w in words if not flat.startswith(w) and not flat.endswith(w)]
            anchor = min(middle or words, key=lambda w: (usage[w], -len(w)))
            out.anchors.setdefault(anchor, []).append((flat, source))
        return out


def find(haystack: Haystack, values: list[bytes], *, compiled: bool = True
         ) -> dict[str, set[bytes]]:
    """Which sampled values are in `values` (searched fields as `copy.flat_field` makes
    them): source column → the values found. The compiled lookups give the same as the
    Python below (tests/test_leaks.py), at a fraction of its cost."""
    hits: dict[str, set[bytes]] = {}
    lookups = haystack.needles() if compiled else None
    if lookups is not None:
        needles, whole, anchors = lookups
        found_whole, found_words = needles.scan(values)
        for i in found_whole:
            for source in haystack.whole[whole[i]]:
                hits.setdefault(source, set()).add(whole[i])
        if found_words:
            block = b"\n".join(values)
            for i in found_words:
                for value, source in haystack.anchors[anchors[i]]:
                    if value in block:
                        hits.setdefault(source, set()).add(value)
        return hits
    block = b"\n".join(values)
    for value in haystack.whole.keys() & set(block.split(b"\n")):
        for source in haystack.whole[value]:
            hits.setdefault(source, set()).add(value)
    for anchor in haystack.anchors.keys() & set(_words(block)):
        for value, source in haystack.anchors[anchor]:
            if value in block:
                hits.setdefault(source, set()).add(value)
    return hits
