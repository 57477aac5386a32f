"""The `ephem` console script, run as a newcomer would run it: a subprocess, real servers."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import yaml

from bot.config import example_blueprint_path
from bot.pg import asyncpg_dsn

EPHEM = [sys.executable, "-m", "bot.cli"]


def run(args: list[str], env: dict[str, str], *, timeout: float = 180,
        command: list[str] = EPHEM) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("EPHEM_", "SLACK_"))}
    return subprocess.run([*command, *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def blueprint_file(tmp_path: Path, db_prefix: str) -> Path:
    """The example blueprint, with this test run's database prefix (so cleanup finds it)."""
    example = example_blueprint_path()
    raw = yaml.safe_load(example.read_text())
    data = raw["phases"]["data"]
    data["database_prefix"] = db_prefix
    # Relative paths resolve against the blueprint's directory: point at the example's files.
    data["migrations"]["locations"] = [str(example.parent / p)
                                       for p in data["migrations"]["locations"]]
    data["migrations"]["seed_locations"] = [str(example.parent / p)
                                            for p in data["migrations"]["seed_locations"]]
    for snap in data["snapshots"].values():
        snap["rules"] = str(example.parent / snap["rules"])
    raw["phases"]["code"]["local"]["workdir"] = str(example.parent)
    terraform = raw["phases"]["infra"]["terraform"]
    terraform["module"] = str(example.parent / terraform["module"])
    path = tmp_path / "ephem.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_on_an_existing_server(bot_db_url: str, pg_admin_url: str, db_prefix: str,
                                    blueprint_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = run(["demo"], {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint_file),
                          "EPHEM_STATE_DIR": str(state)})
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in out + done.stderr
    assert "all 12 column(s) that look personal have a rule" in out
    assert f"built {db_prefix}snap_shop_" in out
    assert re.search(r"\n  lint \d+\.\d\ds, source .* copy \d+\.\d\ds, constraints", out), out
    assert "--data snapshot" in out and "wrote and read 1 row(s)" in out
    # Production rows beside their masked copies: every value changed.
    pairs = [line.split("->") for line in out.splitlines() if line.startswith("  customer ")]
    assert len(pairs) >= 8
    assert all(before.split(None, 3)[3].strip() != after.strip() for before, after in pairs)
    assert "reset-data" in out and "is gone" in out
    # Each command's answer under its own heading, before the next command.
    status = out.split("=== /ephem status ", 1)[1].split("\n=== ", 1)[0]
    assert "is ready (owner @U_DEMO" in status, out
    # The code story: staging's set with one override, the diff, each component's answer.
    assert "Dry run: nothing was created" in out and "api        2.8.0-rc1  2.7.3" in out
    answers = [line for line in out.splitlines() if " -> {" in line]
    assert len(answers) == 2, out  # api and web are exposed; the worker is not
    assert '"component": "api", "version": "2.8.0-rc1", "table": "customers"' in out
    assert "component processes all stopped (api, web, worker)" in out
    assert not list(state.glob("local/*"))
    # The infra phase: a real apply with progress, its outputs in the thread, a real destroy.
    assert "running: applying" in out and "Resources: 10 added" in out
    assert "  | ingress_domain: demo-" in out and "admin_token:" in out
    assert "terraform workspace ephem-" in out and "is STILL THERE" not in out
    # Nothing left behind: no golden database, pool member or stand-in production.
    left = asyncio.run(_databases(pg_admin_url, db_prefix))
    assert not [d for d in left if "snap_" in d or "pool_" in d or "production" in d], left


async def _databases(url: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                prefix + "%")
    finally:
        await conn.close()
    return [r[0] for r in rows]


