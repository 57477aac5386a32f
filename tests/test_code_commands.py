"""The release-set commands against a real store and real sources: `create --match` resolving a
reference once, `--set`, `--dry-run`, `diff` and the links in `status`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.config import Blueprint, parse_blueprint
from bot.ports import Invocation, Visibility
from bot.store import Store, repo
from bot.store.models import AuditEvent, Environment, Job
from handlers.commands import Commands
from pipelines.code.sources import Resolver

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def inv(text: str, user: str = "UANA") -> Invocation:
    return Invocation(user_id=user, channel_id="CENV", text=text)


def blueprint(live: Path, *, timeout: str = "10s") -> Blueprint:
    """`staging` is static; `live` is a command printing whatever the file `live` holds."""
    reader = [sys.executable, "-c", f"print(open({str(live)!r}).read())"]
    return parse_blueprint({
        "defaults": {"reference": "staging"},
        "references": {
            "staging": {"releases": {"api": "2.7.3", "web": "5.1.0"}},
            "live": {"source": {"kind": "command", "command": reader, "timeout": timeout}},
            "broken": {"source": {"kind": "command", "timeout": timeout, "command": [
                sys.executable, "-c", "import sys; print('registry down', file=sys.stderr); "
                "sys.exit(3)"]}},
            "slow": {"source": {"kind": "command", "timeout": "1s", "command": [
                sys.executable, "-c", "import time; time.sleep(30)"]}},
        },
        "components": {"api": {}, "web": {}},
        "phases": {"data": {}},
    })


def move(live: Path, versions: dict[str, str]) -> None:
    """The reference now runs `versions`."""
    live.write_text(json.dumps(versions))


@pytest.fixture
def live(tmp_path: Path) -> Path:
    path = tmp_path / "live.json"
    path.write_text(json.dumps({"api": "3.0.0", "web": "6.0.0", "worker": "3.0.0"}))
    return path


@pytest.fixture
def commands(store: Store, live: Path) -> Commands:
    bp = blueprint(live)
    return Commands(store=store, blueprint=bp, clock=lambda: NOW,
                    releases=Resolver(bp.references))


async def _count(store: Store, model: type[object]) -> int:
    async with store.transaction() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_create_records_the_set_resolved_when_accepted(commands: Commands, store: Store,
                                                             live: Path) -> None:
    replies = await commands.command(inv("create pr-1 --match live --set worker=3.1.0-rc1"))
    assert replies[0].visibility is Visibility.THREAD, replies[0].text
    assert "Release set: api=3.0.0, web=6.0.0, worker=3.1.0-rc1" in replies[0].text
    move(live, {"api": "9.9.9"})  # the reference moves on afterwards
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None and env.reference == "live"
        assert env.release_set == {"api": "3.0.0", "web": "6.0.0", "worker": "3.1.0-rc1"}
        audit = (await s.execute(select(AuditEvent))).scalars().one()
    assert audit.details["source"] == "command"
    assert audit.details["reference_set"] == {"api": "3.0.0", "web": "6.0.0", "worker": "3.0.0"}
    assert audit.details["overrides"] == {"worker": "3.1.0-rc1"}
    assert audit.details["release_set"]["worker"] == "3.1.0-rc1"


@pytest.mark.parametrize(("text", "fragments"), [
    ("create pr-2 --match broken",
     ["could not read the release set of `broken`", "exited with code 3", "registry down",
      "Nothing was created"]),
    ("create pr-2 --match slow", ["could not read the release set of `slow`",
                                  "no answer within 1s", "Nothing was created"]),
    ("create pr-2 --match live --set wroker=1", ["no component `wroker`",
                                                 "Did you mean `worker`?"]),
    ("create pr-2 --match live --set api=", ["the version is empty"]),
])
async def test_a_refused_create_queues_nothing(commands: Commands, store: Store, text: str,
                                               fragments: list[str]) -> None:
    replies = await commands.command(inv(text))
    assert len(replies) == 1 and replies[0].visibility is Visibility.EPHEMERAL
    for fragment in fragments:
        assert fragment in replies[0].text
    assert await _count(store, Environment) == 0
    assert await _count(store, Job) == 0


async def test_cheap_checks_come_before_the_source_is_read(commands: Commands) -> None:
    replies = await commands.command(inv("create pr-3 --match slow --ttl 99w"))
    assert "longer than" in replies[0].text  # answered at once, not after the 1 s timeout


async def test_dry_run_shows_the_set_and_the_diff_and_creates_nothing(commands: Commands,
                                                                      store: Store) -> None:
    replies = await commands.command(inv("create pr-4 --match live --set api=3.1.0 --dry-run"))
    text = replies[0].text
    assert replies[0].visibility is Visibility.EPHEMERAL
    assert "Dry run: nothing was created" in text and "*pr-4*" in text
    assert "Release set: api=3.1.0, web=6.0.0, worker=3.0.0" in text
    assert "api        3.1.0      3.0.0     ≠" in text
    assert "web        6.0.0      6.0.0\n" in text
    assert "1 of 3 components differs" in text
    assert await _count(store, Environment) == 0
    assert await _count(store, Job) == 0


async def test_diff_compares_with_what_the_reference_runs_now(commands: Commands,
                                                              live: Path) -> None:
    await commands.command(inv("create pr-5 --match live"))
    same = await commands.command(inv("diff pr-5"))
    assert "identical (3 components)" in same[0].text
    move(live, {"api": "3.0.1", "web": "6.0.0", "search": "1.0"})
    moved = await commands.command(inv("diff pr-5"))
    text = moved[0].text
    assert "*pr-5* against `live` as it runs now: 3 of 4 components differ" in text
    assert "api        3.0.0  3.0.1     ≠" in text
    assert "search     -      1.0       ≠" in text
    assert "worker     3.0.0  -         ≠" in text
    against = await commands.command(inv("diff pr-5 --against staging"))
    assert "against `staging`" in against[0].text and "5.1.0" in against[0].text


@pytest.mark.parametrize(("text", "fragment"), [
    ("diff nope", "no live environment named `nope`"),
    ("diff pr-6 --against prod", "no reference environment `prod`"),
    ("diff pr-6 --against broken", "exited with code 3"),
])
async def test_diff_refusals(commands: Commands, text: str, fragment: str) -> None:
    await commands.command(inv("create pr-6"))
    replies = await commands.command(inv(text))
    assert fragment in replies[0].text


async def test_diff_without_a_reference_asks_for_one(store: Store, live: Path) -> None:
    bp = blueprint(live).model_copy(update={"defaults": parse_blueprint({}).defaults})
    commands = Commands(store=store, blueprint=bp, clock=lambda: NOW,
                        releases=Resolver(bp.references))
    await commands.command(inv("create pr-7"))
    replies = await commands.command(inv("diff pr-7"))
    assert "made without a reference" in replies[0].text
    assert "--against ENV" in replies[0].text


async def test_status_shows_the_set_and_the_links(commands: Commands, store: Store) -> None:
    await commands.command(inv("create pr-8 --set api=2.8.0"))
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-8")
        assert env is not None
        env.outputs = {"code": {"links": {"api": "http://127.0.0.1:4001/",
                                          "web": "http://127.0.0.1:4002/"}}}
    replies = await commands.command(inv("status pr-8"))
    assert "releases: api=2.8.0, web=5.1.0" in replies[0].text
    assert "links: api http://127.0.0.1:4001/, web http://127.0.0.1:4002/" in replies[0].text


async def test_without_a_resolver_only_static_sets_are_read(store: Store, live: Path) -> None:
    commands = Commands(store=store, blueprint=blueprint(live), clock=lambda: NOW)
    refused = await commands.command(inv("create pr-9 --match live"))
    assert "reads its release set from a command source" in refused[0].text
    assert "Nothing was created" in refused[0].text
    made = await commands.command(inv("create pr-9 --match staging --set api=2.8.0"))
    assert "Release set: api=2.8.0, web=5.1.0" in made[0].text
