"""Column maskers and the rules file: determinism under the key, the shape of every fake value,
NULLs, and rules errors that name the file and the key path."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from bot.errors import ConfigError
from pipelines.data.masking import MaskingError, first_names, last_names, make_masker
from pipelines.data.rules import ColumnRule, load_rules, parse_rules, split_table

KEY = b"test-masking-key-0123456789"
OTHER_KEY = b"another-masking-key-987654"

# Every keyed transformer with a typical input.
KEYED: list[tuple[ColumnRule, str]] = [
    (ColumnRule("hash"), "ann@corp.example"),
    (ColumnRule("email"), "ann@corp.example"),
    (ColumnRule("first_name"), "Ann"),
    (ColumnRule("last_name"), "Lee"),
    (ColumnRule("full_name"), "Ann Lee"),
    (ColumnRule("phone"), "+1 (555) 010-2345"),
    (ColumnRule("address"), "1 Main Street"),
    (ColumnRule("date_shift", {"days": 60}), "1990-05-17"),
    (ColumnRule("number_noise", {"ratio": 0.5}), "123456.78"),
    (ColumnRule("template", {"format": "ORD-{hash:8}"}), "order-1"),
    (ColumnRule("json", {"paths": {"$.email": "email"}}), '{"email": "ann@corp.example"}'),
]
ALL = [*KEYED, (ColumnRule("keep"), "x"), (ColumnRule("null"), "x"), (ColumnRule("redact"), "x"),
       (ColumnRule("regex", {"pattern": "a", "replace": "b"}), "x")]


def mask(rule: ColumnRule, value: str | None, key: bytes = KEY) -> str | None:
    return make_masker(rule, key=key)(value)


def ids(cases: list[tuple[ColumnRule, str]]) -> list[str]:
    return [rule.transformer for rule, _ in cases]


# --------------------------------------------------------------------------- every transformer


@pytest.mark.parametrize(("rule", "value"), KEYED, ids=ids(KEYED))
def test_keyed_transformers_are_deterministic_and_depend_on_the_key(rule: ColumnRule,
                                                                    value: str) -> None:
    first = mask(rule, value)
    assert first is not None and first != value
    assert mask(rule, value) == first  # a fresh masker: nothing hidden in its cache
    assert mask(rule, value, OTHER_KEY) != first


@pytest.mark.parametrize(("rule", "value"), ALL, ids=ids(ALL))
def test_null_stays_null(rule: ColumnRule, value: str) -> None:
    assert mask(rule, None) is None


def test_hash_is_hmac_sha256_of_the_transformer_and_value_only() -> None:
    expected = hmac.new(KEY, b"hash\0ann@corp.example", hashlib.sha256).hexdigest()
    assert mask(ColumnRule("hash"), "ann@corp.example") == expected
    assert mask(ColumnRule("hash", {"length": 12}), "ann@corp.example") == expected[:12]
    long_key = b"k" * 100  # longer than SHA-256's block: hashed first, as HMAC says
    assert mask(ColumnRule("hash"), "v", long_key) == hmac.new(
        long_key, b"hash\0v", hashlib.sha256).hexdigest()


def test_same_value_in_two_tables_masks_the_same_and_transformers_differ() -> None:
    rules = parse_rules({"tables": {
        "customers": {"email": "email", "phone": "phone"},
        "billing.invoices": {"contact_email": "email", "fax": "phone"},
    }}, source="rules.yaml")
    customers = rules.rule_for("customers", "email")
    invoices = rules.rule_for("billing.invoices", "contact_email")
    assert customers is not None and invoices is not None
    assert mask(customers, "ann@corp.example") == mask(invoices, "ann@corp.example")
    outputs = {mask(rule, "ann@corp.example") for rule, _ in KEYED
               if rule.transformer in ("hash", "email", "template")}
    assert len(outputs) == 3


def test_transformers_draw_independently_from_the_same_value() -> None:
    """The transformer's name is part of the HMAC input, so a first name and a full name made
    from one value are not the same draw."""
    first, full = make_masker(ColumnRule("first_name"), key=KEY), make_masker(
        ColumnRule("full_name"), key=KEY)
    same = 0
    for i in range(200):
        given = full(f"v{i}")
        same += given is not None and given.split(" ")[0] == first(f"v{i}")
    assert same < 20


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="masking key is empty"):
        make_masker(ColumnRule("hash"), key=b"")


# --------------------------------------------------------------------------- shapes


def test_email_looks_like_an_email_and_rarely_collides() -> None:
    masker = make_masker(ColumnRule("email"), key=KEY)
    out = [masker(f"person{i}@corp.example") for i in range(20_000)]
    pattern = re.compile(r"[a-z]+\.[a-z]+\+\d{12}@example\.(com|net|org)")
    assert all(o is not None and pattern.fullmatch(o) for o in out)
    assert len(set(out)) == len(out)
    custom = mask(ColumnRule("email", {"domain": "test.invalid"}), "ann@corp.example")
    assert custom is not None and custom.endswith("@test.invalid")


def test_names_come_from_fakers_lists() -> None:
    firsts, lasts = set(first_names()), set(last_names())
    for i in range(200):
        assert mask(ColumnRule("first_name"), f"n{i}") in firsts
        assert mask(ColumnRule("last_name"), f"n{i}") in lasts
        full = mask(ColumnRule("full_name"), f"n{i}")
        assert full is not None
        given, family = full.split(" ", 1)
        assert given in firsts and family in lasts
    german = {mask(ColumnRule("first_name", {"locale": "de_DE"}), f"n{i}") for i in range(50)}
    assert german <= set(first_names("de_DE"))


def test_address_is_a_number_and_a_street() -> None:
    out = mask(ColumnRule("address"), "221B Baker Street")
    assert out is not None and re.fullmatch(r"\d{1,4} [A-Z][\w' ]+", out)


@pytest.mark.parametrize("value", ["+1 (555) 010-2345", "555.010.2345", "0044 20 7946 0958",
                                   "5550102345", "+49-30-1234567 ext. 12"])
def test_phone_keeps_every_non_digit_and_the_digit_count(value: str) -> None:
    out = mask(ColumnRule("phone"), value)
    assert out is not None and out != value and len(out) == len(value)
    for a, b in zip(value, out, strict=True):
        assert a.isdigit() == b.isdigit()
        if not a.isdigit():
            assert a == b


@pytest.mark.parametrize(("value", "kept"), [
    ("+44 20 7946 0958", "+44 20 "),  # country code and area code
    ("+1-202-555-0143", "+1-202-"),
    ("+1 (555) 010-2345", "+1 (555) "),
    ("020 7946 0958", "020 "),  # trunk prefix 0 and area code
    ("0044 20 7946 0958", "0044 20 "),  # international prefix 00
    ("(415) 555-0123", "(415) "),
    ("07000000001", "070"),  # no groups: the first two national digits
    ("+447700900123", "+4477"),
    ("+33 1 42 68 53 00", "+33 1 "),
    ("+49-30-1234567 ext. 12", "+49-30-"),
])
def test_phone_keeps_country_code_trunk_prefix_and_area_code(value: str, kept: str) -> None:
    out = mask(ColumnRule("phone"), value)
    assert out is not None and out.startswith(kept)
    assert out[len(kept):] != value[len(kept):]
    changed = sum(a != b for a, b in zip(out, value, strict=True))
    assert changed >= 2  # (four digits are drawn anew; some may come out the same)


def test_phone_north_american_numbers_stay_valid() -> None:
    """An exchange code (the first subscriber digit) is 2-9 in North America."""
    for i in range(300):
        out = mask(ColumnRule("phone"), f"+1-202-{i:03d}-{i:04d}")
        assert out is not None and re.fullmatch(r"\+1-202-[2-9]\d\d-\d{4}", out), out


def test_phone_keep_prefix_and_formatting_independence() -> None:
    out = mask(ColumnRule("phone", {"keep_prefix": 4}), "+44 20 7946 0958")
    assert out is not None and out.startswith("+44 20 79") and out[9:] != "46 0958"
    # keep_prefix counts national digits: the country code is kept whatever it says.
    zero = mask(ColumnRule("phone", {"keep_prefix": 0}), "+44 20 7946 0958")
    assert zero is not None and zero.startswith("+44 ")
    # The HMAC is of the national number, so one number written three ways masks alike.
    outs = [mask(ColumnRule("phone"), v) for v in
            ("+44 20 7946 0958", "0044 20 7946 0958", "020 7946 0958")]
    assert {re.sub(r"\D", "", o or "")[-10:] for o in outs} == {
        re.sub(r"\D", "", outs[0] or "")[-10:]}
    # Very short numbers still change (at least four digits are drawn).
    assert mask(ColumnRule("phone"), "+44 20 12") != "+44 20 12"


def _shift(before: str, after: str) -> int:
    return (date.fromisoformat(after[:10]) - date.fromisoformat(before[:10])).days


def test_date_shift_keeps_the_format_and_shifts_within_the_window_never_by_zero() -> None:
    masker = make_masker(ColumnRule("date_shift", {"days": 10}), key=KEY)
    shifts = []
    for i in range(500):
        day = date.fromordinal(date(2000, 1, 1).toordinal() + i).isoformat()
        out = masker(day)
        assert out is not None and re.fullmatch(r"\d{4}-\d\d-\d\d", out)
        shifts.append(_shift(day, out))
    assert all(1 <= abs(s) <= 10 for s in shifts)
    assert min(shifts) < 0 < max(shifts) and len(set(shifts)) == 20  # both ways, all sizes


@pytest.mark.parametrize("value", ["2024-01-31 12:00:00+00", "2024-01-31 23:59:59.123456+05:30",
                                   "2024-01-31 12:00:00", "2024-01-31T12:00:00Z", "0099-03-01"])
def test_date_shift_keeps_time_and_zone_as_written(value: str) -> None:
    out = mask(ColumnRule("date_shift", {"days": 60}), value)
    assert out is not None and out[10:] == value[10:] and 1 <= abs(_shift(value, out)) <= 60


def test_date_shift_moves_a_date_and_its_timestamps_together() -> None:
    rule = ColumnRule("date_shift", {"days": 60})
    day, stamp = mask(rule, "2024-01-31"), mask(rule, "2024-01-31 08:15:00+00")
    assert day is not None and stamp is not None and stamp.startswith(day)


def test_date_shift_leaves_infinity_and_refuses_what_is_no_date() -> None:
    rule = ColumnRule("date_shift", {"days": 5})
    assert mask(rule, "infinity") == "infinity"
    with pytest.raises(MaskingError) as err:
        mask(rule, "31/01/2024 secret-ish")
    assert "secret-ish" not in str(err.value) and "date_shift" in str(err.value)


@pytest.mark.parametrize("value", ["123.45", "-7", "100", "0.001", "98765.4321", "3"])
def test_number_noise_stays_within_the_ratio_and_keeps_decimal_places(value: str) -> None:
    for ratio in (0.1, 0.5):
        masker = make_masker(ColumnRule("number_noise", {"ratio": ratio}), key=KEY)
        for k in range(40):  # the same shape of number, many noise draws
            original = Decimal(value) + (k if "." not in value else Decimal(k) / 100)
            text = format(original, "f")
            out = masker(text)
            assert out is not None
            places = len(text.partition(".")[2])
            assert len(out.partition(".")[2]) == places and ("." in out) == ("." in text)
            assert abs(Decimal(out) - original) <= abs(original) * Decimal(str(ratio))


def test_number_noise_changes_values_and_handles_special_forms() -> None:
    masker = make_masker(ColumnRule("number_noise", {"ratio": 0.2}), key=KEY)
    assert sum(masker(f"{1000 + i}.00") != f"{1000 + i}.00" for i in range(100)) >= 90
    assert masker("NaN") == "NaN" and masker("-Infinity") == "-Infinity"
    out = masker("1.5e+20")
    assert out is not None and abs(float(out) / 1.5e20 - 1) <= 0.2
    with pytest.raises(MaskingError, match="number_noise"):
        masker("twelve")


def test_template_fills_hash_and_digits_and_never_the_value() -> None:
    rule = ColumnRule("template", {"format": "ORD-{hash:8}-{digits:4}-{digits:4}"})
    out = mask(rule, "order-1")
    assert out is not None
    m = re.fullmatch(r"ORD-([0-9a-f]{8})-(\d{4})-(\d{4})", out)
    assert m is not None and m.group(2) != m.group(3)  # each field takes fresh digits
    digest = hmac.new(KEY, b"template\0order-1", hashlib.sha256).hexdigest()
    assert m.group(1) == digest[:8]
    with pytest.raises(ConfigError, match=r"\{value\} is not allowed"):
        make_masker(ColumnRule("template", {"format": "X-{value}"}), key=KEY)


def test_regex_replaces() -> None:
    rule = ColumnRule("regex", {"pattern": r"\d+", "replace": "#"})
    assert mask(rule, "12 Main St, Apt 3") == "# Main St, Apt #"


def test_keep_null_and_redact() -> None:
    assert mask(ColumnRule("keep"), "as is") == "as is"
    assert mask(ColumnRule("null"), "gone") is None
    assert mask(ColumnRule("redact"), "secret") == "[redacted]"
    assert mask(ColumnRule("redact", {"text": "n/a"}), "secret") == "n/a"


def test_json_masks_nested_paths_and_leaves_the_rest_exactly() -> None:
    rule = parse_rules({"tables": {"orders": {"meta": {"json": {"paths": {
        "$.contact.email": "email",
        "$.card": "redact",
        "$.items[*].owner": "full_name",
        "$.items[*].price": {"number_noise": {"ratio": 0.1}},
        "$.missing.path": "hash",
    }}}}}}, source="rules.yaml").rule_for("orders", "meta")
    assert rule is not None
    doc = {"contact": {"email": "ann@corp.example", "tier": 3}, "card": {"n": "4111"},
           "items": [{"owner": "Ann Lee", "price": 10.50, "ratio": 1.10},
                     {"owner": "Bo Chan", "price": 20}], "note": None}
    text = json.dumps(doc).replace("10.5", "10.50").replace("1.1}", "1.10}")
    out = mask(rule, text)
    assert out is not None
    masked = json.loads(out, parse_float=Decimal)
    assert masked["contact"]["email"] == mask(ColumnRule("email"), "ann@corp.example")
    assert masked["contact"]["tier"] == 3 and masked["note"] is None
    assert masked["card"] == "[redacted]"
    assert [i["owner"] for i in masked["items"]] == [mask(ColumnRule("full_name"), "Ann Lee"),
                                                     mask(ColumnRule("full_name"), "Bo Chan")]
    first, second = (i["price"] for i in masked["items"])
    assert isinstance(first, Decimal) and abs(first - Decimal("10.50")) <= Decimal("1.05")
    assert str(first).count(".") == 1 and len(str(first).partition(".")[2]) == 2
    assert isinstance(second, int) and 18 <= second <= 22
    assert '"ratio": 1.10' in out  # numbers nobody masks are written back exactly
    assert "ann@corp.example" not in out and "Ann Lee" not in out


def test_json_that_does_not_parse_is_redacted_whole() -> None:
    rule = ColumnRule("json", {"paths": {"$.email": "email"}})
    assert mask(rule, "{not json ann@corp.example") == '"[redacted]"'


def test_masker_errors_never_show_the_key() -> None:
    secret_key = b"do-not-show-this-key"
    with pytest.raises(MaskingError) as err:
        make_masker(ColumnRule("date_shift", {"days": 3}), key=secret_key)("nope")
    assert secret_key.decode() not in str(err.value)


# --------------------------------------------------------------------------- the rules file

EXAMPLE = """\
subset:
  roots:
    customers: 5%
    orders: "created_at > now() - interval '30 days'"
  children: [orders, order_items]
