"""The masking and subsetting rules file: which rows a snapshot takes and how each column is
transformed on the way.

Why: the rules file is the one place a team states, column by column, what production data may
look like once it leaves production. It is checked completely when it is loaded — every table
name, transformer, parameter, JSON path, regular expression and template — so a mistake is a
`ConfigError` naming the file, the key path and what was expected, before a snapshot build reads
a single row, never a failure halfway through one.

    subset:
      roots:                          # where the subset starts: a percentage or a WHERE clause
        customers: 5%
        orders: "created_at > now() - interval '30 days'"
      children: [orders, order_items] # rows kept when they reference a kept row
    tables:
      customers:
        id: keep
        email: email
        birthday: {date_shift: {days: 60}}

Table names are `schema.table` or bare (= `public`); they are normalised to the bare form for
`public` and `schema.table` otherwise, so `customers` and `public.customers` are the same key.
`null` may be written unquoted (YAML reads it as null): either way the column becomes NULL.

Neighbours: `masking.make_masker` turns a `ColumnRule` into a function on values, `detect.lint`
compares rules with a source database, and the snapshot builder (`subset.py`, `snapshot.py`)
follows `roots` and `children`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from bot.errors import ConfigError

# --------------------------------------------------------------------------- values


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def _unfrozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _unfrozen(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ColumnRule:
    """One column's transformer and its (validated) parameters.

    For `json`, `params["paths"]` maps each path (as written) to a nested `ColumnRule`.
    """

    transformer: str
    params: Mapping[str, Any] = field(default_factory=_empty)

    def __str__(self) -> str:
        return self.transformer

    @property
    def allowed(self) -> tuple[str, ...]:
        """The kinds of personal data a `keep` rule lets through knowingly (`allow`)."""
        return tuple(self.params.get("allow", ())) if self.transformer == "keep" else ()

    def __reduce__(self) -> tuple[type[ColumnRule], tuple[str, dict[str, Any]]]:
        """Picklable (the snapshot build masks in worker processes): read-only mapping
        proxies become dicts on the way; nested rules pickle themselves the same way."""
        return (ColumnRule, (self.transformer, _unfrozen(self.params)))


@dataclass(frozen=True)
class SubsetRoot:
    """A table the subset starts from: either a share of its rows or the rows a WHERE clause
    selects (exactly one of the two is set).

    `fraction` is the share as a percentage in (0, 100], as written: `5%` in the file is `5.0`
    here (what `TABLESAMPLE` and `subset.root_predicate` take). `where` is an SQL boolean
    expression, used as written.
    """

    table: str
    fraction: float | None
    where: str | None


@dataclass(frozen=True)
class Rules:
    """A loaded rules file. Table keys are normalised (`table_key`)."""

    tables: Mapping[str, Mapping[str, ColumnRule]]
    roots: Sequence[SubsetRoot]
    children: frozenset[str]
    path: Path | None = None

    def rule_for(self, table: str, column: str) -> ColumnRule | None:
        """The rule for a column, or None when the file says nothing about it.

        `table` may be bare or `schema.table`."""
        try:
            key = table_key(table)
        except ValueError:
            return None
        return self.tables.get(key, {}).get(column)

    def masked_columns(self, table: str) -> list[str]:
        """Columns of `table` whose values are transformed (every rule except `keep`), in the
        order the file lists them."""
        try:
            key = table_key(table)
        except ValueError:
            return []
        return [col for col, rule in self.tables.get(key, {}).items()
                if rule.transformer != "keep"]


EMPTY_RULES = Rules(tables=MappingProxyType({}), roots=(), children=frozenset(), path=None)


def table_key(name: str) -> str:
    """The normalised name of a table: bare for `public`, `schema.table` otherwise.

    Raises ValueError for an empty name or more than one dot."""
    parts = name.strip().split(".")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ValueError(f"expected a table name as `table` or `schema.table` (got {name!r})")
    parts = [p.strip() for p in parts]
    if len(parts) == 2 and parts[0] != "public":
        return f"{parts[0]}.{parts[1]}"
    return parts[-1]


def split_table(name: str) -> tuple[str, str]:
    """`(schema, table)` for a table name in either form: `customers` → `("public", …)`."""
    key = table_key(name)
    schema, _, table = key.rpartition(".")
    return schema or "public", table


# --------------------------------------------------------------------------- JSON paths

# A segment is a key (str), an array index (int) or WILDCARD (every element or value).
WILDCARD = None
JsonPath = tuple[str | int | None, ...]

_SEGMENT = re.compile(
    r"""\.(?P<name>[^.\[\]'"*]+)     # .name
      | \.\*                          # .*
      | \[\*\]                        # [*]
      | \[(?P<index>\d+)\]            # [3]
      | \['(?P<sq>[^']*)'\]           # ['odd key']
      | \["(?P<dq>[^"]*)"\]           # ["odd key"]
    """,
    re.VERBOSE,
)


@cache
def parse_json_path(text: str) -> JsonPath:
    """`$.contact.email` → `("contact", "email")`; `$.items[*].email` → `("items", None,
    "email")`. Raises ValueError naming what is wrong."""
    if not text.startswith("$"):
        raise ValueError(f"a JSON path starts with `$` (got {text!r})")
    segments: list[str | int | None] = []
    pos = 1
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read JSON path {text!r} at position {pos} "
                             "(expected .key, .*, [*], [N] or ['key'])")
        if m.group("name") is not None:
            segments.append(m.group("name"))
        elif m.group("index") is not None:
            segments.append(int(m.group("index")))
        elif m.group("sq") is not None:
            segments.append(m.group("sq"))
        elif m.group("dq") is not None:
            segments.append(m.group("dq"))
        else:
            segments.append(WILDCARD)
        pos = m.end()
    return tuple(segments)


def path_covers(rule: JsonPath, path: JsonPath) -> bool:
    """Whether a rule at `rule` reaches the value at `path`: that value, or a container of it.
    In `path`, WILDCARD stands for every element of an array (as the detector reports paths),
    which only a WILDCARD in the rule covers."""
    if len(rule) > len(path):
        return False
    for r, p in zip(rule, path, strict=False):
        if r is WILDCARD:
            continue
        if p is WILDCARD or type(r) is not type(p) or r != p:
            return False
    return True


def json_rules_at(rule: ColumnRule, path: JsonPath) -> list[tuple[str, ColumnRule]]:
    """(path as written, rule) of a `json` rule's nested rules that reach `path`, in order."""
    return [(written, nested) for written, nested in rule.params["paths"].items()
            if path_covers(parse_json_path(written), path)]


