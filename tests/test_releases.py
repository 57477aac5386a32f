"""Release sets as people see them: overrides, the diff table, image references — as tables."""

from __future__ import annotations

import pytest

from bot.config import WorkloadMatch
from bot.errors import UserError
from bot.releases import (
    DiffRow,
    apply_overrides,
    diff_rows,
    diff_summary,
    render_table,
    summary,
)
from pipelines.code.workloads import component_of, pin_image, split_image, version_of

STAGING = {"api": "2.7.3", "web": "5.1.0", "worker": "2.7.3"}

OVERRIDES = [
    (STAGING, {}, (), STAGING),
    (STAGING, {"api": "2.8.0-rc1"}, (), {**STAGING, "api": "2.8.0-rc1"}),
    (STAGING, {"api": "2.8.0", "web": "5.2.0"}, (), {**STAGING, "api": "2.8.0", "web": "5.2.0"}),
    # a component the blueprint lists but the reference does not run (yet)
    (STAGING, {"search": "1.0"}, ("search",), {**STAGING, "search": "1.0"}),
    # nothing known to check against: taken as given
    ({}, {"api": "1.0"}, (), {"api": "1.0"}),
    # a digest is a version like any other
    (STAGING, {"api": "sha256:ab12"}, (), {**STAGING, "api": "sha256:ab12"}),
]


@pytest.mark.parametrize(("base", "overrides", "known", "expected"), OVERRIDES)
def test_overrides(base: dict[str, str], overrides: dict[str, str], known: tuple[str, ...],
                   expected: dict[str, str]) -> None:
    assert apply_overrides(base, overrides, known=known) == expected


REFUSED = [
    ({"apj": "1"}, ("Did you mean `api`?", "`api`, `web`, `worker`")),
    ({"wrker": "1"}, ("Did you mean `worker`?",)),
    ({"database": "1"}, ("there is no component `database`", "Components: `api`")),
    ({"api": ""}, ("has no version", "`--set api=2.8.0-rc1`")),
    ({"api": "  "}, ("has no version",)),
]


@pytest.mark.parametrize(("overrides", "fragments"), REFUSED)
def test_refused_overrides_say_why(overrides: dict[str, str], fragments: tuple[str, ...]
                                   ) -> None:
    with pytest.raises(UserError) as err:
        apply_overrides(STAGING, overrides)
    for fragment in fragments:
        assert fragment in str(err.value)
    if "database" in overrides:
        assert "Did you mean" not in str(err.value)


DIFFS = [
    ({"api": "1"}, {"api": "1"}, [DiffRow("api", "1", "1")], "identical (1 component)"),
    (STAGING, {**STAGING, "api": "2.7.4"},
     [DiffRow("api", "2.7.3", "2.7.4"), DiffRow("web", "5.1.0", "5.1.0"),
      DiffRow("worker", "2.7.3", "2.7.3")], "1 of 3 components differs"),
    ({"api": "1", "old": "1"}, {"api": "2", "new": "1"},
     [DiffRow("api", "1", "2"), DiffRow("new", None, "1"), DiffRow("old", "1", None)],
     "3 of 3 components differ"),
    ({}, {}, [], "identical (0 components)"),
]


@pytest.mark.parametrize(("mine", "theirs", "rows", "said"), DIFFS)
def test_diff_rows_and_summary(mine: dict[str, str], theirs: dict[str, str],
                               rows: list[DiffRow], said: str) -> None:
    assert diff_rows(mine, theirs) == rows
    assert diff_summary(rows) == said


def test_table_marks_the_rows_that_differ_and_aligns_columns() -> None:
    rows = diff_rows({"api": "2.8.0-rc1", "web": "5.1.0", "gone": "1"},
                     {"api": "2.7.3", "web": "5.1.0"})
    table = render_table(rows, mine="pr-142", theirs="staging now")
    assert table.splitlines() == [
        "component  pr-142     staging now",
        "api        2.8.0-rc1  2.7.3        ≠",
        "gone       1          -            ≠",
        "web        5.1.0      5.1.0",
    ]