tables:
  customers:
    id: keep
    email: email
    first_name: first_name
    phone: phone
    notes: redact
    birthday: {date_shift: {days: 60}}
    ssn: null
  orders:
    total: {number_noise: {ratio: 0.1}}
    meta: {json: {paths: {"$.contact.email": email, "$.card": redact}}}
    code: {template: {format: "ORD-{hash:8}"}}
    street: {regex: {pattern: "\\\\d+", replace: "#"}}
  billing.invoices:
    holder: full_name
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_rules_file_loads(tmp_path: Path) -> None:
    rules = load_rules(_write(tmp_path, EXAMPLE))
    assert rules.path == tmp_path / "rules.yaml"
    roots = {r.table: r for r in rules.roots}
    assert roots["customers"].fraction == 5.0 and roots["customers"].where is None
    assert roots["orders"].where == "created_at > now() - interval '30 days'"
    assert roots["orders"].fraction is None
    assert rules.children == frozenset({"orders", "order_items"})
    assert rules.masked_columns("customers") == ["email", "first_name", "phone", "notes",
                                                 "birthday", "ssn"]
    assert rules.rule_for("public.customers", "id") == ColumnRule("keep")
    assert rules.rule_for("customers", "ssn") == ColumnRule("null")  # unquoted YAML null
    assert rules.rule_for("customers", "nope") is None
    assert rules.rule_for("invoices", "holder") is None  # not public: needs its schema
    assert rules.rule_for("billing.invoices", "holder") == ColumnRule("full_name")
    assert split_table("billing.invoices") == ("billing", "invoices")
    assert split_table("customers") == ("public", "customers")
    street = rules.rule_for("orders", "street")
    assert street is not None and mask(street, "12 Main St") == "# Main St"


