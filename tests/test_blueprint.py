"""Blueprint validation as a table: what a person writes → what they are told."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import parse_blueprint
from bot.errors import ConfigError

# Versions: YAML turns unquoted 2.10 into the number 2.1; a number is refused, text is kept.
VERSIONS: list[tuple[Any, str | None]] = [
    ("2.10", "2.10"),
    ("2.8.0-rc1", "2.8.0-rc1"),
    ("5", "5"),
    (2.1, "quote it"),
    (2.10, "quote it"),
    (5, "quote it"),
    (1e3, "quote it"),
]


@pytest.mark.parametrize(("version", "outcome"), VERSIONS)
def test_a_release_version_must_be_text(version: Any, outcome: str) -> None:
    raw = {"references": {"staging": {"releases": {"api": version}}}}
    if outcome == "quote it":
        with pytest.raises(ConfigError) as caught:
            parse_blueprint(raw)
        assert "references.staging.releases.api" in str(caught.value)
        assert 'quote it, like `api: "2.10"`' in str(caught.value)
    else:
        assert parse_blueprint(raw).references["staging"].releases["api"] == outcome


# Unknown keys: the path, and the closest known key at that place.
UNKNOWN: list[tuple[dict[str, Any], str]] = [
    ({"defaults": {"tll": "2d"}}, "defaults.tll: unknown key `tll`; did you mean `ttl`?"),
    ({"defaults": {"refrence": "x"}}, "did you mean `reference`?"),
    ({"timeout": {}}, "timeout: unknown key `timeout`; did you mean `timeouts`?"),
    ({"references": {"s": {"release": {}}}}, "did you mean `releases`?"),
    ({"phases": {"data": {"migratons": {}}}}, "did you mean `migrations`?"),
    ({"phases": {"data": {"snapshots": {"x": {"source": "postgresql://h/d", "rules": "r",
                                              "pol": 1}}}}},
     "phases.data.snapshots.x.pol: unknown key `pol`; did you mean `pool`?"),
    ({"zebra": 1}, "zebra: unknown key `zebra`"),
]


@pytest.mark.parametrize(("raw", "told"), UNKNOWN)
def test_an_unknown_key_names_the_closest_known_one(raw: dict[str, Any], told: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_blueprint(raw)
    assert told in str(caught.value)
    if "did you mean" not in told:
        assert "did you mean" not in str(caught.value)