# Transformers whose output keeps the input's text: `keep` all of it, `regex` all but its
# matches. Every other transformer writes its output itself.
PASS_THROUGH = frozenset({"keep", "regex"})


# --------------------------------------------------------------------------- templates

TEMPLATE_FIELDS = ("hash", "digits")
MAX_TEMPLATE_WIDTH = 64


@cache
def parse_template(text: str) -> tuple[tuple[str, str | None, int], ...]:
    """A masking template as `(literal, field, width)` parts (field None: literal only).

    Only `{hash:N}` (N hex characters of the keyed hash) and `{digits:N}` (N decimal digits)
    are allowed; `{value}` and anything else that could carry the original is refused."""
    parts: list[tuple[str, str | None, int]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"cannot read template {text!r}: {exc}") from None
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None, 0))
            continue
        if name not in TEMPLATE_FIELDS:
            extra = " (it would copy the original value)" if name == "value" else ""
            raise ValueError(f"template field {{{name}}} is not allowed{extra}; "
                             "expected {hash:N} or {digits:N}")
        if conversion:
            raise ValueError(f"template field {{{name}!{conversion}}}: no conversions allowed")
        if not spec or not spec.isdigit() or not 1 <= int(spec) <= MAX_TEMPLATE_WIDTH:
            raise ValueError(f"template field {{{name}:{spec}}}: expected a width from 1 to "
                             f"{MAX_TEMPLATE_WIDTH}, as in {{{name}:8}}")
        parts.append((literal, name, int(spec)))
    if not any(f is not None for _, f, _ in parts):
        raise ValueError("a template needs at least one {hash:N} or {digits:N} field "
                         "(otherwise use redact with text)")
    return tuple(parts)


