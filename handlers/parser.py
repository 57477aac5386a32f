"""The `/ephem` grammar: text in, one of three results out — run a command, reply with text, or
ignore. No I/O, no blueprint: validation against the blueprint happens in `handlers.commands`.

Why pure: the grammar is the most-tested surface of the bot (a table of inputs and results), and
it must never raise on anything a person can type.
"""

from __future__ import annotations

import difflib
import html
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from bot.domain import (
    DataMode,
    DataRequest,
    EnvRequest,
    parse_duration,
    quoted,
    validate_name,
)
from bot.errors import UserError

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Create:
    request: EnvRequest
    dry_run: bool = False  # show the resolved release set and its diff; create nothing


@dataclass(frozen=True)
class ListEnvs:
    mine: bool = False


@dataclass(frozen=True)
class Status:
    name: str


@dataclass(frozen=True)
class Destroy:
    name: str


@dataclass(frozen=True)
class ResetData:
    name: str
    data: DataRequest | None = None  # None: the data the environment has now
    reason: str | None = None  # why (needed when the data needs an approval)


@dataclass(frozen=True)
class Approve:
    """Approve approval request `request` (its number, as the card and `pending` show it)."""

    request: int


@dataclass(frozen=True)
class Deny:
    request: int
    reason: str | None = None


@dataclass(frozen=True)
class Pending:
    """What waits for the caller's decision, and the caller's own requests still waiting."""


@dataclass(frozen=True)
class Creds:
    """Show the environment's credentials again (to its owner only)."""

    name: str


@dataclass(frozen=True)
class Log:
    """The environment's history: who asked what, and how its jobs ended."""

    name: str


@dataclass(frozen=True)
class Extend:
    name: str
    by: timedelta | None = None


@dataclass(frozen=True)
class Help:
    topic: str | None = None


@dataclass(frozen=True)
class Diff:
    """The environment's release set beside what a reference runs now (its own by default)."""

    name: str
    against: str | None = None


Command = (Create | ListEnvs | Status | Destroy | Extend | ResetData | Creds | Help | Diff
           | Log | Approve | Deny | Pending)


@dataclass(frozen=True)
class Run:
    command: Command


@dataclass(frozen=True)
class Say:
    """Reply with this text (a usage message naming what was wrong)."""

    text: str


@dataclass(frozen=True)
class Ignore:
    """Nothing to do (e.g. a mention with no text after it)."""

    why: str = field(default="")


Parsed = Run | Say | Ignore

# --------------------------------------------------------------------------- usage

CREATE_USAGE = (
    "/ephem create [NAME] [--match ENV] [--set COMPONENT=VERSION]… [--ttl DURATION] "
    "[--data none|seed|snapshot[:NAME]] [--reason TEXT] [--dry-run]"
)
USAGE = {
    "create": CREATE_USAGE,
    "list": "/ephem list [--mine]",
    "status": "/ephem status NAME",
    "diff": "/ephem diff NAME [--against ENV]",
    "destroy": "/ephem destroy NAME",
    "extend": "/ephem extend NAME [DURATION]",
    "reset-data": "/ephem reset-data NAME [--data none|seed|snapshot[:NAME]] [--reason TEXT]",
    "creds": "/ephem creds NAME",
    "log": "/ephem log NAME",
    "approve": "/ephem approve ID",
    "deny": "/ephem deny ID [REASON]",
    "pending": "/ephem pending",
    "help": "/ephem help [COMMAND]",
}
VERBS = tuple(USAGE)


# Said under the usage line of a command with options.
NOTES = {
    "create": "Each option is given once, except `--set` (which may repeat). "
              "`--data snapshot` needs `--reason` when approvers are configured.",
    "reset-data": "Without `--data` the database is made again as it was. Snapshot data "
                  "needs an approval (and `--reason`) unless you were approved for that "
                  "snapshot on this environment already.",
    "approve": "ID is the request's number, on its card and in `/ephem pending`.",
    "deny": "The reason is said in the requester's thread.",
}


def usage(verb: str | None = None) -> str:
    if verb in USAGE:
        note = f"\n{NOTES[verb]}" if verb in NOTES else ""
        return f"Usage: `{USAGE[verb]}`{note}"
    lines = "\n".join(f"• `{u}`" for u in USAGE.values())
    return f"Ephem makes throw-away copies of your system. Commands:\n{lines}"


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """` Did you mean `x`?` for the closest of `known` to `word`, or "" when none is close."""
    close = difflib.get_close_matches(word.lower(), list(known), n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def _wrong(verb: str, what: str) -> Say:
    return Say(f"{what}\n{usage(verb)}")


# --------------------------------------------------------------------------- parsing

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
_MENTION = re.compile(r"^\s*<@[A-Z0-9]+(\|[^>]*)?>\s*")
_COMPONENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]{0,127}")  # a tag, a digest, or both
_CREATE_OPTS = ("--match", "--set", "--ttl", "--data", "--reason", "--dry-run")
_SURROGATE = re.compile("[\ud800-\udfff]")