def test_summary_is_sorted_and_says_empty() -> None:
    assert summary({"web": "5", "api": "2"}) == "api=2, web=5"
    assert summary({}) == "(empty)"


IMAGES = [
    ("ghcr.io/shop/api:2.7.3", "ghcr.io/shop/api", "2.7.3"),
    ("ghcr.io/shop/api@sha256:ab12", "ghcr.io/shop/api", "sha256:ab12"),
    ("ghcr.io/shop/api:2.7.3@sha256:ab12", "ghcr.io/shop/api", "2.7.3@sha256:ab12"),
    ("localhost:5000/api", "localhost:5000/api", "latest"),
    ("localhost:5000/api:1.0", "localhost:5000/api", "1.0"),
    ("redis", "redis", "latest"),
    ("redis:7", "redis", "7"),
]


@pytest.mark.parametrize(("image", "repository", "version"), IMAGES)
def test_images_split_and_pin_back(image: str, repository: str, version: str) -> None:
    assert split_image(image) == (repository, version)
    if image.count(":") + image.count("@") > (1 if image.startswith("localhost") else 0):
        assert pin_image(repository, version) == image


def _deployment(name: str, *, labels: dict[str, str] | None = None,
                containers: list[tuple[str, str]] | None = None,
                kind: str = "Deployment") -> dict[str, object]:
    spec = {"containers": [{"name": n, "image": i} for n, i in containers or []]}
    body: dict[str, object] = {"template": {"spec": spec}}
    if kind == "CronJob":
        body = {"jobTemplate": {"spec": body}}
    return {"kind": kind, "metadata": {"name": name, "labels": labels or {}}, "spec": body}


MATCHES = [
    # by the default label
    (_deployment("api-server", labels={"app.kubernetes.io/name": "api"},
                 containers=[("api", "r/api:1")]), WorkloadMatch(), ("api", "1")),
    # by a mapping, winning over the label
    (_deployment("api-server", labels={"app.kubernetes.io/name": "x"},
                 containers=[("main", "r/api:2")]),
     WorkloadMatch(components={"api": "api-server"}), ("api", "2")),
    # a mapping with a kind matches only that kind
    (_deployment("nightly", containers=[("job", "r/worker:3")], kind="CronJob"),
     WorkloadMatch(components={"worker": "Deployment/nightly"}), (None, None)),
    (_deployment("nightly", containers=[("job", "r/worker:3")], kind="CronJob"),
     WorkloadMatch(components={"worker": "CronJob/nightly"}), ("worker", "3")),
    # another label
    (_deployment("a", labels={"app": "web"}, containers=[("web", "r/web:5")]),
     WorkloadMatch(label="app"), ("web", "5")),
    # the container named like the component, not the sidecar in front of it
    (_deployment("a", labels={"app.kubernetes.io/name": "api"},
                 containers=[("proxy", "envoy:1.30"), ("api", "r/api:7")]),
     WorkloadMatch(), ("api", "7")),
    # the configured container wins
    (_deployment("a", labels={"app.kubernetes.io/name": "api"},
                 containers=[("api", "r/other:1"), ("app", "r/api:8")]),
     WorkloadMatch(container="app"), ("api", "8")),
    # no label, no mapping: not a component
    (_deployment("redis", containers=[("redis", "redis:7")]), WorkloadMatch(), (None, None)),
]


@pytest.mark.parametrize(("obj", "match", "expected"), MATCHES)
def test_workloads_are_matched_to_components(obj: dict[str, object], match: WorkloadMatch,
                                             expected: tuple[str | None, str | None]) -> None:
    component = component_of(obj, match)
    version = version_of(obj, component, match) if component else None
    assert (component, version) == expected
