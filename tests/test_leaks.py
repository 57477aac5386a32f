"""The leak check's judgement of values a replacing rule left unchanged, and its search (in
Python and compiled, which must agree)."""

from __future__ import annotations

import pickle
import random

from pipelines.data.copy import FLAT, flat_field
from pipelines.data.leaks import Haystack, find, needles
from pipelines.data.masking import SharedMaskers, last_names, make_masker
from pipelines.data.rules import ColumnRule

KEY = b"leaks-key"


def test_a_name_kept_by_chance_is_no_leak_but_a_rule_that_keeps_all_is() -> None:
    rule = ColumnRule("last_name")
    masker = make_masker(rule, key=KEY)
    names = list(last_names()[:400])
    by_chance = [n for n in names if masker(n) == n]
    # Picking from the same vocabulary, a few names map to themselves: tolerated.
    _, unchanged = needles(rule, names, masker=masker)
    assert unchanged == 0
    assert len(by_chance) <= 0.05 * len(names)
    # A masker that changes nothing (the rule is not applied) is caught.
    _, unchanged = needles(rule, names, masker=lambda v: v)
    assert unchanged == len(names)


def test_an_email_left_unchanged_is_always_a_leak() -> None:
    rule = ColumnRule("email")
    _, unchanged = needles(rule, ["ann@corp.example", "bo@corp.example"],
                           masker=lambda v: v if v and v.startswith("ann") else "x@example.com")
    assert unchanged == 1


def test_the_personal_data_inside_a_value_is_looked_for_on_its_own() -> None:
    note = "Call me at +44 20 7946 0958 or write to ann@corp.example, thanks"
    redact = ColumnRule("redact")
    found, _ = needles(redact, [note], masker=make_masker(redact, key=KEY))
    assert set(found) == {note, "+44 20 7946 0958", "ann@corp.example"}
    # A regex rule's own matches, and what the detector sees that the regex missed.
    emails = ColumnRule("regex", {"pattern": r"\S+@\S+", "replace": "[email]"})
    found, _ = needles(emails, [note], masker=make_masker(emails, key=KEY))
    assert set(found) == {"ann@corp.example,", "+44 20 7946 0958", "ann@corp.example"}
    # Inside JSON: the personal values, not the whole document.
    doc = '{"contact": {"email": "bo@corp.example", "phone": "07700900123"}, "n": 1}'
    by_path = ColumnRule("json", {"paths": {"$.contact.email": ColumnRule("email")}})
    found, _ = needles(by_path, [doc], masker=make_masker(by_path, key=KEY))
    assert set(found) == {"bo@corp.example", "07700900123"}


def test_values_a_json_rule_generates_are_left_out_of_the_search() -> None:
    rule = ColumnRule("json", {"paths": {"$.contact.name": ColumnRule("full_name"),
                                         "$.items[*].who": ColumnRule("full_name"),
                                         "$.note": ColumnRule("keep"),
                                         "$.text": ColumnRule("regex", {"pattern": "x"})}})
    both = SharedMaskers(KEY).json_with_search(rule)
    masker = make_masker(rule, key=KEY)
    for doc in ('{"note": "Ann Lee", "text": "Bo Chan", "items": [{"who": "Cy Dunn"}], '
                '"contact": {"name": "Di Egan"}}',
                # escapes and whitespace take the slower path, to the same effect
                '{"note": "Ann \\"Lee\\"",\n "text": "Bo Chan", "items": [{"who": "Cy Dunn"}], '
                '"contact": {"name": "Di Egan"}}'):
        masked, searched = both(doc)
        assert masked == masker(doc)
        # What the rules generated is blanked; what `keep` and `regex` leave is searched.
        assert "Ann" in searched and "Bo Chan" in searched
        assert "Cy Dunn" not in searched and "Di Egan" not in searched
        assert '"who": ""' in searched and '"name": ""' in searched


def test_the_search_finds_sampled_values_whole_and_inside_copy_fields() -> None:
    haystack = Haystack.build({"customers.email": ["ann.lee@mail.example"],
                               "customers.phone": ["+44 20 7946 0958"]})
    fields = [b"nothing here", b"ann.lee@mail.example",
              b"Call +44 20 7946 0958\\tbefore noon", b"\\N"]
    values = [flat_field(raw) for raw in fields]
    assert values[2] == b"Call +44 20 7946 0958 before noon"  # escapes flattened
    assert find(haystack, values) == {"customers.email": {b"ann.lee@mail.example"},
                                      "customers.phone": {b"+44 20 7946 0958"}}
    assert find(haystack, [b"bob.lee@mail.example", b"+44 20 7946 0000"]) == {}


def test_the_compiled_search_finds_what_the_python_search_finds() -> None:
    rng = random.Random(5)
    words = ["ann", "lee", "mail", "example", "44", "20", "7946", "0958", "Zoë", "O'Brien",
             "straße", "x", "🐘", "a.b", "(415)", "555-0123"]
    separators = [" ", ".", ",", "@", "-", "\t", "\n", "\\", "/", '"', ": ", "", "\x0b"]

    def text(n: int) -> str:
        return "".join(rng.choice(words) + rng.choice(separators) for _ in range(n)).strip()

    sampled = {"t.a": [text(rng.randint(1, 4)) for _ in range(150)],
               "t.b": [text(rng.randint(1, 3)) for _ in range(150)] + ["Zoë O'Brien"]}
    haystack = Haystack.build(sampled)
    assert haystack.needles() is not None  # the compiled lookups are built
    found_any = 0
    for _ in range(300):
        values = [text(rng.randint(0, 12)).translate(FLAT).encode()
                  for _ in range(rng.randint(0, 30))]
        if rng.random() < 0.3:
            values.append(rng.choice(sampled["t.b"]).translate(FLAT).encode())
        expected = find(haystack, values, compiled=False)
        assert find(haystack, values) == expected
        found_any += bool(expected)
    assert found_any > 50  # the comparison covered hits, not only misses
    assert pickle.loads(pickle.dumps(haystack)).whole == haystack.whole  # sent to pool processes