def normalize(text: str) -> str:
    """Undo what Slack does to typed text: HTML escapes, smart quotes, a leading mention."""
    text = html.unescape(text).translate(_QUOTES)
    return _MENTION.sub("", text).strip()


def parse(text: str) -> Parsed:
    """Parse the text after `/ephem`. Never raises."""
    if "\x00" in text or _SURROGATE.search(text):
        return Say("I could not read that: it contains a character that is not text "
                   f"(a NUL byte or half of a UTF-16 pair).\n{usage()}")
    text = normalize(text)
    if not text:
        return Run(Help())
    try:
        tokens = shlex.split(text)
    except ValueError:
        return Say("I could not read that: a quote is not closed (or the text ends with `\\`)."
                   f"\n{usage()}")
    if not tokens:
        return Run(Help())
    verb, args = tokens[0].lower(), tokens[1:]
    if verb in ("help", "-h", "--help"):
        topic = args[0].lower() if args else None
        return Run(Help(topic if topic in USAGE else None))
    if verb not in VERBS:
        return Say(f"{quoted(tokens[0])} is not a command I know.{did_you_mean(verb, VERBS)}\n"
                   f"{usage()}")
    if "--help" in args or "-h" in args:
        return Say(usage(verb))
    try:
        if verb == "create":
            return _create(args)
        if verb == "list":
            return _list(args)
        if verb == "extend":
            return _extend(args)
        if verb == "diff":
            return _diff(args)
        if verb == "reset-data":
            return _reset_data(args)
        if verb in ("approve", "deny"):
            return _decision(verb, args)
        if verb == "pending":
            if args:
                raise UserError(f"`pending` takes nothing; {quoted(args[0])} is extra.")
            return Run(Pending())
        return _named(verb, args)
    except UserError as exc:
        return _wrong(verb, str(exc))


def _single_name(verb: str, args: list[str]) -> str:
    if not args:
        raise UserError(f"`{verb}` needs the name of an environment.")
    if args[0].startswith("-"):
        raise UserError(f"`{verb}` takes no option {quoted(args[0])}.")
    return validate_name(args[0].lower())


def _named(verb: str, args: list[str]) -> Parsed:
    name = _single_name(verb, args)
    if len(args) > 1:
        raise UserError(f"`{verb}` takes one name; I do not know what to do with "
                        f"{quoted(args[1])}.")
    if verb == "status":
        return Run(Status(name))
    if verb == "creds":
        return Run(Creds(name))
    if verb == "log":
        return Run(Log(name))
    return Run(Destroy(name))


_REQUEST_ID = re.compile(r"#?([0-9]{1,12})", re.ASCII)


def request_id(text: str) -> int:
    """`12` or `#12` → 12; UserError otherwise."""
    found = _REQUEST_ID.fullmatch(text.strip())
    if found is None:
        raise UserError(f"{quoted(text)} is not a request number (like `12`); "
                        "`/ephem pending` lists them.")
    return int(found.group(1))


def _decision(verb: str, args: list[str]) -> Parsed:
    if not args:
        raise UserError(f"`{verb}` needs the number of an approval request.")
    number = request_id(args[0])
    if verb == "approve":
        if len(args) > 1:
            raise UserError(f"`approve` takes one request number; {quoted(args[1])} is extra.")
        return Run(Approve(number))
    reason = " ".join(args[1:]).strip() or None
    if reason is not None and len(reason) > 500:
        raise UserError("The reason is longer than 500 characters.")
    return Run(Deny(number, reason))


def _reset_data(args: list[str]) -> Parsed:
    name = _single_name("reset-data", args)
    rest = args[1:]
    data: DataRequest | None = None
    reason: str | None = None
    given: set[str] = set()
    while rest:
        token = rest.pop(0)
        opt = token.partition("=")[0].lower()
        if opt not in ("--data", "--reason"):
            raise UserError(f"`reset-data` takes a name, `--data` and `--reason`; "
                            f"{quoted(token)} is extra.")
        if opt in given:
            raise UserError(f"`{opt}` is given twice.")
        given.add(opt)
        if opt == "--reason":
            reason = _reason(token, rest, ("--data",))
            continue
        _, value = _split_option(token, rest)
        if not value:
            raise UserError("`--data` needs a value.")
        data = _data(value)
    return Run(ResetData(name, data, reason))


def _reason(token: str, rest: list[str], options: tuple[str, ...]) -> str:
    """The words of `--reason` up to the next option (consumed from `rest`)."""
    words = [token.partition("=")[2]] if "=" in token else []
    while rest and rest[0].lower().partition("=")[0] not in options:
        words.append(rest.pop(0))
    reason = " ".join(w for w in words if w).strip()
    if not reason:
        raise UserError("`--reason` needs some text.")
    if len(reason) > 500:
        raise UserError("`--reason` is longer than 500 characters.")
    return reason


