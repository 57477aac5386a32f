"""Log lines an operator can search: which environment and job each line is about, and JSON when
a machine reads them.

Why a module of its own: the executor, the runner and the command handler each know a part of
"what is this line about" — the job, the environment's id, its name — but the line is written
deep below them (a phase, a tool, the store). Each sets what it knows in a context variable
(`bind`), asyncio copies those into every task started underneath, and `ContextFilter` copies
them onto every record, whichever library's logger wrote it. `JsonFormatter` writes one JSON
object a line (when stderr is not a terminal: a log collector reads it); `PlainFormatter` the
same fields as text (a person at a terminal reads it).

Secrets: `bot.redaction.ScrubFilter` stays on the handler, before either formatter, and the JSON
formatter scrubs every extra field it writes too. Fields are only ever ids, names, verbs and
outcomes.

Neighbours: `bot.cli.main` installs the handler; `bot.executor.worker` binds the job,
`pipelines.runner` the environment's name, `handlers.commands` the environment a command names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from bot.redaction import ScrubFilter, scrub

ENV_ID: ContextVar[int | None] = ContextVar("ephem_env_id", default=None)
ENV_NAME: ContextVar[str | None] = ContextVar("ephem_env", default=None)
JOB_ID: ContextVar[int | None] = ContextVar("ephem_job_id", default=None)

_CONTEXT: dict[str, ContextVar[Any]] = {"env_id": ENV_ID, "env": ENV_NAME, "job_id": JOB_ID}
# Fields a log call may pass in `extra=` that the formatters write (anything else is ignored,
# so a record never carries an object nobody meant to log).
EXTRA_FIELDS = ("event", "user", "verb", "source", "outcome", "kind", "status", "phase",
                "action", "attempt", "seconds", "error", "owner")


@contextlib.contextmanager
def bind(*, env_id: int | None = None, env: str | None = None,
         job_id: int | None = None) -> Iterator[None]:
    """Within the block (and the tasks started in it), lines carry these ids; None leaves a
    field as it was."""
    env_id_token = ENV_ID.set(env_id) if env_id is not None else None
    env_token = ENV_NAME.set(env) if env is not None else None
    job_token = JOB_ID.set(job_id) if job_id is not None else None
    try:
        yield
    finally:
        if job_token is not None:
            JOB_ID.reset(job_token)
        if env_token is not None:
            ENV_NAME.reset(env_token)
        if env_id_token is not None:
            ENV_ID.reset(env_id_token)


def set_context(*, env_id: int | None = None, env: str | None = None,
                job_id: int | None = None) -> None:
    """Like `bind`, for the rest of the current task (a task's context dies with it)."""
    if env_id is not None:
        ENV_ID.set(env_id)
    if env is not None:
        ENV_NAME.set(env)
    if job_id is not None:
        JOB_ID.set(job_id)


class ContextFilter(logging.Filter):
    """Copies the environment and job bound where the record was made onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for field, var in _CONTEXT.items():
            if getattr(record, field, None) is None:
                setattr(record, field, var.get())
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field in (*_CONTEXT, *EXTRA_FIELDS):
        value = getattr(record, field, None)
        if value is None:
            continue
        found[field] = scrub(value) if isinstance(value, str) else value
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the context and extra
    fields that are set, then the traceback (scrubbed by `ScrubFilter`) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(self.formatException(record.exc_info))
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message [env=… job=…]` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = {k: v for k, v in _fields(record).items() if k in _CONTEXT}
        if not tags:
            return text
        first, sep, rest = text.partition("\n")
        suffix = " [" + " ".join(f"{k}={v}" for k, v in tags.items()) + "]"
        return first + suffix + sep + rest


def setup(level: str, *, stream: IO[str] | None = None, as_json: bool | None = None) -> None:
    """Log to `stream` (stderr): JSON unless it is a terminal, every line scrubbed and tagged.
    Replaces the root logger's handlers, so calling it twice does not double lines."""
    stream = stream if stream is not None else sys.stderr
    if as_json is None:
        as_json = not _is_terminal(stream)
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(ScrubFilter())
    handler.setFormatter(JsonFormatter() if as_json else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
