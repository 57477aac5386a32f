"""The compiled row loop (`pipelines/data/_rowmask.c`) gives what the Python loop gives, byte
for byte: the masked rows, the fields handed to the leak search and what it found, and the
same errors — on documents and text chosen to reach every path of the compiled JSON masking
(plans, cache hits, escapes, null, rules on numbers, text that is not JSON, non-ASCII)."""

from __future__ import annotations

import functools
import json
import pickle
import random

import pytest

from pipelines.data import copy, leaks
from pipelines.data.copy import (
    ColumnMaskingError,
    CopyFormatError,
    MaskPlan,
    RowMasker,
    encode_field,
)
from pipelines.data.masking import SharedMaskers
from pipelines.data.rules import ColumnRule

KEY = b"row-loop-test-key"
COLUMNS = ["id", "email", "name", "meta", "note", "free", "born"]
RULES = {
    1: ColumnRule("email"),
    2: ColumnRule("full_name"),
    3: ColumnRule("json", {"paths": {
        "$.contact.email": ColumnRule("email"),
        "$.contact.phone": ColumnRule("phone"),
        "$.contact.name": ColumnRule("full_name"),
        "$.ip": ColumnRule("template", {"format": "192.0.2.{digits:2}"}),
        "$.items[*].sku": ColumnRule("keep"),
        "$.gone": ColumnRule("null"),
        "$.amount": ColumnRule("number_noise", {"ratio": 0.1}),
        # Text a transformer leaves non-ASCII, or gives a quote or a backslash to escape.
        "$.note": ColumnRule("regex", {"pattern": r"\d", "replace": '"'}),
        "$.memo": ColumnRule("regex", {"pattern": r"\d", "replace": r"\\"}),
    }}),
    4: ColumnRule("regex", {"pattern": r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "replace": "[email]"}),
    6: ColumnRule("date_shift", {"days": 30}),
}
SEARCH: dict[int, ColumnRule | None] = {3: RULES[3], 4: RULES[4], 5: None}
NAMES = ["Ann Lee", "José Müller", "Zoë O'Brien", "李 小龙", "Ann\tTab", "Quote \"Q\" Smith",
         "Back\\slash", "Line\u2028Sep", "Bell\x07"]
TEXTS = ["", "plain", "tab\there", "new\nline", "back\\slash", "quote\"s", "\\N", "ünï ✓ 🐘",
         "mail me: ann.lee@example.org", "ctrl\x01char", "zero\u200bwidth", "Zoë 42 ✓",
         "Ünï \"7\"", "tab ü\t9", "del\x7f ü", "ü\\1"]


def _doc(rng: random.Random, i: int) -> str | None:
    """One `meta` value: mostly jsonb-style documents of a few structures, and the odd one
    that is not JSON, holds escapes, or has a rule landing on something that is no string."""
    roll = rng.random()
    if roll < 0.03:
        return None
    if roll < 0.06:
        return rng.choice(["not json", '{"a": "b', '"just a string"', "[]", "{}", "12"])
    contact: dict[str, object] = {"email": f"c{i % 40}@shop.example", "name": rng.choice(NAMES)}
    if rng.random() < 0.8:
        contact["phone"] = rng.choice(["+44 20 7946 0958", "07000000001", "(415) 555-0123",
                                       f"+1-202-555-{i % 10000:04d}"])
    elif rng.random() < 0.5:
        contact["phone"] = 4420794609  # a number at a string rule's path: the Python path
    doc: dict[str, object] = {"contact": contact, "ip": f"198.51.{i % 7}.{i % 5}",
                              "items": [{"sku": f"SKU-{i % 9}", "qty": 1 + i % 3}
                                        for _ in range(i % 3)]}
    if rng.random() < 0.05:
        doc["gone"] = "x"  # null in place of a string
    if rng.random() < 0.05:
        doc["amount"] = 12.5  # a rule on a number
    if rng.random() < 0.1:
        doc["note"] = rng.choice(TEXTS)
    if rng.random() < 0.1:
        doc["memo"] = rng.choice(TEXTS)
    if rng.random() < 0.05:
        doc = {"wrapped": [doc]}  # a structure no rule path reaches
    return json.dumps(doc, ensure_ascii=rng.random() < 0.3, separators=(", ", ": "))