def _list(args: list[str]) -> Parsed:
    if not args:
        return Run(ListEnvs())
    if args == ["--mine"]:
        return Run(ListEnvs(mine=True))
    raise UserError(f"`list` does not take {quoted(' '.join(args))}.")


def _extend(args: list[str]) -> Parsed:
    name = _single_name("extend", args)
    if len(args) > 2:
        raise UserError(f"`extend` takes a name and a duration; {quoted(args[2])} is extra.")
    by = parse_duration(args[1]) if len(args) == 2 else None
    return Run(Extend(name, by))


def _diff(args: list[str]) -> Parsed:
    name = _single_name("diff", args)
    rest = args[1:]
    against: str | None = None
    while rest:
        token = rest.pop(0)
        opt = token.partition("=")[0].lower()
        if opt != "--against":
            raise UserError(f"`diff` takes a name and `--against ENV`; `{token}` is extra.")
        if against is not None:
            raise UserError("`--against` is given twice.")
        _, value = _split_option(token, rest)
        if not value:
            raise UserError("`--against` needs the name of a reference environment.")
        against = validate_name(value.lower())
    return Run(Diff(name, against))


def _split_option(token: str, rest: list[str]) -> tuple[str, str | None]:
    """`--ttl=2d` or `--ttl 2d` → ("--ttl", "2d"), consuming from `rest` as needed."""
    if "=" in token:
        opt, _, value = token.partition("=")
        return opt, value
    if rest and not rest[0].startswith("--"):
        return token, rest.pop(0)
    return token, None


def _create(args: list[str]) -> Parsed:
    rest = list(args)
    name: str | None = None
    if rest and not rest[0].startswith("-"):
        name = validate_name(rest.pop(0).lower())
    match: str | None = None
    overrides: dict[str, str] = {}
    ttl: timedelta | None = None
    data: DataRequest | None = None
    reason: str | None = None
    given: set[str] = set()
    dry_run = False
    while rest:
        token = rest.pop(0)
        if token.startswith("-") and not token.startswith("--"):
            raise UserError(f"`create` has no option {quoted(token)}.")
        if not token.startswith("--"):
            raise UserError(
                f"I did not expect {quoted(token)} here"
                + (" — the name goes right after `create`." if name is None else ".")
            )
        opt = token.partition("=")[0].lower()
        if opt not in _CREATE_OPTS:
            raise UserError(f"`create` has no option {quoted(opt)}."
                            f"{did_you_mean(opt, _CREATE_OPTS)}")
        if opt in given and opt != "--set":
            raise UserError(f"`{opt}` is given twice.")
        given.add(opt)
        if opt == "--reason":
            reason = _reason(token, rest, _CREATE_OPTS)
            continue
        if opt == "--dry-run":
            if "=" in token:
                raise UserError("`--dry-run` takes no value.")
            dry_run = True
            continue
        _, value = _split_option(token, rest)
        if value is None or not value:
            raise UserError(f"`{opt}` needs a value.")
        if opt == "--match":
            match = validate_name(value.lower())
        elif opt == "--set":
            _add_overrides(value, overrides)
        elif opt == "--ttl":
            ttl = parse_duration(value)
        else:  # --data
            data = _data(value)
    return Run(Create(EnvRequest(name=name, match=match, overrides=overrides, ttl=ttl,
                                 data=data, reason=reason), dry_run=dry_run))


def _add_overrides(value: str, overrides: dict[str, str]) -> None:
    """`api=2.8.0-rc1[,web=5.2.0]` into `overrides`."""
    for pair in value.split(","):
        component, sep, version = pair.partition("=")
        component = component.strip().lower()
        version = version.strip()
        if sep and _COMPONENT.fullmatch(component) and not version:
            raise UserError(f"{quoted('--set ' + pair)} is not COMPONENT=VERSION: the version "
                            f"is empty (like `--set {component}=2.8.0-rc1`).")
        if not sep or not _COMPONENT.fullmatch(component) or not _VERSION.fullmatch(version):
            raise UserError(
                f"{quoted('--set ' + pair)} is not COMPONENT=VERSION "
                "(like `--set api=2.8.0-rc1`)."
            )
        if component in overrides and overrides[component] != version:
            raise UserError(f"{quoted(component)} is set twice, to two versions.")
        overrides[component] = version


def _data(value: str) -> DataRequest:
    mode_text, sep, snapshot = value.lower().partition(":")
    try:
        mode = DataMode(mode_text)
    except ValueError:
        raise UserError(f"{quoted('--data ' + value)}: use `none`, `seed` or "
                        "`snapshot[:NAME]`.") from None
    if sep and mode is not DataMode.SNAPSHOT:
        raise UserError(f"{quoted('--data ' + value)}: only `snapshot` takes a name.")
    if sep:
        validate_name(snapshot)
    return DataRequest(mode, snapshot or None)
