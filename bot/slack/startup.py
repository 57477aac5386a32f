"""Is the bot token good? `auth.test` at start, asked again until Slack says yes.

Why: a wrong or revoked token (or a Slack the pod cannot reach) otherwise shows up only when the
first card fails to post, long after the rollout looked healthy. `ephem serve` runs
`watch_token` in the background and gives each answer to the HTTP server's readiness
(`HttpServer.report`), so `/readyz` answers 503 with "slack: the bot token was refused
(invalid_auth)" or "slack: unreachable" until the token works. The token itself never appears in
an answer or a log line; only Slack's short error code does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

UNREACHABLE = "unreachable"
# Codes auth.test answers when Slack itself is in trouble, not the token.
_SLACK_TROUBLE = frozenset({"fatal_error", "internal_error", "service_unavailable",
                            "request_timeout", "ratelimited"})
_CODE = re.compile(r"[a-z0-9_]{1,64}")


def refused(code: str) -> str:
    return f"the bot token was refused ({code})"


async def token_problem(client: AsyncWebClient) -> str | None:
    """None when Slack accepts the client's token; otherwise a short phrase saying why not."""
    try:
        await client.auth_test()
    except SlackApiError as exc:
        data = exc.response.data
        code = data.get("error") if isinstance(data, dict) else None
        if (exc.response.status_code == 200 and isinstance(code, str) and _CODE.fullmatch(code)
                and code not in _SLACK_TROUBLE):
            return refused(code)
        return UNREACHABLE
    except (aiohttp.ClientError, TimeoutError, OSError):
        return UNREACHABLE
    except Exception as exc:  # an answer the client cannot read: not a Slack that works
        log.warning("slack: auth.test failed unexpectedly (%s)", type(exc).__name__)
        return UNREACHABLE
    return None


async def watch_token(client: AsyncWebClient, *, report: Callable[[str | None], None],
                      first_retry: float = 1.0, max_retry: float = 60.0) -> None:
    """Ask until the token works, reporting each answer; backs off from `first_retry` to
    `max_retry` seconds. Logs one line when the answer changes, not on every attempt."""
    delay = first_retry
    last: str | None = None
    while True:
        problem = await token_problem(client)
        report(problem)
        if problem is None:
            log.info("slack: the bot token works; ready as far as Slack is concerned")
            return
        if problem != last:
            log.warning("slack: not ready, %s; asking again every %.0fs at most", problem,
                        max_retry)
            last = problem
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_retry)
