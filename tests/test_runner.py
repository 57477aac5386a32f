"""The pipeline runner against the real state store: order, persistence after every attempt,
retries, timeouts, resume, secrets, and the events the notifier receives."""

from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy import select, text

from bot.domain import EnvStatus, JobKind, PhaseAction, PhaseName, PhaseStatus
from bot.errors import PermanentError, TemporaryError
from bot.ports import OutcomeKind, RecordedEvents
from bot.store import Store, repo
from bot.store.models import PhaseRun
from pipelines.base import Phase, PhaseContext
from pipelines.runner import Runner
from tests.phases import HangingPhase, ScriptedPhase, blueprint, make_env, new_job

INFRA, CODE, DATA = PhaseName.INFRA, PhaseName.CODE, PhaseName.DATA


def _runner(store: Store, phases: list[Phase], events: RecordedEvents, *, attempts: int = 3,
            timeout: float = 5.0) -> Runner:
    return Runner(store=store, phases={p.name: p for p in phases},
                  blueprint=blueprint(attempts=attempts, timeout=timeout), events=events,
                  secret_key=b"k")


async def _runs(store: Store, env_id: int) -> list[tuple[str, str, int, str, str | None]]:
    """(phase, action, attempt, status, error) of every run, in the order they were made."""
    async with store.transaction() as s:
        rows = (await s.execute(select(PhaseRun).where(PhaseRun.env_id == env_id)
                                .order_by(PhaseRun.id))).scalars().all()
    return [(str(r.phase), str(r.action), r.attempt, str(r.status), r.error) for r in rows]


async def _env(store: Store, env_id: int) -> tuple[EnvStatus, str | None, dict[str, object]]:
    async with store.transaction() as s:
        env = await repo.get_environment(s, env_id)
        return env.status, env.last_error, dict(env.outputs)


