"""`ephem audit [--env NAME] [--since 7d] [--json]`: who did what to which environment, from the
audit table, for an operator at a terminal (or `jq`).

Every command that changes an environment, every reap and every job's end writes one row
(`bot.store.repo.audit`); this reads them oldest first. `--env` takes every environment ever
called NAME (a name is reused after a destroy), `--since` a duration back from now. Details are
scrubbed of every secret this process knows before they are printed, as everything Ephem writes
out is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bot.domain import parse_duration, validate_name
from bot.errors import ConfigError
from bot.redaction import scrub_structure
from bot.slack import messages
from bot.store import Store, repo


async def audit(database_url: str, *, env: str | None, since: str | None, as_json: bool,
                out: Callable[[str], None] = print, limit: int = 10_000) -> int:
    if not database_url:
        raise ConfigError("EPHEM_DATABASE_URL is not set: it names Ephem's own database.")
    name = validate_name(env.lower()) if env is not None else None
    after = datetime.now(UTC) - parse_duration(since) if since is not None else None
    store = Store(database_url, pool_size=1, max_overflow=0)
    try:
        async with store.transaction() as s:
            rows = await repo.audit_events(s, env_name=name, since=after, limit=limit)
    finally:
        await store.close()
    if as_json:
        out(json.dumps([_record(event, env_name) for event, env_name in rows], indent=1))
        return 0
    if not rows:
        scope = f" of {name}" if name else ""
        out(f"no audit events{scope}" + (f" in the last {since}" if since else ""))
        return 0
    for event, env_name in rows:
        detail = messages.audit_detail(event.action, event.details)
        out(f"{messages.plain_date(event.at)}  {event.actor:<12} {event.action:<18} "
            f"{env_name or '-':<24} {event.source:<9} {detail}".rstrip())
    return 0


def _record(event: Any, env_name: str | None) -> dict[str, Any]:
    return {"at": event.at.astimezone(UTC).isoformat(), "actor": event.actor,
            "action": event.action, "source": event.source, "env_id": event.env_id,
            "env": env_name, "details": scrub_structure(event.details)}
