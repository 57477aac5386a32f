"""The `/ephem` grammar as a table: input text → the result it must produce."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.domain import DataMode, DataRequest, EnvRequest
from handlers.parser import (
    Create,
    Creds,
    Destroy,
    Diff,
    Extend,
    Help,
    ListEnvs,
    ResetData,
    Run,
    Say,
    Status,
    parse,
)

RUNS = [
    ("", Help()),
    ("help", Help()),
    ("help create", Help("create")),
    ("create", Create(EnvRequest())),
    ("create --match staging", Create(EnvRequest(match="staging"))),
    ("create pr-142", Create(EnvRequest(name="pr-142"))),
    ("create PR-142", Create(EnvRequest(name="pr-142"))),
    (
        "create pr-142 --match staging --set api=2.8.0-rc1 --data snapshot --ttl 2d",
        Create(EnvRequest(name="pr-142", match="staging", overrides={"api": "2.8.0-rc1"},
                          ttl=timedelta(days=2), data=DataRequest(DataMode.SNAPSHOT))),
    ),
    ("create --set api=1.2,web=3.4 --set worker=1.2",
     Create(EnvRequest(overrides={"api": "1.2", "web": "3.4", "worker": "1.2"}))),
    ("create --ttl=90m", Create(EnvRequest(ttl=timedelta(minutes=90)))),
    ("create --ttl 1d12h", Create(EnvRequest(ttl=timedelta(hours=36)))),
    ("create --data none", Create(EnvRequest(data=DataRequest(DataMode.NONE)))),
    ("create --data snapshot:nightly",
     Create(EnvRequest(data=DataRequest(DataMode.SNAPSHOT, "nightly")))),
    ("create --reason testing the new checkout --ttl 8h",
     Create(EnvRequest(reason="testing the new checkout", ttl=timedelta(hours=8)))),
    ('create --reason "quoted reason"', Create(EnvRequest(reason="quoted reason"))),
    ("create --reason “smart quotes” here", Create(EnvRequest(reason="smart quotes here"))),
    ("<@U0BOT> create demo", Create(EnvRequest(name="demo"))),
    ("create --set api=2.8.0&amp;x", None),  # `&` unescaped → not a valid version (see SAYS)
    ("list", ListEnvs()),
    ("list --mine", ListEnvs(mine=True)),
    ("status pr-142", Status("pr-142")),
    ("STATUS pr-142", Status("pr-142")),
    ("destroy pr-142", Destroy("pr-142")),
    ("extend pr-142", Extend("pr-142")),
    ("extend pr-142 3d", Extend("pr-142", timedelta(days=3))),
    ("reset-data pr-142", ResetData("pr-142")),
    ("create pr-142 --match staging --set api=2.8.0-rc1 --dry-run",
     Create(EnvRequest(name="pr-142", match="staging", overrides={"api": "2.8.0-rc1"}),
            dry_run=True)),
    ("create --dry-run --ttl 2h", Create(EnvRequest(ttl=timedelta(hours=2)), dry_run=True)),
    ("create --reason try the rc --dry-run",
     Create(EnvRequest(reason="try the rc"), dry_run=True)),
    ("create --set api=sha256:ab12", Create(EnvRequest(overrides={"api": "sha256:ab12"}))),
    ("diff pr-142", Diff("pr-142")),
    ("diff PR-142 --against staging", Diff("pr-142", "staging")),
    ("diff pr-142 --against=production", Diff("pr-142", "production")),
    ("help diff", Help("diff")),
    ("creds pr-142", Creds("pr-142")),
]

SAYS = [
    ("frobnicate", "not a command I know"),
    ("create pr_142", "not a valid name"),
    ("create snap-x", "reserved"),
    ("create pool-1", "reserved"),
    ("create -pr", "has no option"),
    ("create " + "a" * 41, "at most 40"),
    ("create --match", "`--match` needs a value"),
    ("create --match staging --match prod", "given twice"),
    ("create --set api", "is not COMPONENT=VERSION"),
    ("create --set api=", "is not COMPONENT=VERSION"),
    ("create --set api=1 --set api=2", "set twice"),
    ("create --set api=2.8.0&amp;x", "is not COMPONENT=VERSION"),
    ("create --ttl forever", "not a duration"),
    ("create --ttl 0m", "zero"),
    ("create --data everything", "use `none`, `seed` or `snapshot"),
    ("create --data seed:x", "only `snapshot` takes a name"),
    ("create --reason", "needs some text"),
    ("create --colour blue", "no option `--colour`"),
    ("create pr-1 pr-2", "I did not expect `pr-2`"),
    ('create --reason "open', "quote is not closed"),
    ("status", "needs the name"),
    ("destroy a b", "takes one name"),
    ("list --all", "does not take"),
    ("extend pr-1 soon", "not a duration"),
    ("reset-data", "needs the name"),
    ("create --help", "Usage: `/ephem create"),
    # Durations: ASCII digits only, bounded numbers, nothing that overflows.
    ("create --ttl ٣d", "not a duration"),
    ("extend pr-1 ٣d", "not a duration"),
    ("create --ttl 99999999999999999999w", "at most 9 digits"),
    ("create --ttl " + "9" * 4300 + "w", "at most 9 digits"),
    ("extend pr-1 999999999w", "longer than any duration"),
    # Each option once, except --set; the usage says so.
    ("create --ttl 1d --ttl 2d", "`--ttl` is given twice"),
    ("create --data none --data=seed", "`--data` is given twice"),
    ("create --reason one --reason two", "`--reason` is given twice"),
    ("create --ttl 1d --ttl 2d", "except `--set`"),
    # PostgreSQL cannot store a NUL; Slack cannot show half a surrogate pair.
    ("create pr\x00", "NUL"),
    ("status pr-1\x00", "NUL"),
    ("create --reason \ud800", "NUL byte or half of a UTF-16 pair"),
    ('create "pr-1\n"', "not a valid name"),
    ('create pr-1 --set "api=1.0\nx"', "is not COMPONENT=VERSION"),
    ("create --ttl 1d \\", "ends with"),
    ("create --set api=", "the version is empty"),
    ("create --set api= --ttl 2h", "the version is empty"),
    ("create --dry-run=yes", "`--dry-run` takes no value"),
    ("create --dry-run now", "I did not expect `now`"),
    ("diff", "`diff` needs the name"),
    ("diff pr_1", "not a valid name"),
    ("diff pr-1 --against", "needs the name of a reference"),
    ("diff pr-1 --against a --against b", "given twice"),
    ("diff pr-1 staging", "`staging` is extra"),
    ("diff pr-1 --with staging", "`--with` is extra"),
    ("diff --help", "Usage: `/ephem diff NAME [--against ENV]`"),
]


@pytest.mark.parametrize(("text", "expected"), [r for r in RUNS if r[1] is not None])
def test_runs(text: str, expected: object) -> None:
    assert parse(text) == Run(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "fragment"), SAYS)
def test_says_what_was_wrong(text: str, fragment: str) -> None:
    result = parse(text)
    assert isinstance(result, Say), result
    assert fragment in result.text


@pytest.mark.parametrize("text", ["create --x", "status", "create a b", "zzz"])
def test_wrong_input_reply_carries_usage(text: str) -> None:
    result = parse(text)
    assert isinstance(result, Say)
    assert "/ephem" in result.text


def test_parser_never_raises_on_junk() -> None:
    junk = ["--", "create --set =", "create '", "\x00", "create --ttl=", "extend -x 1d",
            "create --data snapshot:", "create --set ,,", "🙂", "create --reason=--ttl"]
    for text in junk:
        assert isinstance(parse(text), Run | Say)


@pytest.mark.parametrize("text", [
    "create <!channel>", "<!here> frobnicate", "create --match <https://evil|click>",
    "status <@U123>", "create --ttl <!everyone>", "list <!channel>",
])
def test_quoted_input_is_escaped_so_slack_shows_it_as_text(text: str) -> None:
    result = parse(text)
    assert isinstance(result, Say), result
    for raw in ("<!channel>", "<!here>", "<https://evil|click>", "<@U123>", "<!everyone>"):
        assert raw not in result.text
    assert "&lt;" in result.text


def test_a_huge_extension_is_parsed_for_the_cap_to_apply() -> None:
    assert parse("extend pr-1 500000w") == Run(Extend("pr-1", timedelta(weeks=500000)))
# "Did you mean": typed → the suggestion the reply carries ("" when nothing is close enough).
DID_YOU_MEAN = [
    ("crate pr-1", "Did you mean `create`?"),
    ("distroy pr-1", "Did you mean `destroy`?"),
    ("stauts pr-1", "Did you mean `status`?"),
    ("lsit", "Did you mean `list`?"),
    ("create pr-1 --tll 2d", "Did you mean `--ttl`?"),
    ("create --mach staging", "Did you mean `--match`?"),
    ("create PR_145", "Did you mean `pr-145`?"),
    ("create my.branch.name", "Did you mean `my-branch-name`?"),
    ("status Feature_X", "Did you mean `feature-x`?"),
    ("frobnicate", ""),
    ("create 123", ""),
]


@pytest.mark.parametrize(("text", "suggestion"), DID_YOU_MEAN)
def test_did_you_mean(text: str, suggestion: str) -> None:
    result = parse(text)
    assert isinstance(result, Say), result
    if suggestion:
        assert suggestion in result.text
    else:
        assert "Did you mean" not in result.text


@pytest.mark.parametrize("word", ["destroy", "extend", "status", "reset-data", "creds"])
def test_a_command_word_alone_gets_usage(word: str) -> None:
    result = parse(word)
    assert isinstance(result, Say) and "needs the name" in result.text
    assert f"Usage: `/ephem {word} NAME" in result.text