# --------------------------------------------------------------------------- parameters


class _Bad(Exception):
    """A parameter is invalid: `str(self)` says what was expected."""


def _got(value: object) -> str:
    return f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""


def _text(*, allow_empty: bool = True) -> Callable[[object], object]:
    def check(v: object) -> object:
        if not isinstance(v, str) or (not allow_empty and not v):
            raise _Bad("expected text" + ("" if allow_empty else " (not empty)") + _got(v))
        return v
    return check


def _int(low: int, high: int | None, what: str) -> Callable[[object], object]:
    def check(v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (
                high is not None and v > high):
            upper = f" to {high}" if high is not None else " or more"
            raise _Bad(f"expected {what}, a whole number from {low}{upper}" + _got(v))
        return v
    return check


def _ratio(v: object) -> object:
    value: float | None = None
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            value = float(v.strip()[:-1]) / 100
        except ValueError:
            value = None
    elif isinstance(v, int | float) and not isinstance(v, bool):
        value = float(v)
    if value is None or not math.isfinite(value) or not 0 < value <= 1:
        raise _Bad("expected a ratio greater than 0 and at most 1, as 0.1 or '10%'" + _got(v))
    return value


def _locale(v: object) -> object:
    from faker.config import AVAILABLE_LOCALES

    if not isinstance(v, str) or v not in AVAILABLE_LOCALES:
        raise _Bad("expected a Faker locale such as en_US or de_DE" + _got(v))
    return v


def _regex(v: object) -> object:
    if not isinstance(v, str) or not v:
        raise _Bad("expected a regular expression" + _got(v))
    try:
        re.compile(v)
    except re.error as exc:
        raise _Bad(f"not a valid regular expression: {exc}") from None
    return v


def _template(v: object) -> object:
    if not isinstance(v, str):
        raise _Bad("expected a template such as 'ORD-{hash:8}'" + _got(v))
    try:
        parse_template(v)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return v


@dataclass(frozen=True)
class _Param:
    check: Callable[[object], object]
    required: bool = False


# What the detector looks for in values no transformer wrote (after masking, and in kept
# columns): the kinds `keep: {allow: [...]}` lets through, knowingly.
PERSONAL_PATTERNS = ("email", "phone", "card", "iban", "national_id")


def _patterns(v: object) -> object:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not v or not all(
            isinstance(p, str) and p in PERSONAL_PATTERNS for p in v):
        raise _Bad(f"expected a list of {', '.join(PERSONAL_PATTERNS)}" + _got(v))
    return tuple(dict.fromkeys(v))


# The transformers a rules file may name, with their parameters. `masking.py` implements each.
_LOCALE = _Param(_locale)
TRANSFORMERS: Mapping[str, Mapping[str, _Param]] = MappingProxyType({
    "keep": {"allow": _Param(_patterns)},
    "null": {},
    "redact": {"text": _Param(_text())},
    "hash": {"length": _Param(_int(1, 64, "a length"))},
    "email": {"domain": _Param(_text(allow_empty=False))},
    "first_name": {"locale": _LOCALE},
    "last_name": {"locale": _LOCALE},
    "full_name": {"locale": _LOCALE},
    "phone": {"keep_prefix": _Param(_int(0, 6, "a number of leading digits"))},
    "address": {"locale": _LOCALE},
    "date_shift": {"days": _Param(_int(1, 36500, "a number of days"), required=True)},
    "number_noise": {"ratio": _Param(_ratio, required=True)},
    "regex": {"pattern": _Param(_regex, required=True), "replace": _Param(_text())},
    "json": {"paths": _Param(lambda v: v, required=True)},  # checked in _json_paths
    "template": {"format": _Param(_template, required=True)},
})


def _names(names: Iterable[object]) -> str:
    return ", ".join(sorted(str(n) for n in names))


# --------------------------------------------------------------------------- parsing


class _Problems:
    """Every problem found in one file, each with its key path."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)

    def raise_if_any(self, source: str) -> None:
        if len(self.items) == 1:
            raise ConfigError(f"{source}: {self.items[0]}")
        if self.items:
            raise ConfigError("\n  ".join([f"{source} is invalid:", *self.items]))


def _column_rule(raw: object, path: str, problems: _Problems, *,
                 nested: bool = False) -> ColumnRule | None:
    """A rule as written (`email`, `{hash: {length: 12}}`, a `ColumnRule`) → a checked one."""
    if isinstance(raw, ColumnRule):
        name, params = raw.transformer, raw.params
    elif raw is None:
        name, params = "null", {}
    elif isinstance(raw, str):
        name, params = raw.strip(), {}
    elif isinstance(raw, Mapping) and len(raw) == 1:
        ((name, params),) = raw.items()
        if name is None:
            name = "null"
        if not isinstance(name, str):
            problems.add(path, f"expected a transformer name{_got(name)}")
            return None
        if params is None:
            params = {}
    else:
        problems.add(path, "expected a transformer name (such as `email`) or a mapping with "
                           "one transformer and its parameters (such as `{hash: {length: 12}}`)")
        return None
    spec = TRANSFORMERS.get(name)
    if spec is None:
        problems.add(path, f"unknown transformer {name!r} (expected one of {_names(TRANSFORMERS)})")
        return None
    if nested and name == "json":
        problems.add(path, "json rules cannot nest; write a longer path instead")
        return None
    if not isinstance(params, Mapping):
        problems.add(f"{path}.{name}", "expected a mapping of parameters "
                     + (f"({_names(spec)})" if spec else "(this transformer takes none)"))
        return None
    checked: dict[str, Any] = {}
    ok = True
    for key, value in params.items():
        param = spec.get(key) if isinstance(key, str) else None
        if param is None:
            expected = f"expected {_names(spec)}" if spec else "it takes none"
            problems.add(f"{path}.{name}", f"unknown parameter {key!r} ({expected})")
            ok = False
            continue
        if name == "json" and key == "paths":
            paths = _json_paths(value, f"{path}.{name}.paths", problems)
            ok = ok and paths is not None
            checked[key] = paths
            continue
        try:
            checked[key] = param.check(value)
        except _Bad as exc:
            problems.add(f"{path}.{name}.{key}", str(exc))
            ok = False
    for key, param in spec.items():
        if param.required and key not in params:
            problems.add(f"{path}.{name}", f"missing parameter {key!r}")
            ok = False
    return ColumnRule(name, MappingProxyType(checked)) if ok else None


def _json_paths(raw: object, path: str,
                problems: _Problems) -> Mapping[str, ColumnRule] | None:
    if not isinstance(raw, Mapping) or not raw:
        problems.add(path, "expected a mapping of JSON paths to rules, "
                           "such as {\"$.contact.email\": email}")
        return None
    out: dict[str, ColumnRule] = {}
    ok = True
    for json_path, rule_raw in raw.items():
        where = f"{path}.{json_path}"
        if not isinstance(json_path, str):
            problems.add(where, "expected a JSON path such as $.contact.email")
            ok = False
            continue
        try:
            parse_json_path(json_path)
        except ValueError as exc:
            problems.add(where, str(exc))
            ok = False
            continue
        rule = _column_rule(rule_raw, where, problems, nested=True)
        if rule is None:
            ok = False
        else:
            out[json_path] = rule
    return MappingProxyType(out) if ok else None


def check_rule(rule: ColumnRule, *, source: str = "rule") -> ColumnRule:
    """Validate a `ColumnRule` built in code (parsed rules are valid already) and return it
    with normalised parameters. Raises ConfigError."""
    problems = _Problems()
    checked = _column_rule(rule, rule.transformer, problems)
    problems.raise_if_any(source)
    assert checked is not None
    return checked


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def _root(table: str, raw: object, path: str, problems: _Problems) -> SubsetRoot | None:
    if not isinstance(raw, str) or not raw.strip():
        problems.add(path, "expected a percentage such as '5%' or a WHERE clause such as "
                           "\"created_at > now() - interval '30 days'\"" + _got(raw))
        return None
    m = _PERCENT.match(raw)
    if m:
        percent = float(m.group(1))
        if not 0 < percent <= 100:
            problems.add(path, f"expected a percentage greater than 0% and at most 100%{_got(raw)}")
            return None
        return SubsetRoot(table=table, fraction=percent, where=None)
    if ";" in _QUOTED.sub("", raw):
        problems.add(path, "a WHERE clause is one expression; `;` is not allowed")
        return None
    return SubsetRoot(table=table, fraction=None, where=raw.strip())


def _table(raw: object, path: str, problems: _Problems) -> str | None:
    if not isinstance(raw, str):
        problems.add(path, f"expected a table name (`table` or `schema.table`){_got(raw)}")
        return None
    try:
        return table_key(raw)
    except ValueError as exc:
        problems.add(path, str(exc))
        return None


def _subset(raw: object, problems: _Problems) -> tuple[list[SubsetRoot], frozenset[str]]:
    roots: list[SubsetRoot] = []
    children: set[str] = set()
    if raw is None:
        return roots, frozenset()
    if not isinstance(raw, Mapping):
        problems.add("subset", "expected a mapping with `roots` and `children`")
        return roots, frozenset()
    for key in raw:
        if key not in ("roots", "children"):
            problems.add("subset", f"unknown key {key!r} (expected roots, children)")
    roots_raw = raw.get("roots") or {}
    if not isinstance(roots_raw, Mapping):
        problems.add("subset.roots", "expected a mapping of table → percentage or WHERE clause")
    else:
        seen: set[str] = set()
        for name, spec in roots_raw.items():
            table = _table(name, f"subset.roots.{name}", problems)
            if table is None:
                continue
            if table in seen:
                problems.add(f"subset.roots.{name}", f"table {table} is listed twice")
                continue
            seen.add(table)
            root = _root(table, spec, f"subset.roots.{name}", problems)
            if root is not None:
                roots.append(root)
    children_raw = raw.get("children") or []
    if not isinstance(children_raw, list):
        problems.add("subset.children", "expected a list of table names")
    else:
        for i, name in enumerate(children_raw):
            table = _table(name, f"subset.children[{i}]", problems)
            if table is not None:
                children.add(table)
    return roots, frozenset(children)


def _tables(raw: object, problems: _Problems) -> dict[str, Mapping[str, ColumnRule]]:
    tables: dict[str, Mapping[str, ColumnRule]] = {}
    if raw is None:
        return tables
    if not isinstance(raw, Mapping):
        problems.add("tables", "expected a mapping of table → {column: rule}")
        return tables
    for name, columns_raw in raw.items():
        path = f"tables.{name}"
        table = _table(name, path, problems)
        if table is None:
            continue
        if table in tables:
            problems.add(path, f"table {table} is listed twice")
            continue
        if not isinstance(columns_raw, Mapping):
            problems.add(path, "expected a mapping of column → rule")
            continue
        columns: dict[str, ColumnRule] = {}
        for column, rule_raw in columns_raw.items():
            if not isinstance(column, str) or not column:
                problems.add(f"{path}.{column}", "expected a column name (quote names such "
                                                 f"as on, off, yes or no){_got(column)}")
                continue
            rule = _column_rule(rule_raw, f"{path}.{column}", problems)
            if rule is not None:
                columns[column] = rule
        tables[table] = MappingProxyType(columns)
    return tables


def parse_rules(raw: object, *, source: str, path: Path | None = None) -> Rules:
    """Validate a rules document already read from YAML. `source` names it in errors.
    Raises ConfigError listing every problem with its key path."""
    problems = _Problems()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping with `subset` and `tables` at the "
                          "top level")
    for key in raw:
        if key not in ("subset", "tables"):
            problems.add("", f"unknown top-level key {key!r} (expected subset, tables)")
    roots, children = _subset(raw.get("subset"), problems)
    tables = _tables(raw.get("tables"), problems)
    problems.raise_if_any(source)
    return Rules(tables=MappingProxyType(tables), roots=tuple(roots), children=children,
                 path=path)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML would silently keep the last one, and a
    second rule for a column must not quietly replace the first."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key; construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file. Raises ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such rules file (the snapshot's `rules` in ephem.yaml)"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rules file ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(raw, source=str(path), path=path)