@pytest.mark.parametrize(("text", "expected"), [
    ("tables:\n  orders:\n    total: noise\n",
     r"tables\.orders\.total: unknown transformer 'noise' \(expected one of address, "
     r"date_shift, email,"),
    ("tables:\n  customers:\n    birthday: {date_shift: {days: 0}}\n",
     r"tables\.customers\.birthday\.date_shift\.days: expected a number of days, a whole "
     r"number from 1 .*\(got 0\)"),
    ("tables:\n  customers:\n    birthday: date_shift\n",
     r"tables\.customers\.birthday\.date_shift: missing parameter 'days'"),
    ("tables:\n  orders:\n    total: {number_noise: {ratio: 2}}\n",
     r"tables\.orders\.total\.number_noise\.ratio: expected a ratio greater than 0 and at most 1"),
    ("tables:\n  c:\n    phone: {phone: {prefix: 2}}\n",
     r"tables\.c\.phone\.phone: unknown parameter 'prefix' \(expected keep_prefix\)"),
    ("tables:\n  c:\n    code: {template: {format: 'X-{value}'}}\n",
     r"tables\.c\.code\.template\.format: template field \{value\} is not allowed"),
    ("tables:\n  c:\n    s: {regex: {pattern: '(', replace: x}}\n",
     r"tables\.c\.s\.regex\.pattern: not a valid regular expression"),
    ("tables:\n  c:\n    m: {json: {paths: {'contact.email': email}}}\n",
     r"tables\.c\.m\.json\.paths\.contact\.email: a JSON path starts with `\$`"),
    ("tables:\n  c:\n    m: {json: {paths: {'$.a': {json: {paths: {'$.b': email}}}}}}\n",
     r"json rules cannot nest"),
    ("subset:\n  roots:\n    customers: 0%\n",
     r"subset\.roots\.customers: expected a percentage greater than 0% and at most 100% "
     r"\(got '0%'\)"),
    ("subset:\n  roots:\n    customers: 150%\n", r"subset\.roots\.customers: .*\(got '150%'\)"),
    ("subset:\n  roots:\n    customers: 5\n", r"subset\.roots\.customers: expected a percentage"),
    ("subset:\n  roots:\n    c: \"id > 1; DROP TABLE c\"\n", r"subset\.roots\.c: .*`;`"),
    ("tables:\n  a.b.c:\n    x: keep\n", r"tables\.a\.b\.c: expected a table name"),
    ("tables:\n  customers:\n    x: keep\n  public.customers:\n    y: keep\n",
     r"tables\.public\.customers: table customers is listed twice"),
    ("tables:\n  c:\n    on: keep\n", r"tables\.c\.True: expected a column name"),
    ("tabels: {}\n", r"unknown top-level key 'tabels'"),
    ("tables:\n  c:\n    email: email\n    email: keep\n", r"duplicate key 'email'"),
    ("tables: [\n", r"not valid YAML"),
])
def test_rules_errors_name_the_file_and_the_key_path(tmp_path: Path, text: str,
                                                     expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert re.search(expected, message), message


def test_every_problem_in_a_file_is_listed(tmp_path: Path) -> None:
    path = _write(tmp_path, "tables:\n  c:\n    a: noise\n    b: {hash: {length: 99}}\n")
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    assert str(err.value).startswith(f"{path} is invalid:")
    assert "tables.c.a: unknown transformer" in str(err.value)
    assert "tables.c.b.hash.length: expected a length" in str(err.value)


def test_a_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules\.yaml: no such rules file"):
        load_rules(tmp_path / "rules.yaml")


def test_json_masking_by_shape_agrees_with_parsing_every_document() -> None:
    """Documents are masked by replacing strings in place, planned per shape; the result must
    be what parsing, masking and writing each document gives — escapes, numbers, wildcards,
    indexes, rules that reach a number or an object, and text that is not JSON included."""
    from pipelines.data.masking import _JsonMasker

    rule = ColumnRule("json", {"paths": {
        "$.contact.email": ColumnRule("email"), "$.items[*].who": ColumnRule("full_name"),
        "$.list[1]": ColumnRule("hash", {"length": 8}), "$.*.phone": ColumnRule("phone"),
        "$['odd \"key\"']": ColumnRule("redact"),
    }})
    masker = make_masker(rule, key=KEY, cache_size=0)
    slow = _JsonMasker([(p, make_masker(r, key=KEY)) for p, r in [
        (("contact", "email"), ColumnRule("email")), (("items", None, "who"),
                                                       ColumnRule("full_name")),
        (("list", 1), ColumnRule("hash", {"length": 8})), ((None, "phone"), ColumnRule("phone")),
        (('odd "key"',), ColumnRule("redact"))]])._slow
    docs = [
        {"contact": {"email": "ann@corp.example", "phone": "+44 20 7946 0958"}, "n": 1.50},
        {"contact": {"email": "q\"uote\\d@x.example\n", "phone": None}, "n": -2e-3, "t": True},
        {"items": [{"who": "Ann Lee", "q": 1}, {"who": "Bo ✓ Li"}, {}], "list": ["a", "b", 3]},
        {"items": [], "list": [], "contact": {}, 'odd "key"': "x", "other": {"phone": "0201"}},
        {"list": [1, {"deep": ["x"]}], "contact": {"email": 12}},  # a rule reaches a number
        {"items": [{"who": {"first": "Ann"}}]},  # a rule reaches an object
        [1, "two", {"contact": {"email": "c@d.example"}}],
        "just a string", 42, None,
    ]
    for doc in docs:
        text = json.dumps(doc, ensure_ascii=False)
        for variant in (text, text.replace(", ", ",").replace(": ", ":")):
            fast = masker(variant)
            assert fast is not None
            assert json.loads(fast, parse_float=Decimal) == json.loads(
                slow(variant), parse_float=Decimal), variant
    assert masker("{not json") == '"[redacted]"'
    assert masker('{"contact": {"email": "a@b.example"}') == '"[redacted]"'  # unterminated


@pytest.mark.parametrize("locale", ["en_US", "de_DE", "ja_JP", "fr_FR"])
def test_word_lists_are_the_ones_a_faker_instance_has(locale: str) -> None:
    # The lists are read from the person provider module directly (cheaper than a Faker
    # instance); they must be the instance's own, in its order, or masked names would change.
    from faker import Faker

    providers = Faker(locale).factories[0].get_providers()

    def of(attr: str) -> tuple[str, ...]:
        found = next(getattr(p, attr) for p in providers if hasattr(p, attr))
        return tuple(dict.fromkeys(str(w) for w in found))

    assert first_names(locale) == of("first_names")
    assert last_names(locale) == of("last_names")
