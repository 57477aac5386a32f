"""The `ephem` console script: serve, shell, demo, db upgrade, doctor, audit, snapshot.

Every subcommand turns an expected failure (bad configuration, an unreachable server) into one
line on stderr and a non-zero exit; nothing here prints a traceback unless EPHEM_LOG_LEVEL=DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from bot.config import load_blueprint, load_settings
from bot.errors import ConfigError, EphemError

T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on a loop that does not report abandoned connection attempts."""
    async def run() -> T:
        asyncio.get_running_loop().set_exception_handler(_quiet_abandoned_connects)
        return await main

    return asyncio.run(run())


def _quiet_abandoned_connects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A database connection still being opened when its task is cancelled (the shell or the
    bot leaving) leaves asyncpg's handshake future failing with "unexpected connection_lost()
    call", which nobody awaits any more: asyncio would print it as an error with a traceback
    (asyncpg issues 1211 and 1310). Said at DEBUG instead; anything else as asyncio would."""
    exc = context.get("exception")
    if isinstance(exc, ConnectionError) and str(exc) == "unexpected connection_lost() call" \
            and "never retrieved" in str(context.get("message", "")):
        logging.getLogger(__name__).debug("a connection abandoned while it was being opened")
        return
    loop.default_exception_handler(context)


def _setup_logging(level: str) -> None:
    """Log to stderr: JSON lines when stderr is not a terminal, plain text when it is; every
    line scrubbed of every secret `bot.redaction` knows and tagged with the environment and job
    it is about (`bot.logs`)."""
    from bot.logs import setup

    setup(level)


def cmd_serve(args: argparse.Namespace) -> int:
    from bot.cli.serve import serve

    settings = load_settings()
    blueprint = load_blueprint(settings.config)
    _setup_logging(settings.log_level)
    _run(serve(settings, blueprint))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from bot.pg import redact
    from bot.store.migrate import upgrade

    settings = load_settings()
    if not settings.database_url:
        raise ConfigError("EPHEM_DATABASE_URL is not set: it names Ephem's own database.")
    upgrade(settings.database_url)
    print(f"schema of {redact(settings.database_url)} is at the newest migration")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from bot.cli.doctor import Check, run_checks

    settings = load_settings()
    try:
        blueprint = load_blueprint(settings.config)
    except ConfigError as exc:
        print(Check("blueprint", False, str(exc)).line())
        return 1
    if args.orphans or args.fix:
        from bot.cli.doctor import orphans

        return _run(orphans(settings, blueprint, fix=args.fix))
    source = str(settings.config or "the example blueprint")
    checks = _run(run_checks(settings, blueprint, source=source))
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from bot.cli.demo import run_demo

    settings = load_settings()
    _setup_logging(settings.log_level if settings.log_level != "INFO" else "WARNING")
    return _run(run_demo(settings, keep=args.keep))


def cmd_shell(args: argparse.Namespace) -> int:
    from bot.cli.shell import run_shell

    settings = load_settings()
    _setup_logging(settings.log_level if settings.log_level != "INFO" else "WARNING")
    return _run(run_shell(settings, user=args.user, channel=args.channel))


def cmd_snapshot(args: argparse.Namespace) -> int:
    from bot.cli import snapshot as snapshot_cli

    settings = load_settings()
    _setup_logging(settings.log_level if settings.log_level != "INFO" else "WARNING")
    blueprint = load_blueprint(settings.config)
    if args.snapshot_command == "build":
        return _run(snapshot_cli.build(settings, blueprint, args.name))
    if args.snapshot_command == "lint":
        return _run(snapshot_cli.lint_snapshot(settings, blueprint, args.name))
    return _run(snapshot_cli.show(settings, blueprint))


def cmd_audit(args: argparse.Namespace) -> int:
    from bot.cli.audit import audit

    settings = load_settings()
    return _run(audit(settings.database_url, env=args.env, since=args.since,
                      as_json=args.json))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ephem")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ephem", description="Ephemeral environments from Slack.")
    p.add_argument("--version", action="version", version=f"ephem {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the bot (HTTP, or Socket Mode when SLACK_APP_TOKEN is set)"
                   ).set_defaults(func=cmd_serve)
    shell = sub.add_parser("shell", help="the same commands in a terminal, no Slack")
    shell.add_argument("--user", default="U_SHELL", help="who you are (a Slack user id)")
    shell.add_argument("--channel", default="C_SHELL", help="the channel to pretend to be in")
    shell.set_defaults(func=cmd_shell)
    demo = sub.add_parser("demo", help="create and destroy one environment end to end")
    demo.add_argument("--keep", action="store_true", help="do not destroy the environment")
    demo.set_defaults(func=cmd_demo)
    db = sub.add_parser("db", help="Ephem's own database")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="migrate Ephem's own schema to the newest version"
                     ).set_defaults(func=cmd_db_upgrade)
    doctor = sub.add_parser("doctor", help="validate the configuration and check every "
                                           "connection")
    doctor.add_argument("--orphans", action="store_true",
                        help="list workspaces, namespaces, databases and roles with Ephem's "
                             "marks and no live environment")
    doctor.add_argument("--fix", action="store_true", help="with --orphans: destroy them")
    doctor.set_defaults(func=cmd_doctor)
    audit = sub.add_parser("audit", help="who did what to which environment (the audit "
                                         "table), oldest first")
    audit.add_argument("--env", metavar="NAME", help="only environments called NAME")
    audit.add_argument("--since", metavar="DURATION", help="only the last DURATION (7d, 12h)")
    audit.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    audit.set_defaults(func=cmd_audit)
    snap = sub.add_parser("snapshot", help="masked snapshots of production data")
    snapsub = snap.add_subparsers(dest="snapshot_command", required=True)
    for verb, text in (("build", "lint, build the golden database, fill the warm pool"),
                       ("lint", "only check that every column that looks personal has a rule")):
        one = snapsub.add_parser(verb, help=text)
        one.add_argument("name", nargs="?", help="snapshot name (default: the blueprint's)")
        one.set_defaults(func=cmd_snapshot)
    snapsub.add_parser("list", help="built snapshots").set_defaults(func=cmd_snapshot)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        # The process exits next. Its last garbage collections would walk every object the
        # command made (after a snapshot build: the leak sample, Faker's word lists; 0.1 s)
        # only for the OS to free them all; frozen, they are skipped.
        gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EphemError as exc:
        from bot.redaction import scrub

        print(f"ephem: {scrub(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.exception("unexpected error")
        from bot.redaction import scrub

        print(f"ephem: unexpected error: {type(exc).__name__}: {scrub(str(exc))}\n"
              "Run again with EPHEM_LOG_LEVEL=DEBUG for details.", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
