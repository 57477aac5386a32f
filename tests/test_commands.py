"""Command handlers against a real store: what each command persists and what it answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.config import parse_blueprint
from bot.domain import DataMode, EnvStatus, JobKind, JobStatus
from bot.ports import Invocation, Visibility
from bot.store import Store, repo
from bot.store.models import AuditEvent, Environment, Job
from handlers.commands import Commands

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
BLUEPRINT = parse_blueprint({
    "admins": ["UADMIN"],
    "defaults": {"ttl": "1d", "max_ttl": "3d", "reference": "staging"},
    "references": {"staging": {"releases": {"api": "2.7.3", "web": "5.1.0"}}},
    "components": {"api": {}, "web": {}},
    "phases": {"data": {}},
})


@pytest.fixture
def commands(store: Store) -> Commands:
    return Commands(store=store, blueprint=BLUEPRINT, clock=lambda: NOW)


def inv(text: str, user: str = "UANA") -> Invocation:
    return Invocation(user_id=user, channel_id="CENV", text=text)


async def _count(store: Store, model: type[object]) -> int:
    async with store.transaction() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_create_persists_environment_job_and_audit(commands: Commands,
                                                         store: Store) -> None:
    replies = await commands.command(inv("create pr-142 --set api=2.8.0-rc1 --ttl 2d"))
    assert len(replies) == 1 and replies[0].visibility is Visibility.THREAD
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-142")
        assert env is not None
        assert replies[0].env_id == env.id
        assert env.owner_id == "UANA" and env.channel_id == "CENV"
        assert env.status is EnvStatus.QUEUED
        assert env.release_set == {"api": "2.8.0-rc1", "web": "5.1.0"}
        assert env.reference == "staging"
        assert env.expires_at == NOW + timedelta(days=2)
        jobs = (await s.execute(select(Job))).scalars().all()
        assert [(j.env_id, j.kind, j.status) for j in jobs] == [
            (env.id, JobKind.CREATE, JobStatus.QUEUED)]
        audit = (await s.execute(select(AuditEvent))).scalars().one()
        assert (audit.actor, audit.action, audit.env_id) == ("UANA", "create", env.id)
    assert "api=2.8.0-rc1" in replies[0].text


async def test_create_without_a_name_generates_a_unique_one(commands: Commands,
                                                           store: Store) -> None:
    for _ in range(5):
        await commands.command(inv("create --match staging"))
    async with store.transaction() as s:
        names = await repo.live_names(s)
    assert len(names) == 5
    assert all(n[0].isalpha() and len(n) <= 40 for n in names)


@pytest.mark.parametrize(("text", "fragment"), [
    ("create --match prod", "no reference environment `prod`"),
    ("create --set db=1.0", "there is no component `db`"),
    ("create --ttl 4d", "longer than the 3d"),
    ("create --data snapshot", "has none configured"),
    ("create pr_1", "not a valid name"),
])
async def test_invalid_create_is_answered_and_persists_nothing(
    commands: Commands, store: Store, text: str, fragment: str
) -> None:
    replies = await commands.command(inv(text))
    assert len(replies) == 1 and replies[0].visibility is Visibility.EPHEMERAL
    assert fragment in replies[0].text
    assert await _count(store, Environment) == 0
    assert await _count(store, Job) == 0


async def test_duplicate_live_name_is_refused(commands: Commands) -> None:
    await commands.command(inv("create pr-1"))
    replies = await commands.command(inv("create pr-1", user="UBOB"))
    assert "already exists" in replies[0].text


async def test_destroy_is_refused_for_others_and_allowed_for_admins(
    commands: Commands, store: Store
) -> None:
    await commands.command(inv("create pr-1"))
    refused = await commands.command(inv("destroy pr-1", user="UBOB"))
    assert "belongs to <@UANA>" in refused[0].text
    allowed = await commands.command(inv("destroy pr-1", user="UADMIN"))
    assert allowed[0].visibility is Visibility.THREAD
    async with store.transaction() as s:
        kinds = [(j.kind, j.status) for j in (await s.execute(select(Job).order_by(Job.id)))
                 .scalars()]
    # The queued create was cancelled; the destroy is queued.
    assert kinds == [(JobKind.CREATE, JobStatus.CANCELLED), (JobKind.DESTROY, JobStatus.QUEUED)]
    again = await commands.command(inv("destroy pr-1"))
    assert "already being destroyed" in again[0].text


async def test_extend_adds_time_and_beyond_the_maximum_is_refused(commands: Commands,
                                                                   store: Store) -> None:
    await commands.command(inv("create pr-1"))  # expires NOW + 1d
    await commands.command(inv("extend pr-1 1d"))
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None and env.expires_at == NOW + timedelta(days=2)
    refused = await commands.command(inv("extend pr-1 5d"))
    assert refused[0].visibility is Visibility.EPHEMERAL
    assert refused[0].text == ("*pr-1* cannot be extended by 5d: environments live at most 3d "
                               "from now, so *pr-1* can gain at most 1d. Nothing was changed; "
                               "try `/ephem extend pr-1 1d`.")
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None and env.expires_at == NOW + timedelta(days=2)
    await commands.command(inv("extend pr-1 1d"))
    full = await commands.command(inv("extend pr-1 1m"))
    assert "cannot be extended any further" in full[0].text
    async with store.transaction() as s:
        actions = (await s.execute(select(AuditEvent.action).order_by(AuditEvent.id))
                   ).scalars().all()
    assert actions == ["create", "extend", "extend-refused", "extend", "extend-refused"]


async def test_retry_only_for_failed_and_repeats_the_last_job_kind(
    commands: Commands, store: Store
) -> None:
    await commands.command(inv("create pr-1"))
    not_failed = await commands.action(inv(""), action_id="retry", value="pr-1")
    assert "only a failed environment can be retried" in not_failed[0].text
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None
        job = (await s.execute(select(Job))).scalars().one()
        job.status = JobStatus.FAILED
        await repo.set_status(s, env, EnvStatus.CREATING)
        await repo.set_status(s, env, EnvStatus.FAILED)
    retried = await commands.action(inv(""), action_id="retry", value="pr-1")
    assert retried[0].visibility is Visibility.THREAD
    async with store.transaction() as s:
        jobs = (await s.execute(select(Job).order_by(Job.id))).scalars().all()
    assert [(j.kind, j.status) for j in jobs][-1] == (JobKind.CREATE, JobStatus.QUEUED)


async def test_retry_right_after_the_failure_is_shown_is_not_refused(
    commands: Commands, store: Store
) -> None:
    # The runner marks the environment failed (and the card says so) a moment before the
    # executor records its job's end: a click on Retry in between queues the retry.
    await commands.command(inv("create pr-1"))
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None
        job = (await s.execute(select(Job))).scalars().one()
        job.status = JobStatus.RUNNING  # its end not recorded yet
        await repo.set_status(s, env, EnvStatus.CREATING)
        await repo.set_status(s, env, EnvStatus.FAILED)
    retried = await commands.action(inv(""), action_id="retry", value="pr-1")
    assert retried[0].visibility is Visibility.THREAD, retried[0].text
    async with store.transaction() as s:
        jobs = (await s.execute(select(Job).order_by(Job.id))).scalars().all()
    assert [(j.kind, j.status) for j in jobs] == [(JobKind.CREATE, JobStatus.RUNNING),
                                                  (JobKind.CREATE, JobStatus.QUEUED)]
    # A retry queued behind it is work queued: a second click is refused.
    again = await commands.action(inv(""), action_id="retry", value="pr-1")
    assert "already has work queued" in again[0].text


async def test_list_and_status(commands: Commands, store: Store) -> None:
    empty = await commands.command(inv("list"))
    assert "No live environments" in empty[0].text
    await commands.command(inv("create pr-1"))
    await commands.command(inv("create pr-2", user="UBOB"))
    listed = await commands.command(inv("list --mine"))
    assert "pr-1" in listed[0].text and "pr-2" not in listed[0].text
    status = await commands.command(inv("status pr-2"))
    assert "*pr-2* is queued" in status[0].text and "data: pending" in status[0].text
    missing = await commands.command(inv("status nope"))
    assert "no live environment named `nope`" in missing[0].text
    assert "Did you mean" not in missing[0].text
    typo = await commands.command(inv("status pr1"))
    assert "no live environment named `pr1`. Did you mean `pr-1`?" in typo[0].text
    everyone = await commands.command(inv("list"))
    assert everyone[0].text.startswith("2 live environments:")
    await commands.command(inv("destroy pr-2", user="UBOB"))
    async with store.transaction() as s:
        gone = await repo.find_live_environment(s, "pr-2")
        assert gone is not None
        await repo.set_status(s, gone, EnvStatus.DESTROYING)
        await repo.set_status(s, gone, EnvStatus.DESTROYED)
    one = await commands.command(inv("list"))
    assert one[0].text.startswith("1 live environment:")


async def test_unknown_button_is_answered(commands: Commands) -> None:
    replies = await commands.action(inv(""), action_id="explode", value="x")
    assert "not one I know" in replies[0].text


async def test_reset_data_queues_a_data_only_job_for_ready_environments(
    commands: Commands, store: Store
) -> None:
    await commands.command(inv("create pr-1"))
    queued = await commands.command(inv("reset-data pr-1"))
    assert "only a ready environment" in queued[0].text
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None
        job = (await s.execute(select(Job))).scalars().one()
        job.status = JobStatus.SUCCEEDED
        await repo.set_status(s, env, EnvStatus.CREATING)
        await repo.set_status(s, env, EnvStatus.READY)
    other = await commands.command(inv("reset-data pr-1", user="UBOB"))
    assert other[0].text == "*pr-1* belongs to <@UANA>; only they or an admin can reset its data."
    done = await commands.command(inv("reset-data pr-1"))
    assert done[0].visibility is Visibility.THREAD
    async with store.transaction() as s:
        kinds = [j.kind for j in (await s.execute(select(Job).order_by(Job.id))).scalars()]
    assert kinds == [JobKind.CREATE, JobKind.RESET_DATA]


async def test_data_snapshot_resolves_the_default_and_rejects_unknown_names(store: Store) -> None:
    blueprint = parse_blueprint({"phases": {"data": {
        "snapshots": {"shop": {"source": "postgresql://ro@db/shop", "rules": "rules.yaml"}},
        "default_snapshot": "shop"}}})
    commands = Commands(store=store, blueprint=blueprint, clock=lambda: NOW)
    await commands.command(inv("create pr-s --data snapshot"))
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-s")
        assert env is not None and (env.data_mode, env.data_snapshot) == (
            DataMode.SNAPSHOT, "shop")
    unknown = await commands.command(inv("create pr-t --data snapshot:nightly"))
    assert "no snapshot `nightly`" in unknown[0].text and "`shop`" in unknown[0].text


async def test_a_huge_extension_is_refused_instead_of_overflowing(commands: Commands,
                                                                  store: Store) -> None:
    await commands.command(inv("create pr-1"))
    refused = await commands.command(inv("extend pr-1 500000w"))
    assert "cannot be extended by 3500000d" in refused[0].text
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None and env.expires_at == NOW + timedelta(days=1)


@pytest.mark.parametrize("value", ["pr-1\x00", "", "<!channel>", "x" * 300, "\ud800"])
async def test_a_button_value_that_is_no_name_gets_a_clear_answer(
    commands: Commands, value: str
) -> None:
    for action_id in ("extend", "destroy", "retry"):
        [reply] = await commands.action(inv(""), action_id=action_id, value=value)
        assert "name" in reply.text and "<!channel>" not in reply.text


async def test_a_reason_is_echoed_escaped(commands: Commands) -> None:
    [reply] = await commands.command(inv('create pr-1 --reason "<!channel> look <https://x|y>"'))
    assert "<!channel>" not in reply.text and "<https://x|y>" not in reply.text
    assert "reason: &lt;!channel&gt; look &lt;https://x|y&gt;" in reply.text
@pytest.mark.parametrize(("status", "said"), [
    (EnvStatus.FAILED, "*pr-1* has failed; only a ready environment's data can be reset."),
    (EnvStatus.CREATING, "*pr-1* is being created; only a ready environment's data can be reset."),
])
async def test_a_status_is_said_as_a_sentence(commands: Commands, store: Store,
                                              status: EnvStatus, said: str) -> None:
    await commands.command(inv("create pr-1"))
    async with store.transaction() as s:
        env = await repo.find_live_environment(s, "pr-1")
        assert env is not None
        await repo.set_status(s, env, EnvStatus.CREATING)
        if status is EnvStatus.FAILED:
            await repo.set_status(s, env, EnvStatus.FAILED)
    replies = await commands.command(inv("reset-data pr-1"))
    assert replies[0].text == said
    shown = await commands.command(inv("status pr-1"))
    assert shown[0].text.startswith(said.split(";", maxsplit=1)[0] + " (owner")