def test_demo_with_nothing_configured_starts_its_own_postgres(tmp_path: Path) -> None:
    """The README's first command: no EPHEM_DATABASE_URL, the packaged example blueprint."""
    done = run(["demo"], {"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "private PostgreSQL" in done.stdout
    assert "nothing left behind" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_demo_without_terraform_says_so_and_skips_the_infra_phase(
        bot_db_url: str, blueprint_file: Path) -> None:
    raw = yaml.safe_load(blueprint_file.read_text())
    data = raw["phases"]["data"]
    data.pop("snapshots"), data.pop("default_snapshot")  # no snapshot story: quicker
    raw["phases"]["infra"]["terraform"]["binary"] = "no-such-terraform"
    blueprint = blueprint_file.with_name("no-terraform.yaml")
    blueprint.write_text(yaml.safe_dump(raw))
    done = run(["demo"], {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint)})
    assert done.returncode == 0, done.stdout + done.stderr
    said = [line for line in done.stdout.splitlines() if line.startswith("terraform:")]
    assert said == ["terraform: skipped: no no-such-terraform binary on PATH, so the example "
                    "Terraform module is not applied"]
    status = [line for line in done.stdout.splitlines() if line.startswith("• infra:")]
    assert len(status) == 1 and "skipped" in status[0], done.stdout
    assert status[0].endswith("— skipped: no no-such-terraform binary on PATH, so the example "
                              "Terraform module is not applied")


def test_bad_blueprint_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "ephem.yaml"
    bad.write_text("defaults:\n  ttl: forever\nphases:\n  data:\n    server: mysql://x\n")
    done = run(["doctor"], {"EPHEM_CONFIG": str(bad)})
    assert done.returncode == 1
    assert str(bad) in done.stdout
    assert "defaults.ttl" in done.stdout and "phases.data.server" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_doctor_prints_one_line_per_check(bot_db_url: str, blueprint_file: Path) -> None:
    done = run(["doctor"], {"EPHEM_DATABASE_URL": bot_db_url, "EPHEM_CONFIG": str(blueprint_file)})
    lines = done.stdout.strip().splitlines()
    by_name = {line.split(":")[0].split(None, 1)[1]: line.split()[0] for line in lines}
    assert by_name["blueprint"] == "ok"
    assert by_name["state database"] == "ok"
    assert by_name["data server"] == "ok"
    assert by_name["slack"] == "FAIL"  # no token in this test
    assert done.returncode == 1


def test_serve_without_settings_says_what_is_missing() -> None:
    done = run(["serve"], {})
    assert done.returncode == 1
    assert "EPHEM_DATABASE_URL is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_db_upgrade_is_repeatable(bot_db_url: str) -> None:
    for _ in range(2):
        done = run(["db", "upgrade"], {"EPHEM_DATABASE_URL": bot_db_url})
        assert done.returncode == 0, done.stderr
        assert "newest migration" in done.stdout


def test_an_abandoned_connection_attempt_is_not_reported_as_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    # What asyncpg leaves when a connection still opening is cancelled: a future failing with
    # "unexpected connection_lost() call" that nobody awaits. Any other such future is still
    # reported as asyncio reports it.
    from bot.cli.main import _run

    async def abandon(exc: Exception) -> None:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        del future  # unretrieved: reported as it is collected

    with caplog.at_level(logging.DEBUG):
        _run(abandon(ConnectionError("unexpected connection_lost() call")))
        _run(abandon(ValueError("something else")))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "never retrieved" in errors[0].getMessage()
    assert "something else" in str(errors[0].exc_info[1] if errors[0].exc_info else "")
    assert any("abandoned while it was being opened" in r.getMessage()
               for r in caplog.records if r.levelno == logging.DEBUG)


def test_a_command_leaves_its_objects_to_the_exit_not_to_the_collector() -> None:
    # Whatever a command made is frozen when it returns (or fails), so the interpreter's
    # last collections do not walk it on the way out.
    code = ("import gc, sys\nfrom bot.cli.main import main\nbefore = gc.get_freeze_count()\n"
            "rc = main(sys.argv[1:])\nprint(rc, before, gc.get_freeze_count())")
    done = run(["serve"], {}, timeout=60, command=[sys.executable, "-c", code])
    rc, before, after = (int(x) for x in done.stdout.split())
    assert rc == 1 and "EPHEM_DATABASE_URL is not set" in done.stderr
    assert before == 0 and after > 10_000


def test_version() -> None:
    done = run(["--version"], {})
    assert done.returncode == 0
    assert re.fullmatch(r"ephem \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout


def test_demo_keep_on_the_private_server_refuses_instead_of_losing_the_environment(
    tmp_path: Path
) -> None:
    done = run(["demo", "--keep"], {"HOME": str(tmp_path)}, timeout=30)
    assert done.returncode == 2
    assert "`ephem demo --keep` needs EPHEM_DATABASE_URL" in done.stderr
    assert "deleted when the demo ends" in done.stderr
    assert "kept" not in done.stdout


def test_shell_on_the_private_server_destroys_what_it_made(tmp_path: Path) -> None:
    """Without EPHEM_DATABASE_URL, plainly: what is made here goes when the shell ends, and
    what it runs (the example's components) is destroyed, not left running."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEM_", "SLACK_"))}
    done = subprocess.run([*EPHEM, "shell"], input="create sh-kept --data none\n",
                          env={**base, "HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Nothing made here is kept." in done.stdout
    assert "leaving: destroying 1 live environment made here" in done.stderr
    assert "sh-kept was destroyed" in done.stdout, done.stdout
    state = tmp_path / ".local" / "state" / "ephem" / "local"
    running = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and str(state) in _cmdline(p)]
    assert running == [], "components left running after the shell ended"
    assert "WARNING" not in done.stdout + done.stderr


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