async def test_create_runs_phases_in_order_and_persists_each_outcome(store: Store) -> None:
    env_id = await make_env(store, "pr-1")
    calls: list[str] = []
    seen_in_db: list[tuple[str, str]] = []

    async def probe(ctx: PhaseContext) -> None:
        # The running row is committed before the work, and emit() persists its detail.
        await ctx.emit("halfway")
        async with store.transaction() as s:
            run = (await repo.latest_phase_runs(s, ctx.env_id))[CODE]
        seen_in_db.append((str(run.status), run.detail))

    infra = ScriptedPhase(INFRA, calls, outputs={"cluster": "k1"})
    code = ScriptedPhase(CODE, calls, hook=probe)
    data = ScriptedPhase(DATA, calls, links={"app": "https://pr-1.example"})
    events = RecordedEvents()

    outcome = await _runner(store, [data, code, infra], events)(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["infra.apply", "data.apply", "code.apply"]
    assert seen_in_db == [("running", "halfway")]
    assert data.seen[0].outputs[INFRA] == {"cluster": "k1"}  # earlier phases' outputs
    assert code.seen[0].outputs[DATA] == {"id": "data-1"}
    assert await _runs(store, env_id) == [
        ("infra", "apply", 1, "succeeded", None),
        ("data", "apply", 1, "succeeded", None),
        ("code", "apply", 1, "succeeded", None),
    ]
    status, last_error, outputs = await _env(store, env_id)
    assert (status, last_error) == (EnvStatus.READY, None)
    assert outputs == {"infra": {"cluster": "k1"}, "code": {"id": "code-1"},
                       "data": {"id": "data-1"}}
    async with store.transaction() as s:
        runs = await repo.latest_phase_runs(s, env_id)
    assert runs[INFRA].outputs == {"cluster": "k1"} and runs[INFRA].finished_at is not None

    seen = [(e.phase, e.status, e.milestone) for e in events.progress_events]
    assert (INFRA, PhaseStatus.RUNNING, False) in seen
    assert (CODE, PhaseStatus.SUCCEEDED, False) in seen
    assert (DATA, PhaseStatus.SUCCEEDED, True) in seen  # the links milestone
    assert any(e.detail == "infra for pr-1" for e in events.progress_events)  # describe()
    assert any(e.phase is CODE and e.detail.startswith("code done (in ")
               for e in events.progress_events)
    last = events.progress_events[-1]
    assert (last.phase, last.status, last.milestone) == (None, PhaseStatus.SUCCEEDED, True)


async def test_a_phase_the_blueprint_does_not_configure_is_skipped(store: Store) -> None:
    env_id = await make_env(store, "pr-2")
    calls: list[str] = []
    events = RecordedEvents()
    runner = _runner(store, [ScriptedPhase(INFRA, calls), ScriptedPhase(DATA, calls)], events)

    outcome = await runner(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["infra.apply", "data.apply"]
    assert [r[:4] for r in await _runs(store, env_id)] == [
        ("infra", "apply", 1, "succeeded"),
        ("data", "apply", 1, "succeeded"),
        ("code", "apply", 1, "skipped"),
    ]
    assert any(e.phase is CODE and e.status is PhaseStatus.SKIPPED
               for e in events.progress_events)


async def test_temporary_errors_are_retried_then_succeed(store: Store) -> None:
    env_id = await make_env(store, "pr-3")
    calls: list[str] = []
    flaky = ScriptedPhase(DATA, calls, errors=[TemporaryError("server busy", delay=0.01),
                                               TemporaryError("server busy", delay=0.01)])
    events = RecordedEvents()

    outcome = await _runner(store, [flaky], events, attempts=3)(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["data.apply"] * 3
    assert [r for r in await _runs(store, env_id) if r[0] == "data"] == [
        ("data", "apply", 1, "failed", "server busy"),
        ("data", "apply", 2, "failed", "server busy"),
        ("data", "apply", 3, "succeeded", None),
    ]
    assert any("retrying in" in e.detail and "attempt 2 of 3" in e.detail
               for e in events.progress_events)
    assert (await _env(store, env_id))[0] is EnvStatus.READY


async def test_temporary_errors_fail_once_attempts_run_out(store: Store) -> None:
    env_id = await make_env(store, "pr-3b")
    flaky = ScriptedPhase(DATA, [], errors=[TemporaryError("server busy", delay=0.01)] * 2)

    outcome = await _runner(store, [flaky], RecordedEvents(), attempts=2)(
        await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.FAILED
    assert (await _env(store, env_id))[:2] == (EnvStatus.FAILED, "data apply failed: server busy")


async def test_permanent_error_fails_the_environment_and_stops(store: Store) -> None:
    env_id = await make_env(store, "pr-4")
    calls: list[str] = []
    events = RecordedEvents()
    phases: list[Phase] = [
        ScriptedPhase(INFRA, calls),
        ScriptedPhase(DATA, calls, errors=[PermanentError("migration V3 failed")]),
        ScriptedPhase(CODE, calls),
    ]

    outcome = await _runner(store, phases, events)(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "data apply failed: migration V3 failed"
    assert calls == ["infra.apply", "data.apply"]  # not retried, code never started
    status, last_error, _ = await _env(store, env_id)
    assert (status, last_error) == (EnvStatus.FAILED, "data apply failed: migration V3 failed")
    assert [r[3] for r in await _runs(store, env_id)] == ["succeeded", "failed"]
    assert any(e.phase is DATA and e.status is PhaseStatus.FAILED
               and e.detail == "migration V3 failed" for e in events.progress_events)
    last = events.progress_events[-1]
    assert (last.phase, last.status, last.milestone) == (None, PhaseStatus.FAILED, True)
    assert last.detail == last_error


async def test_retry_resumes_at_the_failed_phase(store: Store) -> None:
    env_id = await make_env(store, "pr-5")
    calls: list[str] = []
    phases: list[Phase] = [
        ScriptedPhase(INFRA, calls),
        ScriptedPhase(DATA, calls, errors=[PermanentError("migration V3 failed")]),
        ScriptedPhase(CODE, calls),
    ]
    runner = _runner(store, phases, RecordedEvents())
    assert (await runner(await new_job(store, env_id))).kind is OutcomeKind.FAILED
    calls.clear()
    # A run a dead process left `running` is closed as abandoned when the next job starts.
    first_job = (await _job_ids(store, env_id))[0]
    async with store.transaction() as s:
        await repo.start_phase_run(s, env_id=env_id, job_id=first_job, phase=CODE,
                                   action=PhaseAction.APPLY)

    outcome = await runner(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["data.apply", "code.apply"]  # infra succeeded before: not run again
    assert [r[:4] for r in await _runs(store, env_id)] == [
        ("infra", "apply", 1, "succeeded"),
        ("data", "apply", 1, "failed"),
        ("code", "apply", 1, "abandoned"),
        ("data", "apply", 2, "succeeded"),
        ("code", "apply", 2, "succeeded"),
    ]
    assert (await _env(store, env_id))[:2] == (EnvStatus.READY, None)


async def test_destroy_runs_in_reverse_and_twice_is_fine(store: Store) -> None:
    env_id = await make_env(store, "pr-6")
    calls: list[str] = []
    runner = _runner(store, [ScriptedPhase(n, calls) for n in (INFRA, CODE, DATA)],
                     RecordedEvents())
    assert (await runner(await new_job(store, env_id))).kind is OutcomeKind.SUCCEEDED
    calls.clear()

    outcome = await runner(await new_job(store, env_id, JobKind.DESTROY))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["code.destroy", "data.destroy", "infra.destroy"]
    status, _, outputs = await _env(store, env_id)
    assert (status, outputs) == (EnvStatus.DESTROYED, {})

    again = await runner(await new_job(store, env_id, JobKind.DESTROY))
    assert again.kind is OutcomeKind.SUCCEEDED
    assert calls == ["code.destroy", "data.destroy", "infra.destroy"]
    assert (await _env(store, env_id))[0] is EnvStatus.DESTROYED


async def test_destroy_after_a_failed_destroy_resumes_at_the_failed_phase(store: Store) -> None:
    env_id = await make_env(store, "pr-6b")
    calls: list[str] = []
    data = ScriptedPhase(DATA, calls)
    runner = _runner(store, [ScriptedPhase(INFRA, calls), ScriptedPhase(CODE, calls), data],
                     RecordedEvents())
    await runner(await new_job(store, env_id))
    calls.clear()
    data.errors.append(PermanentError("database in use"))
    failed = await runner(await new_job(store, env_id, JobKind.DESTROY))
    assert failed.error == "data destroy failed: database in use"
    assert calls == ["code.destroy", "data.destroy"]
    calls.clear()

    outcome = await runner(await new_job(store, env_id, JobKind.DESTROY))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["data.destroy", "infra.destroy"]


async def test_secrets_reach_the_owner_and_no_database_row(store: Store) -> None:
    env_id = await make_env(store, "pr-7")
    secret = f"pw-{uuid.uuid4().hex}"
    events = RecordedEvents()
    phase = ScriptedPhase(DATA, [], outputs={"user": "app"},
                          secrets={"database_url": f"postgresql://app:{secret}@db/app"})

    outcome = await _runner(store, [phase], events)(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert events.credentials == [(env_id, DATA)]  # which phase, never the secret
    assert not any(secret in e.detail for e in events.progress_events)
    async with store.transaction() as s:
        for table in ("phase_runs", "environments", "audit_events", "jobs"):
            dump = await s.scalar(text(f"SELECT coalesce(string_agg(t::text, ' '), '') "
                                       f"FROM {table} t"))
            assert dump is not None and secret not in dump, table
        audited = await s.scalar(text("SELECT count(*) FROM audit_events"))
    assert audited  # the check above looked at real rows


async def test_a_phase_that_runs_too_long_times_out(store: Store) -> None:
    env_id = await make_env(store, "pr-8")
    calls: list[str] = []

    outcome = await _runner(store, [HangingPhase(DATA, calls)], RecordedEvents(), timeout=0.2)(
        await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.FAILED
    assert calls == ["data.apply"]  # a timeout is not retried
    assert (await _env(store, env_id))[:2] == (
        EnvStatus.FAILED, "data apply failed: timed out after 0.2s")
    assert [r[3:] for r in await _runs(store, env_id) if r[0] == "data"] == [
        ("failed", "timed out after 0.2s")]


async def test_an_unexpected_error_is_logged_with_an_id_and_shown_without_details(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    env_id = await make_env(store, "pr-9")
    phase = ScriptedPhase(INFRA, [], errors=[RuntimeError("internal detail 0xdeadbeef")])

    with caplog.at_level(logging.ERROR, logger="pipelines"):
        outcome = await _runner(store, [phase], RecordedEvents())(await new_job(store, env_id))

    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None and "0xdeadbeef" not in outcome.error
    prefix = "infra apply failed: unexpected error (id "
    assert outcome.error.startswith(prefix)
    error_id = outcome.error.removeprefix(prefix).rstrip(")")
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the trace is in the log, with the id


async def _job_ids(store: Store, env_id: int) -> list[int]:
    async with store.transaction() as s:
        rows = await s.execute(text("SELECT id FROM jobs WHERE env_id = :e ORDER BY id"),
                               {"e": env_id})
        return list(rows.scalars())


async def test_reset_data_reapplies_only_the_data_phase_with_reset_set(store: Store) -> None:
    env_id = await make_env(store, "pr-r")
    calls: list[str] = []
    phases: list[Phase] = [ScriptedPhase(p, calls) for p in (INFRA, CODE, DATA)]
    runner = _runner(store, phases, RecordedEvents())
    assert (await runner(await new_job(store, env_id))).kind is OutcomeKind.SUCCEEDED
    calls.clear()

    outcome = await runner(await new_job(store, env_id, kind=JobKind.RESET_DATA))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert calls == ["data.apply"]  # done phases are redone, but only the data phase
    data = phases[2]
    assert isinstance(data, ScriptedPhase)
    assert [ctx.reset_data for ctx in data.seen] == [False, True]
    assert (await _env(store, env_id))[0] is EnvStatus.READY


async def test_a_failure_with_details_posts_them_in_the_thread(store: Store) -> None:
    env_id = await make_env(store, "pr-d")
    calls: list[str] = []
    tail = "step 1 ok\nstep 2: relation \"x\" does not exist"
    data = ScriptedPhase(DATA, calls, errors=[PermanentError("migrate exited 1", details=tail)])
    events = RecordedEvents()
    outcome = await _runner(store, [data], events)(await new_job(store, env_id))
    assert outcome.kind is OutcomeKind.FAILED
    posted = [e.detail for e in events.progress_events if e.milestone]
    assert sum(tail in p for p in posted) == 1  # the output tail, once, in the thread
    assert any("migrate exited 1" in p for p in posted)
    assert (await _env(store, env_id))[1] == "data apply failed: migrate exited 1"
