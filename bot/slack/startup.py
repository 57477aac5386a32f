"""Is the bot token good? `auth.test` at start, asked again until Slack says yes, and for as
long as the process runs.

Why: a wrong or revoked token (or a Slack the pod cannot reach) otherwise shows up only when the
first card fails to post, long after the rollout looked healthy. `ephem serve` runs
`TokenWatch` in the background and gives each answer to the HTTP server's readiness
(`HttpServer.report`), so `/readyz` answers 503 with "slack: the bot token was refused
(invalid_auth)" or "slack: unreachable" until the token works. The token itself never appears in
an answer or a log line; only Slack's short error code does.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class TokenWatch:
    """Asks `auth.test` at start until Slack says yes, then keeps asking for as long as the
    process runs, and gives each verdict to `report` (the HTTP server's readiness).

    - At start, any problem makes the process not ready at once.
    - Later, a refused token (revoked, rotated, the app uninstalled) makes it not ready at
      once; an unreachable Slack only once it has stayed unreachable for `unreachable_after`
      seconds (a blip must not take every replica out of the Service together).
    - `alarm()` — called by the writer when any Slack call answers a token error or cannot
      reach Slack — asks again now instead of at the next `recheck`.
    Each change is one log line; the token never appears, only Slack's short error code.
    """

    def __init__(self, client: AsyncWebClient, *, report: Callable[[str | None], None],
                 recheck: float = 300.0, unreachable_after: float = 120.0,
                 first_retry: float = 1.0, max_retry: float = 60.0) -> None:
        self._client = client
        self._report = report
        self._recheck = recheck
        self._unreachable_after = unreachable_after
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._wake = asyncio.Event()
        self.problem: str | None = "not asked yet"

    def alarm(self, reason: str = "") -> None:
        """A Slack call failed in a way that may be the token or Slack: ask again now."""
        del reason
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        accepted_once = False
        unreachable_since: float | None = None
        delay = self._first_retry
        while True:
            self._wake.clear()
            found = await token_problem(self._client)
            now = loop.time()
            if found == UNREACHABLE and accepted_once:
                unreachable_since = unreachable_since if unreachable_since is not None else now
                away = now - unreachable_since
                if away >= self._unreachable_after:
                    self._say(f"unreachable for {away:.0f}s")
                # Within the allowance what was said stands (ready, or a refused token).
            else:
                unreachable_since = None if found is None else unreachable_since
                self._say(found)
            if found is None:
                accepted_once = True
                delay = self._first_retry
                wait = self._recheck
            else:
                wait = delay
                delay = min(delay * 2, self._max_retry)
                if found == UNREACHABLE and accepted_once and unreachable_since is not None:
                    # Ask again in time to notice the end of `unreachable_after`.
                    left = unreachable_since + self._unreachable_after - now
                    if left > 0:
                        wait = min(wait, left)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _say(self, problem: str | None) -> None:
        """Report `problem`; log only when its kind changes (not each "unreachable for …")."""
        if _kind(problem) != _kind(self.problem):
            if problem is None:
                log.info("slack: the bot token works; ready as far as Slack is concerned")
            else:
                log.warning("slack: not ready, %s; asking again every %.0fs at most", problem,
                            self._max_retry)
        self.problem = problem
        self._report(problem)


def _kind(problem: str | None) -> str | None:
    return problem.split(" for ", 1)[0] if problem is not None else None