def _stream(seed: int, rows: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        email = None if i % 17 == 0 else f"c{i % 40}@shop.example"
        values = [str(i), email, rng.choice(NAMES), _doc(rng, i),
                  rng.choice([*TEXTS, f"write to c{i % 40}@shop.example"]),
                  rng.choice([*TEXTS, f"c{i % 40}@shop.example"]),
                  f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}"]
        out.append(b"\t".join(encode_field(v) for v in values))
    return b"\n".join(out) + b"\n"


def _finder() -> copy.Finder:
    sampled = {"src.email": [f"c{i}@shop.example" for i in range(0, 40, 3)],
               "src.name": ["José Müller", "Ann Lee"]}
    return functools.partial(leaks.find, leaks.Haystack.build(sampled))


def _run(compiled: bool, data: bytes, *, chunk: int, search: bool
         ) -> tuple[bytes, copy.Hits]:
    plan = MaskPlan.of(COLUMNS, RULES, key=KEY, search=SEARCH if search else None)
    shared = SharedMaskers(KEY)
    masker = plan.row_masker(_finder() if search else None, shared, compiled=compiled)
    out = b"".join(masker.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    masker.close()
    if compiled:
        # The loop called the compiled transformers directly, where there are some …
        assert all(shared.direct(RULES[i]) is not None for i in (1, 2, 4, 6))
        # … and the documents went through the compiled JSON path, not only the fallback.
        planned = shared.json(RULES[3]).structures.values()
        assert sum(1 for entry in planned if entry is not None and entry[2]) >= 3
    return out, masker.take_hits()


def test_the_compiled_loop_is_built() -> None:
    # Machines with a C compiler build it at install; without it masking is several times
    # slower, which nothing else would show.
    assert copy.COMPILED


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("search", [False, True])
def test_compiled_and_python_loops_agree(seed: int, search: bool) -> None:
    data = _stream(seed, 3000)
    python = _run(False, data, chunk=7919, search=search)
    compiled = _run(True, data, chunk=4096, search=search)
    assert compiled[0] == python[0]
    assert compiled[1] == python[1]
    if search:
        assert python[1], "the sample must make the leak search find something"
    # The masked stream is different from the source where rules apply, and the same length
    # in rows.
    assert compiled[0].count(b"\n") == data.count(b"\n")
    assert compiled[0] != data


def test_compiled_loop_masks_json_the_way_the_json_masker_does() -> None:
    shared = SharedMaskers(KEY)
    meta = shared.masker(RULES[3])
    rng = random.Random(9)
    docs = [_doc(rng, i) for i in range(500)]
    data = b"".join(encode_field(str(i)).join([b"", b"\t"]) + encode_field(d) + b"\n"
                    for i, d in enumerate(docs))
    masker = MaskPlan.of(["id", "meta"], {1: RULES[3]}, key=KEY).row_masker(
        shared=SharedMaskers(KEY), compiled=True)
    rows = masker.feed(data).split(b"\n")[:-1]
    expected = [b"\t".join((encode_field(str(i)), encode_field(meta(d))))
                for i, d in enumerate(docs)]
    assert rows == expected


@pytest.mark.parametrize("compiled", [False, True])
def test_errors_are_the_same(compiled: bool) -> None:
    plan = MaskPlan.of(COLUMNS, RULES, key=KEY)
    good = _stream(4, 3)
    with pytest.raises(CopyFormatError, match="a COPY row has 2 fields, expected 7"):
        plan.row_masker(compiled=compiled).feed(good + b"a\tb\n")
    with pytest.raises(CopyFormatError, match="a COPY row has 8 fields, expected 7"):
        plan.row_masker(compiled=compiled).feed(good + b"\t".join([b"x"] * 8) + b"\n")
    bad_date = b"\t".join([b"1", b"a@b.c", b"N", b"{}", b"n", b"f", b"not a date"]) + b"\n"
    with pytest.raises(ColumnMaskingError) as caught:
        plan.row_masker(compiled=compiled).feed(good + bad_date)
    assert caught.value.column == "born"
    assert "not a date" not in str(caught.value)
    # Raised in a pool process, it crosses to the build with its column and message.
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.column, str(again)) == ("born", str(caught.value))


def test_a_loop_without_masked_columns_searches_every_row() -> None:
    plan = MaskPlan.of(["id", "free"], {}, key=KEY, search={1: None})
    data = b"1\tsee c3@shop.example\n2\tnothing\n3\tback\\\\slash c6@shop.example\n"
    found = []
    for compiled in (False, True):
        masker = plan.row_masker(_finder(), compiled=compiled)
        assert masker.feed(data) == data
        found.append(masker.take_hits())
    assert found[0] == found[1] == {1: {"src.email": {b"c3@shop.example", b"c6@shop.example"}}}


def test_the_python_loop_is_refused_no_more_than_asked() -> None:
    # A masker asked for the compiled loop where it is not built would say so at once.
    masker = RowMasker({}, columns=["a"], compiled=False)
    assert masker.feed(b"x\n") == b"x\n"
