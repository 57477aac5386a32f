"""The post-mask check: after masking, is there still personal data that no transformer wrote?

Why: a rule can exist and still let data through. A `regex` that removes e-mails but not phone
numbers, a `json` rule without the path where the phone number is, a `keep` on a column of card
numbers, a `template` with a real address written into it: the column has a rule, so the
default-deny lint is satisfied, yet production data leaves as it is. So the sampled values of
every column whose rule passes text through or writes only part of it (`keep`, `regex`, `json`,
`template`) are masked, and what the transformers did not write is searched for e-mail
addresses, phone numbers, payment card numbers, IBANs and national ID numbers
(`pipelines.data.patterns`). Anything found stops the build, naming the column (and JSON
path), the rule's pattern, the kind of data and its shape — never the value.

What counts as written by a transformer: all of a generating transformer's output (`email`,
`phone`, `hash`, …); in a `regex` rule's output, only its replacement text; in a `template`,
only its `{hash:N}` and `{digits:N}` fields; in a `json` rule's output, the values its nested
rules generate. A `keep` writes nothing — unless it says what it lets through knowingly
(`keep: {allow: [phone]}`), which is how a person acknowledges that a column holds personal
data and may leave production as it is.

The masking key does not matter here (what is generated does not depend on it), so `lint` runs
this check before a build with a fixed key. Neighbours: `detect.lint` calls `check`, and
refuses the build on any `Unmasked`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipelines.data import patterns
from pipelines.data.masking import make_masker
from pipelines.data.rules import (
    PASS_THROUGH,
    WILDCARD,
    ColumnRule,
    JsonPath,
    json_rules_at,
    parse_template,
)

LINT_KEY = b"ephem-lint: outputs are judged by shape, never by their keyed values"
# Hits needed before a kind counts: one e-mail, IBAN or national ID is enough; a phone-number
# look-alike (an order number, a version) turns up now and then, two in a sample are a pattern.
ENOUGH = {patterns.EMAIL_KIND: 1, patterns.IBAN_KIND: 1, patterns.NATIONAL_ID_KIND: 1,
          patterns.CARD_KIND: 1, patterns.PHONE_KIND: 2}
CHECKED = frozenset({"keep", "regex", "json", "template"})


@dataclass(frozen=True)
class Unmasked:
    """Personal data a column's rule lets through: what, where, how often, and its shape."""

    table: str
    column: str
    path: str  # JSON path, or "" for the column itself
    rule: ColumnRule  # the column's rule
    left_by: ColumnRule | None  # at a JSON path: the nested rule there (None: no rule)
    kind: str
    values: int  # sampled values it was found in
    sampled: int
    example: str  # the shape of one hit (`+## ## #### ####`)

    def where(self) -> str:
        return f"{self.table}.{self.column}" + (f" at {self.path}" if self.path else "")

    def __str__(self) -> str:
        by = self.left_by if self.path else self.rule
        rule = "no rule at that path" if by is None else _describe(by)
        return (f"{self.where()} ({rule}): after masking, {self.values} of {self.sampled} "
                f"sampled values still hold {patterns.LABELS[self.kind]} that no transformer "
                f"wrote, such as `{self.example}`; {self._remedy(by)}")

    def _remedy(self, by: ColumnRule | None) -> str:
        allow = f"{{keep: {{allow: [{self.kind}]}}}}"
        if by is None:
            return f"give that path a rule, or write `\"{self.path}\": {allow}` to let them through"
        if by.transformer == "regex":
            return "widen the pattern, or mask the whole value (redact, null)"
        if by.transformer == "template":
            return "take them out of the template"
        if self.path:
            return f"mask that path, or write `\"{self.path}\": {allow}` to let them through"
        return f"mask the column, or keep it knowingly: `{self.column}: {allow}`"


def _describe(rule: ColumnRule) -> str:
    if rule.transformer == "regex":
        pattern = str(rule.params["pattern"])
        return f"regex `{pattern if len(pattern) <= 60 else pattern[:59] + '…'}`"
    if rule.transformer == "template":
        return f"template `{rule.params['format']}`"
    if rule.transformer == "keep" and rule.allowed:
        return f"keep, allowing {', '.join(rule.allowed)}"
    return rule.transformer


