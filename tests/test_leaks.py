"""The leak check's judgement of values a replacing rule left unchanged."""

from __future__ import annotations

from pipelines.data.leaks import needles
from pipelines.data.masking import last_names, make_masker
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