@dataclass(frozen=True)
class _Piece:
    """Text of a masked value that no transformer wrote, and what let it through."""

    path: str
    text: str
    left_by: ColumnRule | None  # the rule that left it (None: a JSON path without one)
    allowed: tuple[str, ...] = ()
    written: str = ""  # a regex rule's replacement text: its own output


def _json_pieces(rule: ColumnRule, masked: str) -> Iterator[_Piece]:
    try:
        doc = json.loads(masked)
    except ValueError:
        return
    for path, written_path, leaf in _leaves(doc, (), "$"):
        covering = [r for _, r in json_rules_at(rule, path)]
        if any(r.transformer not in PASS_THROUGH for r in covering):
            continue  # generated
        yield _Piece(path=written_path, text=leaf,
                     left_by=covering[-1] if covering else None,
                     allowed=tuple(a for r in covering for a in r.allowed),
                     written="".join(str(r.params.get("replace", "")) for r in covering
                                     if r.transformer == "regex"))


def _leaves(node: object, path: JsonPath, written: str
            ) -> Iterator[tuple[JsonPath, str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k), f"{written}.{k}" if str(k).isidentifier()
                               else f"{written}[{json.dumps(k)}]")
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v, (*path, WILDCARD), written + "[*]")
    elif isinstance(node, str):
        yield path, written, node
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, written, str(node)


def _pieces(rule: ColumnRule, masked: str | None) -> Iterator[_Piece]:
    if masked is None:
        return
    if rule.transformer == "keep":
        yield _Piece(path="", text=masked, left_by=rule, allowed=rule.allowed)
    elif rule.transformer == "regex":
        yield _Piece(path="", text=masked, left_by=rule,
                     written=str(rule.params.get("replace", "")))
    elif rule.transformer == "template":
        for literal, _, _ in parse_template(str(rule.params["format"])):
            if literal:
                yield _Piece(path="", text=literal, left_by=rule)
    elif rule.transformer == "json":
        yield from _json_pieces(rule, masked)


def check(table: str, column: str, rule: ColumnRule, values: Sequence[str]) -> list[Unmasked]:
    """What personal data `rule` leaves in these sampled values of `table.column`."""
    if rule.transformer not in CHECKED or not values:
        return []
    masker = make_masker(rule, key=LINT_KEY)
    shapes: dict[tuple[str, str], Counter[str]] = {}  # (path, kind) → shapes, one per value
    left_by: dict[str, ColumnRule | None] = {}
    cards: Counter[tuple[str, bool]] = Counter()  # (path, passes Luhn): card-like digit runs
    for value in values:
        seen: set[tuple[str, str]] = set()
        for piece in _pieces(rule, masker(value)):
            for found in patterns.find(piece.text):
                if found.kind in (patterns.CARD_KIND, patterns.CARD_CANDIDATE):
                    cards[(piece.path, found.kind == patterns.CARD_KIND)] += 1
                    if found.kind == patterns.CARD_CANDIDATE:
                        continue
                text = piece.text[found.start:found.end]
                if found.kind in piece.allowed or (piece.written and text in piece.written):
                    continue
                key = (piece.path, found.kind)
                left_by[piece.path] = piece.left_by
                if key not in seen:
                    seen.add(key)
                    shapes.setdefault(key, Counter())[patterns.shape(text)] += 1
    out = []
    for (path, kind), found_shapes in sorted(shapes.items()):
        count = sum(found_shapes.values())
        if count < ENOUGH[kind]:
            continue
        if kind == patterns.CARD_KIND and cards[(path, True)] < cards[(path, False)]:
            continue  # as many fail Luhn as pass: numbers, not cards
        out.append(Unmasked(table=table, column=column, path=path, rule=rule,
                            left_by=left_by[path], kind=kind, values=count,
                            sampled=len(values), example=found_shapes.most_common(1)[0][0]))
    return out
